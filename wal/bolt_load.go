package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/txcoord/txcoord/ids"
)

// openError classifies an error from bbolt.Open.
func openError(path string, opts BoltOptions, err error) error {
	var pe *fs.PathError
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %s (waited %v)", ErrLocked, path, max(opts.LockTimeout, 0))
	case errors.As(err, &pe):
		return fmt.Errorf("wal: open %s: %w", path, err)
	default:
		return fmt.Errorf("%w: %s: %w", ErrBadFile, path, err)
	}
}

// precheck opens an existing file read-only and checks that it is as long
// as its bbolt metadata says, so that a truncated file is reported rather
// than faulting when its missing pages are touched through the mmap.
func precheck(path string, opts BoltOptions) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("wal: open %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrBadFile, path)
	}
	if fi.Size() == 0 {
		return nil
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: opts.boltTimeout()})
	if err != nil {
		return openError(path, opts, err)
	}
	defer db.Close()
	var need int64
	if err := db.View(func(tx *bbolt.Tx) error { need = tx.Size(); return nil }); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadFile, path, err)
	}
	fi, err = os.Stat(path)
	if err != nil {
		return fmt.Errorf("wal: open %s: %w", path, err)
	}
	if fi.Size() < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes, its metadata needs %d", ErrBadFile, path, fi.Size(), need)
	}
	return nil
}

// load reads and checks the whole file, builds the index, then stores the
// next epoch (creating the buckets of a new file, upgrading a version-1
// file).
func (b *Bolt) load() (err error) {
	defer func() {
		// bbolt panics on some damaged pages.
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: damaged bbolt page: %v", ErrBadFile, b.path, p)
		}
	}()
	var fresh bool
	var epoch, ver uint64
	var owner string
	err = b.db.View(func(tx *bbolt.Tx) error {
		mb := tx.Bucket(bucketMeta)
		if mb == nil {
			var other []string
			_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
				other = append(other, string(name))
				return nil
			})
			if len(other) > 0 {
				return fmt.Errorf("%w: %s has buckets %q but no %q: not a txcoord log", ErrBadFile, b.path, other, BucketMeta)
			}
			fresh = true
			return nil
		}
		var err error
		if ver, err = b.metaUint(mb, keyVersion); err != nil {
			return err
		}
		if ver != fileFormat && ver != fileFormat1 {
			return fmt.Errorf("%w: %s has format version %d; this build reads versions %d and %d", ErrBadFile, b.path, ver, fileFormat1, fileFormat)
		}
		if epoch, err = b.metaUint(mb, keyEpoch); err != nil {
			return err
		}
		owner = string(mb.Get(keyOwner))
		b.logID = string(mb.Get(keyLogID))
		if v := mb.Get(keyCreated); v != nil {
			c, err := b.metaUint(mb, keyCreated)
			if err != nil {
				return err
			}
			b.created = time.Unix(0, int64(c)).UTC()
		}
		if v := mb.Get(keyHorizon); v != nil {
			h, err := b.metaUint(mb, keyHorizon)
			if err != nil {
				return err
			}
			b.horizon = time.Unix(0, int64(h)).UTC()
		}
		if b.opts.Owner != "" && owner != "" && owner != b.opts.Owner {
			return fmt.Errorf("%w: %s belongs to coordinator %q, not %q", ErrWrongOwner, b.path, owner, b.opts.Owner)
		}
		lb := tx.Bucket(bucketLog)
		if lb == nil {
			return fmt.Errorf("%w: %s lacks bucket %q", ErrBadFile, b.path, BucketLog)
		}
		var xb *bbolt.Bucket
		if ver == fileFormat1 {
			if xb = tx.Bucket(bucketTx); xb == nil {
				return fmt.Errorf("%w: %s (format version 1) lacks bucket %q", ErrBadFile, b.path, BucketTx)
			}
		}
		return b.loadRecords(lb, xb)
	})
	if err != nil {
		return err
	}
	if b.opts.ReadOnly {
		if fresh {
			return fmt.Errorf("%w: %s is empty: not a txcoord log", ErrBadFile, b.path)
		}
		b.epoch, b.owner = epoch, owner
		jrecs, err := b.readJournal()
		if err != nil {
			return err
		}
		for _, jd := range jrecs {
			b.byTx[jd.rec.TxID] = &Decision{Record: jd.rec}
			b.jrecs = append(b.jrecs, jd.rec)
		}
		return nil
	}
	var jrecs []fromJournal
	if fresh {
		// A new log file has no journal yet: one left there belongs to a
		// log file that is gone.
		if _, err := os.Stat(JournalPath(b.path)); err == nil {
			return fmt.Errorf("%w: %s is a new log file, but its journal %s is there from an earlier log: move the journal away with the log file it belongs to", ErrBadFile, b.path, JournalPath(b.path))
		}
	} else if jrecs, err = b.readJournal(); err != nil {
		return err
	}
	epoch++
	err = b.db.Update(func(tx *bbolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if len(jrecs) > 0 {
			// The journal's decisions go into the file with the new
			// epoch, and the journal starts again.
			lb, err := tx.CreateBucketIfNotExists(bucketLog)
			if err != nil {
				return err
			}
			for _, jd := range jrecs {
				if err := lb.Put(u64(jd.rec.LSN), jd.val); err != nil {
					return err
				}
			}
			if err := lb.SetSequence(max(lb.Sequence(), jrecs[len(jrecs)-1].rec.LSN)); err != nil {
				return err
			}
		}
		if fresh || ver == fileFormat1 {
			if err := mb.Put(keyVersion, u64(fileFormat)); err != nil {
				return err
			}
		}
		if ver == fileFormat1 {
			if err := tx.DeleteBucket(bucketTx); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucketIfNotExists(bucketLog); err != nil {
			return err
		}
		if owner == "" && b.opts.Owner != "" {
			if err := mb.Put(keyOwner, []byte(b.opts.Owner)); err != nil {
				return err
			}
			owner = b.opts.Owner
		}
		if fresh {
			// The log knows itself: an id and when it began. A log
			// created before these were kept has neither.
			id, err := ids.NewTxID()
			if err != nil {
				return err
			}
			b.logID, b.created, b.fresh = id.String(), time.Now().UTC(), true
			if err := mb.Put(keyLogID, []byte(b.logID)); err != nil {
				return err
			}
			if err := mb.Put(keyCreated, u64(uint64(b.created.UnixNano()))); err != nil {
				return err
			}
		}
		return mb.Put(keyEpoch, u64(epoch))
	})
	if err != nil {
		return fmt.Errorf("wal: open %s: store epoch: %w", b.path, err)
	}
	for _, jd := range jrecs {
		b.byTx[jd.rec.TxID] = &Decision{Record: jd.rec}
	}
	b.epoch = epoch
	b.owner = owner
	if fresh {
		if _, err := b.readJournal(); err != nil {
			return err
		}
	}
	return nil
}

// fromJournal is a decision read back from the journal, and its encoding.
type fromJournal struct {
	rec Record
	val []byte
}

// readJournal opens the journal (making it, unless the log is read-only or
// NoJournal) and returns its decisions that the file does not hold, each
// checked as loadRecords checks the file's. It keeps the journal open for
// writing unless the log is read-only or NoJournal. b.next is set past
// them.
func (b *Bolt) readJournal() ([]fromJournal, error) {
	path := JournalPath(b.path)
	write := !b.opts.ReadOnly && !b.opts.NoJournal
	j, found, err := openJournal(path, b.logID, write, b.opts.ReadOnly, b.next-1)
	if err != nil || j == nil {
		return nil, err
	}
	corrupt := func(lsn uint64, format string, args ...any) error {
		j.close()
		return &CorruptError{Path: path, Bucket: "journal", Key: lsn, Reason: fmt.Sprintf(format, args...)}
	}
	out := make([]fromJournal, 0, len(found))
	seen := map[ids.TxID]uint64{}
	for _, jr := range found {
		rec, err := DecodeRecord(jr.val)
		if err != nil {
			return nil, corrupt(jr.lsn, "block at byte %d: %s", jr.off, strings.TrimPrefix(err.Error(), ErrCorrupt.Error()+": "))
		}
		rec.LSN = jr.lsn
		switch {
		case rec.Kind != KindCommit && rec.Kind != KindAbort || rec.Holder != "":
			return nil, corrupt(jr.lsn, "a %v record where only decisions are written", rec.Kind)
		case seen[rec.TxID] != 0:
			return nil, corrupt(jr.lsn, "second decision %v for %s (first at LSN %d)", rec.Kind, rec.TxID, seen[rec.TxID])
		}
		if lsn, ok := b.decisionLSN(rec.TxID); ok {
			return nil, corrupt(jr.lsn, "decision %v for %s, which the file decided at key %d", rec.Kind, rec.TxID, lsn)
		}
		seen[rec.TxID] = rec.LSN
		out = append(out, fromJournal{rec: rec, val: jr.val})
		b.next = rec.LSN + 1
	}
	if write {
		b.j = j
	} else {
		j.close()
	}
	return out, nil
}

func (b *Bolt) metaUint(mb *bbolt.Bucket, key []byte) (uint64, error) {
	v := mb.Get(key)
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: %s: meta key %q is %d bytes, want 8", ErrBadFile, b.path, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func (b *Bolt) corrupt(bucket string, key uint64, format string, args ...any) *CorruptError {
	return &CorruptError{Path: b.path, Bucket: bucket, Key: key, Reason: fmt.Sprintf(format, args...)}
}

// decodeAt decodes the value v stored under key k of the log bucket.
func (b *Bolt) decodeAt(k, v []byte) (Record, error) {
	if len(k) != 8 {
		return Record{}, b.corrupt(BucketLog, 0, "key %x is %d bytes, want 8", k, len(k))
	}
	lsn := binary.BigEndian.Uint64(k)
	if lsn == 0 {
		return Record{}, b.corrupt(BucketLog, 0, "key 0 is not a log sequence number")
	}
	if v == nil {
		return Record{}, b.corrupt(BucketLog, lsn, "nested bucket where a record belongs")
	}
	rec, err := DecodeRecord(v)
	if err != nil {
		return Record{}, b.corrupt(BucketLog, lsn, "%s", strings.TrimPrefix(err.Error(), ErrCorrupt.Error()+": "))
	}
	rec.LSN = lsn
	return rec, nil
}

// loadRecords reads every record's header (its checksum checked), checks
// the state transitions and, in a version-1 file (xb not nil), the tx
// index, and fills b.onDisk with the ended transactions, b.byTx with the
// others (read whole), and b.next.
//
// Only the pending decisions are kept whole in memory: an ended one is a
// reference to its records, read from the file when asked for, so that
// neither memory nor the time to open grows much with the transactions
// that ended within the keep period.
//
// The next LSN is one past the largest key, or past the log bucket's
// sequence, which compaction raises to every LSN it deletes, so that an LSN
// is never reused.
func (b *Bolt) loadRecords(lb, xb *bbolt.Bucket) error {
	var last uint64
	pending := map[ids.TxID]uint64{} // decision LSN of each transaction not ended
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 {
			return b.corrupt(BucketLog, 0, "key %x is %d bytes, want 8", k, len(k))
		}
		lsn := binary.BigEndian.Uint64(k)
		if lsn == 0 {
			return b.corrupt(BucketLog, 0, "key 0 is not a log sequence number")
		}
		if v == nil {
			return b.corrupt(BucketLog, lsn, "nested bucket where a record belongs")
		}
		h, err := decodeHeader(v)
		if err != nil {
			return b.corrupt(BucketLog, lsn, "%s", strings.TrimPrefix(err.Error(), ErrCorrupt.Error()+": "))
		}
		last = lsn
		switch h.kind {
		case KindCommit, KindAbort:
			if first, ok := pending[h.txid]; ok {
				return b.corrupt(BucketLog, lsn, "second decision %v for %s (first at key %d)", h.kind, h.txid, first)
			}
			if r, ok := b.onDisk[h.txid]; ok {
				return b.corrupt(BucketLog, lsn, "second decision %v for %s (first: %v at key %d)", h.kind, h.txid, r.kind, r.lsn)
			}
			if xb != nil {
				iv := xb.Get(h.txid[:])
				if len(iv) != 8 || binary.BigEndian.Uint64(iv) != lsn {
					return b.corrupt(BucketTx, lsn, "decision for %s at key %d has no matching entry in bucket %q (entry %x)", h.txid, lsn, BucketTx, iv)
				}
			}
			if h.holder {
				// A holder's decision is noted once it has ended.
				b.onDisk[h.txid] = endedRef{lsn: lsn, endLSN: lsn, endTime: h.time, kind: h.kind}
				continue
			}
			pending[h.txid] = lsn
		case KindEnd:
			first, ok := pending[h.txid]
			if !ok {
				if r, done := b.onDisk[h.txid]; done {
					return b.corrupt(BucketLog, lsn, "second END for %s (first at key %d)", h.txid, r.endLSN)
				}
				return b.corrupt(BucketLog, lsn, "END for %s without its decision", h.txid)
			}
			delete(pending, h.txid)
			kind, err := b.kindAt(lb, first)
			if err != nil {
				return err
			}
			b.onDisk[h.txid] = endedRef{lsn: first, endLSN: lsn, endTime: h.time, kind: kind}
		}
	}
	// The pending decisions, whole.
	for id, lsn := range pending {
		rec, err := b.decodeAt(u64(lsn), lb.Get(u64(lsn)))
		if err != nil {
			return err
		}
		if rec.TxID != id {
			return b.corrupt(BucketLog, lsn, "holds %s, its header said %s", rec.TxID, id)
		}
		b.byTx[id] = &Decision{Record: rec}
	}
	if xb != nil {
		if err := b.checkIndex(xb); err != nil {
			return err
		}
	}
	if seq := lb.Sequence(); seq > last {
		last = seq
	}
	b.next = last + 1
	return nil
}

// kindAt returns the kind of the decision at lsn, read earlier by the
// same load.
func (b *Bolt) kindAt(lb *bbolt.Bucket, lsn uint64) (Kind, error) {
	h, err := decodeHeader(lb.Get(u64(lsn)))
	if err != nil {
		return 0, b.corrupt(BucketLog, lsn, "%s", strings.TrimPrefix(err.Error(), ErrCorrupt.Error()+": "))
	}
	return h.kind, nil
}

// decisionLSN returns the LSN of txid's decision, if the log holds one.
// b.mu is held, or the log is being opened.
func (b *Bolt) decisionLSN(txid ids.TxID) (uint64, bool) {
	if d, ok := b.byTx[txid]; ok {
		return d.LSN, true
	}
	if r, ok := b.onDisk[txid]; ok {
		return r.lsn, true
	}
	return 0, false
}

// checkIndex checks that the tx index of a version-1 file names exactly
// the decisions of its log.
func (b *Bolt) checkIndex(xb *bbolt.Bucket) error {
	n := 0
	c := xb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 16 || len(v) != 8 {
			return b.corrupt(BucketTx, 0, "entry %x -> %x: want a 16-byte id and an 8-byte LSN", k, v)
		}
		lsn := binary.BigEndian.Uint64(v)
		if have, ok := b.decisionLSN(ids.TxID(k)); !ok || have != lsn {
			return b.corrupt(BucketTx, lsn, "entry for %s points to key %d, which holds no decision for it", ids.TxID(k), lsn)
		}
		n++
	}
	if want := len(b.byTx) + len(b.onDisk); n != want {
		return b.corrupt(BucketTx, 0, "%d entries for %d decisions", n, want)
	}
	return nil
}
