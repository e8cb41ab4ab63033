package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/txcoord/txcoord/ids"
)

// FormatVersion is the record encoding written by EncodeRecord.
//
// Layout of version 1, in order:
//
//	version   1 byte (1)
//	kind      1 byte
//	txid      16 bytes
//	flags     1 byte: bit 0 heuristic, bit 1 time present
//	time      varint, Unix nanoseconds (only if bit 1 is set)
//	epoch     uvarint
//	branches  uvarint count, then per branch: resource, gid (strings)
//	who, why  strings
//	crc       4 bytes big-endian CRC-32C (Castagnoli) of everything before
//
// A string is a uvarint length followed by that many bytes. The LSN is not
// part of the encoding: it is the record's key.
//
// Version 2 is version 1 with flag bit 2 (holder present) and, after why,
// the holder's name as a string. A record without a holder is still written
// as version 1.
const FormatVersion = 2

// formatVersion1 is the layout of records without a holder.
const formatVersion1 = 1

const (
	flagHeuristic = 1 << 0
	flagTime      = 1 << 1
	flagHolder    = 1 << 2
	flagsKnown1   = flagHeuristic | flagTime
	flagsKnown    = flagsKnown1 | flagHolder

	crcLen = 4
	// minLen is version, kind, txid, flags, epoch (one byte) and the
	// branch count (one byte), who and why (one byte each) and the crc.
	minLen = 1 + 1 + 16 + 1 + 1 + 1 + 1 + 1 + crcLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Time values outside this range do not fit in int64 Unix nanoseconds.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// EncodeRecord returns the encoding of r (everything but r.LSN): version 1,
// or version 2 for a record naming a holder.
// An invalid record fails with an error wrapping ErrBadRecord.
func EncodeRecord(r Record) ([]byte, error) {
	if err := checkRecord(&r); err != nil {
		return nil, err
	}
	if !r.Time.IsZero() && (r.Time.Before(minTime) || r.Time.After(maxTime)) {
		return nil, fmt.Errorf("%w: time %v out of range", ErrBadRecord, r.Time)
	}
	n := minLen + 10 + 10 + len(r.Who) + len(r.Why) + binary.MaxVarintLen64 + len(r.Holder)
	for _, b := range r.Branches {
		n += 2*binary.MaxVarintLen64 + len(b.Resource) + len(b.GID.String())
	}
	buf := make([]byte, 0, n)
	version := byte(formatVersion1)
	if r.Holder != "" {
		version = FormatVersion
	}
	buf = append(buf, version, byte(r.Kind))
	buf = append(buf, r.TxID[:]...)
	var flags byte
	if r.Heuristic {
		flags |= flagHeuristic
	}
	if r.Holder != "" {
		flags |= flagHolder
	}
	if !r.Time.IsZero() {
		flags |= flagTime
	}
	buf = append(buf, flags)
	if !r.Time.IsZero() {
		buf = binary.AppendVarint(buf, r.Time.UnixNano())
	}
	buf = binary.AppendUvarint(buf, r.Epoch)
	buf = binary.AppendUvarint(buf, uint64(len(r.Branches)))
	for _, b := range r.Branches {
		buf = appendString(buf, b.Resource)
		buf = appendString(buf, b.GID.String())
	}
	buf = appendString(buf, r.Who)
	buf = appendString(buf, r.Why)
	if r.Holder != "" {
		buf = appendString(buf, r.Holder)
	}
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
	return buf, nil
}

// checkRecord checks what both the encoder and the decoder require of a
// record. Errors wrap ErrBadRecord.
func checkRecord(r *Record) error {
	switch r.Kind {
	case KindCommit, KindAbort:
		return r.Validate()
	case KindEnd:
		if r.TxID.IsZero() {
			return fmt.Errorf("%w: zero transaction id", ErrBadRecord)
		}
		if len(r.Branches) != 0 || r.Holder != "" {
			return fmt.Errorf("%w: END for %s names branches or a holder", ErrBadRecord, r.TxID)
		}
		if len(r.Who) > 1024 || len(r.Why) > 4096 {
			return fmt.Errorf("%w: who/why too long", ErrBadRecord)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown kind %v", ErrBadRecord, r.Kind)
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// DecodeRecord decodes an encoding made by EncodeRecord. The result has
// LSN 0. Any damage (checksum, unknown version, a length beyond the input,
// an invalid gid or record) fails with an error wrapping ErrCorrupt.
func DecodeRecord(b []byte) (Record, error) {
	body, err := checkFrame(b)
	if err != nil {
		return Record{}, err
	}
	d := decoder{b: body[1:]}
	var r Record
	var flags byte
	var nanos int64
	r.Kind, r.TxID, flags, nanos = d.header(b[0])
	r.Heuristic = flags&flagHeuristic != 0
	if flags&flagTime != 0 {
		r.Time = time.Unix(0, nanos).UTC()
	}
	r.Epoch = d.uvarint()
	// Each branch takes at least two bytes (two empty strings).
	nb := d.count(2)
	if nb > 0 {
		r.Branches = make([]Branch, 0, nb)
	}
	for i := 0; i < nb && d.err == nil; i++ {
		res := d.string()
		raw := d.string()
		if d.err != nil {
			break
		}
		gid, err := ids.ParseGID(raw)
		if err != nil {
			d.fail("branch %d: %v", i, err)
			break
		}
		r.Branches = append(r.Branches, Branch{Resource: res, GID: gid})
	}
	r.Who = d.string()
	r.Why = d.string()
	if flags&flagHolder != 0 {
		r.Holder = d.string()
		if d.err == nil && r.Holder == "" {
			d.fail("holder flag set with an empty holder")
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return Record{}, d.err
	}
	if err := checkRecord(&r); err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return r, nil
}

// checkFrame checks an encoded record's version, length and checksum, and
// returns it without the checksum.
func checkFrame(b []byte) ([]byte, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	if b[0] != formatVersion1 && b[0] != FormatVersion {
		return nil, fmt.Errorf("%w: unknown record format version %d (this build reads %d and %d)", ErrCorrupt, b[0], formatVersion1, FormatVersion)
	}
	if len(b) < minLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the smallest record (%d)", ErrCorrupt, len(b), minLen)
	}
	body, sum := b[:len(b)-crcLen], binary.BigEndian.Uint32(b[len(b)-crcLen:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("%w: checksum %08x, stored %08x", ErrCorrupt, got, sum)
	}
	return body, nil
}

// recordHeader is what opening a log needs of a record: the fields before
// its epoch, read after the whole record's checksum and version are
// checked. Its branches are decoded only when the record is read whole.
type recordHeader struct {
	kind   Kind
	txid   ids.TxID
	time   int64 // Unix nanoseconds, if hasTime
	holder bool
	hasT   bool
}

// decodeHeader reads a record's header, with the same checks of version,
// length, checksum, kind and flags as DecodeRecord.
func decodeHeader(b []byte) (recordHeader, error) {
	var h recordHeader
	body, err := checkFrame(b)
	if err != nil {
		return h, err
	}
	d := decoder{b: body[1:]}
	var flags byte
	h.kind, h.txid, flags, h.time = d.header(b[0])
	h.holder, h.hasT = flags&flagHolder != 0, flags&flagTime != 0
	if d.err != nil {
		return h, d.err
	}
	switch h.kind {
	case KindCommit, KindAbort, KindEnd:
	default:
		return h, fmt.Errorf("%w: unknown kind %v", ErrCorrupt, h.kind)
	}
	if h.txid.IsZero() {
		return h, fmt.Errorf("%w: zero transaction id", ErrCorrupt)
	}
	if h.kind == KindEnd && h.holder {
		return h, fmt.Errorf("%w: END for %s names a holder", ErrCorrupt, h.txid)
	}
	return h, nil
}

// decoder reads from b, bounding every length by what is left. The first
// failure sticks; later reads return zero values.
type decoder struct {
	b   []byte
	err error
}

// header reads the fields every record starts with: kind, txid, flags
// (checked against what version knows) and, if flagged, the time.
func (d *decoder) header(version byte) (kind Kind, txid ids.TxID, flags byte, nanos int64) {
	kind = Kind(d.byte())
	copy(txid[:], d.bytes(16))
	flags = d.byte()
	known := byte(flagsKnown)
	if version == formatVersion1 {
		known = flagsKnown1
	}
	if d.err == nil && flags&^known != 0 {
		d.fail("unknown flags %#x for version %d", flags, version)
	}
	if flags&flagTime != 0 {
		nanos = d.varint()
	}
	return kind, txid, flags, nanos
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("field of %d bytes, only %d left", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	v := d.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads an element count whose elements take at least min bytes each
// and rejects one that the remaining input cannot hold.
func (d *decoder) count(min int) int {
	v := d.uvarint()
	if d.err != nil {
		return 0
	}
	if v > uint64(len(d.b)/min) {
		d.fail("count %d exceeds the %d bytes left", v, len(d.b))
		return 0
	}
	return int(v)
}

func (d *decoder) string() string {
	n := d.count(1)
	return string(d.bytes(n))
}
