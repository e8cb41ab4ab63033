package kv

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
	"time"
)

// A prepared entry is the durable form of a prepared branch's write set,
// stored in the "prepared" bucket under the branch's gid:
//
//	crc32c    4 bytes, big-endian, Castagnoli CRC of every byte after it
//	format    1 byte, entryFormat
//	since     8 bytes, prepare time in Unix nanoseconds, big-endian
//	count     uvarint, number of ops
//	ops       count times: kind (1 byte), key length (uvarint), key,
//	          version seen (8 bytes, big-endian), and for opPut the value
//	          length (uvarint) and value
//
// Ops are sorted by key and each key appears once.

const entryFormat = 1

// opKind says what a branch did to a key.
type opKind byte

const (
	// opRead: the branch read the key and did not change it.
	opRead opKind = 1 + iota
	// opPut: the branch sets the key to a value.
	opPut
	// opDelete: the branch deletes the key.
	opDelete
)

func (k opKind) valid() bool { return k >= opRead && k <= opDelete }

func (k opKind) writes() bool { return k == opPut || k == opDelete }

// op is one key of a write set.
type op struct {
	kind    opKind
	key     string
	version uint64 // version the branch saw; 0 means the key was absent
	value   []byte // for opPut
}

// entry is a decoded prepared entry.
type entry struct {
	since time.Time
	ops   []op
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encode returns the checksummed bytes of e. Ops are sorted by key.
func (e *entry) encode() []byte {
	sort.Slice(e.ops, func(i, j int) bool { return e.ops[i].key < e.ops[j].key })
	n := 4 + 1 + 8 + binary.MaxVarintLen64
	for _, o := range e.ops {
		n += 1 + binary.MaxVarintLen64 + len(o.key) + 8 + binary.MaxVarintLen64 + len(o.value)
	}
	b := make([]byte, 4, n)
	b = append(b, entryFormat)
	b = binary.BigEndian.AppendUint64(b, uint64(e.since.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(e.ops)))
	for _, o := range e.ops {
		b = append(b, byte(o.kind))
		b = binary.AppendUvarint(b, uint64(len(o.key)))
		b = append(b, o.key...)
		b = binary.BigEndian.AppendUint64(b, o.version)
		if o.kind == opPut {
			b = binary.AppendUvarint(b, uint64(len(o.value)))
			b = append(b, o.value...)
		}
	}
	binary.BigEndian.PutUint32(b[0:4], crc32.Checksum(b[4:], castagnoli))
	return b
}

// decodeEntry parses bytes written by encode. It copies what it keeps, so b
// may be memory owned by a bbolt transaction. Any damage is an error
// wrapping ErrCorrupt.
func decodeEntry(b []byte) (entry, error) {
	if len(b) < 4+1+8 {
		return entry{}, fmt.Errorf("%w: entry is %d bytes, shorter than its header", ErrCorrupt, len(b))
	}
	if want, got := binary.BigEndian.Uint32(b[0:4]), crc32.Checksum(b[4:], castagnoli); want != got {
		return entry{}, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorrupt, want, got)
	}
	r := reader{b: b[4:]}
	if f := r.u8(); f != entryFormat {
		return entry{}, fmt.Errorf("%w: unknown entry format %d", ErrCorrupt, f)
	}
	e := entry{since: time.Unix(0, int64(r.u64()))}
	count := r.uvarint()
	if r.err == nil && count > uint64(len(r.b)) {
		r.fail("op count %d exceeds entry size", count)
	}
	if r.err != nil {
		return entry{}, r.err
	}
	seen := make(map[string]bool, count)
	for i := uint64(0); i < count && r.err == nil; i++ {
		o := op{kind: opKind(r.u8())}
		if r.err == nil && !o.kind.valid() {
			r.fail("op %d has unknown kind %d", i, o.kind)
		}
		o.key = string(r.bytes(r.uvarint()))
		o.version = r.u64()
		if o.kind == opPut {
			o.value = append([]byte{}, r.bytes(r.uvarint())...)
		}
		if r.err != nil {
			break
		}
		if o.key == "" {
			r.fail("op %d has an empty key", i)
		} else if seen[o.key] {
			r.fail("key %q appears twice", o.key)
		}
		seen[o.key] = true
		e.ops = append(e.ops, o)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return entry{}, r.err
	}
	return e, nil
}

// reader consumes b and remembers the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (r *reader) u8() byte {
	if r.err != nil || len(r.b) < 1 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) u64() uint64 {
	if r.err != nil || len(r.b) < 8 {
		r.fail("truncated")
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad length")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// A committed value in the "data" bucket is the key's version (8 bytes,
// big-endian) followed by the value's bytes. Versions start at 1 and come
// from the data bucket's sequence, one per applied write set.

func encodeValue(version uint64, value []byte) []byte {
	b := make([]byte, 8, 8+len(value))
	binary.BigEndian.PutUint64(b, version)
	return append(b, value...)
}

// decodeValue splits a stored value. The returned slice aliases b.
func decodeValue(key string, b []byte) (uint64, []byte, error) {
	if len(b) < 8 {
		return 0, nil, fmt.Errorf("%w: value of key %q is %d bytes, shorter than its version", ErrCorrupt, key, len(b))
	}
	return binary.BigEndian.Uint64(b), b[8:], nil
}
