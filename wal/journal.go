package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// The journal is where a decision becomes durable: one write and one
// fdatasync of a file that is already allocated, so that the sync flushes
// data only. The bbolt file (two fdatasyncs per commit) takes the
// journal's decisions later, in bulk, together with the END records (see
// Bolt); the journal then starts again at its beginning.
//
// Layout: a 64-byte header (journalMagic, then the length and bytes of
// the log's id: a journal belongs to one bbolt file), then blocks. A block is one
// write: a 16-byte header (blockMagic, body length, record count, CRC-32C
// of those three fields and the body) and a body of records, each an
// 8-byte LSN, a 4-byte length and an encoded record (EncodeRecord). The
// rest of the file is zeros, or blocks older than the bbolt file.
const (
	journalMagic     = "txcoord-journal1"
	journalHeader    = 64
	blockMagic       = 0x74784a42 // "txJB"
	blockHeader      = 16
	journalSize      = 1 << 20 // bytes allocated when the journal is made
	journalExtension = ".journal"
)

// zeroHeader is the room a block's header takes before it is filled in.
var zeroHeader [blockHeader]byte

// errJournalFull: a block does not fit in what is left of the journal; the
// caller writes to the bbolt file instead.
var errJournalFull = errors.New("wal: journal full")

// JournalPath is the path of the journal that goes with the log file at
// path. The two files are one log: moving or copying one without the
// other can lose decisions.
func JournalPath(path string) string { return path + journalExtension }

// journal is the open journal file. Only the leader of the write path uses
// it.
type journal struct {
	path string
	f    *os.File
	size int64
	off  int64  // where the next block goes
	buf  []byte // reused block buffer
	last uint64 // LSN of the last record written since reset or open
}

// jrec is a decision read back from the journal.
type jrec struct {
	lsn uint64
	val []byte
	off int64 // where its block starts
}

// createJournal makes an empty journal at path for the log logID,
// allocated with zeros, and syncs it and its directory.
func createJournal(path, logID string) error {
	if len(logID) > journalHeader-len(journalMagic)-1 {
		return fmt.Errorf("log id %q too long for the journal's header", logID)
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, journalSize)
	copy(buf, journalMagic)
	buf[len(journalMagic)] = byte(len(logID))
	copy(buf[len(journalMagic)+1:], logID)
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// openJournal opens the journal at path of the log logID (making it if it
// is missing and create is set) and reads the decisions in it newer than
// after (the largest LSN the bbolt file has seen). A missing journal with
// create unset reads as empty (nil journal, no records); a journal of
// another log is ErrBadFile.
//
// The records are the blocks from the start, in order, while each is whole
// and carries LSNs above after and above the block before it. A damaged
// block ends them if no whole block with newer LSNs follows it anywhere:
// that is the write a crash cut short, whose decisions were never
// acknowledged. One that is followed by such a block is damage to
// acknowledged decisions: a *CorruptError.
func openJournal(path, logID string, create, readOnly bool, after uint64) (*journal, []jrec, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := createJournal(path, logID); err != nil {
			return nil, nil, fmt.Errorf("wal: create journal %s: %w", path, err)
		}
		f, err = os.OpenFile(path, flag, 0)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("wal: open journal %s: %w", path, err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("wal: read journal %s: %w", path, err)
	}
	if len(data) < journalHeader || string(data[:len(journalMagic)]) != journalMagic {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s does not start as a txcoord journal", ErrBadFile, path)
	}
	n := int(data[len(journalMagic)])
	if owner := string(data[len(journalMagic)+1 : min(len(journalMagic)+1+n, journalHeader)]); owner != logID {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %s is the journal of log %q, and its log file is log %q: the two files were not kept together", ErrBadFile, path, owner, logID)
	}
	recs, err := scanJournal(path, data, after)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return &journal{path: path, f: f, size: int64(len(data)), off: int64(journalHeader)}, recs, nil
}

// scanJournal reads the live blocks of data (see openJournal).
func scanJournal(path string, data []byte, after uint64) ([]jrec, error) {
	var out []jrec
	prev := after
	off := journalHeader
	for {
		recs, next, ok := parseBlock(data, off, prev)
		if !ok {
			break
		}
		out = append(out, recs...)
		prev = recs[len(recs)-1].lsn
		off = next
	}
	// Whatever follows is zeros, older blocks, or a write cut short. A
	// whole block with newer decisions beyond it means the blocks before
	// it were damaged after they were written.
	magic := binary.BigEndian.AppendUint32(nil, blockMagic)
	for at := off + 1; at+blockHeader <= len(data); {
		i := bytes.Index(data[at:], magic)
		if i < 0 {
			break
		}
		at += i
		if recs, _, ok := parseBlock(data, at, prev); ok {
			return nil, &CorruptError{Path: path, Bucket: "journal", Key: recs[0].lsn,
				Reason: fmt.Sprintf("the block at byte %d is damaged, and the block at byte %d with newer decisions follows it", off, at)}
		}
		at++
	}
	return out, nil
}

// parseBlock reads the block at off if it is whole and its LSNs are above
// after and rising; it returns its records and where the next block
// starts.
func parseBlock(data []byte, off int, after uint64) ([]jrec, int, bool) {
	if off+blockHeader > len(data) {
		return nil, 0, false
	}
	h := data[off : off+blockHeader]
	if binary.BigEndian.Uint32(h[0:]) != blockMagic {
		return nil, 0, false
	}
	n := int(binary.BigEndian.Uint32(h[4:]))
	count := int(binary.BigEndian.Uint32(h[8:]))
	if n < 0 || n > len(data)-off-blockHeader || count == 0 {
		return nil, 0, false
	}
	body := data[off+blockHeader : off+blockHeader+n]
	if blockCRC(h[:12], body) != binary.BigEndian.Uint32(h[12:]) {
		return nil, 0, false
	}
	recs := make([]jrec, 0, count)
	for i := 0; i < count; i++ {
		if len(body) < 12 {
			return nil, 0, false
		}
		lsn := binary.BigEndian.Uint64(body)
		m := int(binary.BigEndian.Uint32(body[8:]))
		if lsn <= after || m > len(body)-12 {
			return nil, 0, false
		}
		recs = append(recs, jrec{lsn: lsn, val: append([]byte(nil), body[12:12+m]...), off: int64(off)})
		after = lsn
		body = body[12+m:]
	}
	if len(body) != 0 {
		return nil, 0, false
	}
	return recs, off + blockHeader + n, true
}

func blockCRC(head, body []byte) uint32 {
	return crc32.Update(crc32.Checksum(head, castagnoli), castagnoli, body)
}

// write appends one block holding recs and syncs it. It fails with
// errJournalFull, having written nothing, when the block does not fit.
func (j *journal) write(recs []*request) error {
	buf := append(j.buf[:0], zeroHeader[:]...)
	for _, r := range recs {
		buf = binary.BigEndian.AppendUint64(buf, r.rec.LSN)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(r.val)))
		buf = append(buf, r.val...)
	}
	j.buf = buf
	if int64(len(buf)) > j.size-j.off {
		return errJournalFull
	}
	binary.BigEndian.PutUint32(buf[0:], blockMagic)
	binary.BigEndian.PutUint32(buf[4:], uint32(len(buf)-blockHeader))
	binary.BigEndian.PutUint32(buf[8:], uint32(len(recs)))
	binary.BigEndian.PutUint32(buf[12:], blockCRC(buf[:12], buf[blockHeader:]))
	if _, err := j.f.WriteAt(buf, j.off); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	if err := fdatasync(j.f); err != nil {
		return fmt.Errorf("journal %s: sync: %w", j.path, err)
	}
	j.off += int64(len(buf))
	j.last = recs[len(recs)-1].rec.LSN
	return nil
}

// reset starts the journal again at its beginning: everything in it is in
// the bbolt file now, whose LSNs make the old blocks stale.
func (j *journal) reset() { j.off = int64(journalHeader) }

func (j *journal) close() error { return j.f.Close() }
