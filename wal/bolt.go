package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
)

var _ Log = (*Bolt)(nil)

// Defaults for BoltOptions.
const (
	DefaultLockTimeout   = time.Second
	DefaultEndFlushDelay = 50 * time.Millisecond
)

// File layout versions, stored in the meta bucket. Version 1 kept an
// on-disk index of decisions (bucket BucketTx) beside the log; version 2
// has only the log, from which the in-memory index is rebuilt at open, so
// that a commit writes one bucket. OpenBolt checks a version-1 file's
// index against its log and upgrades the file to version 2.
const (
	fileFormat1 = 1
	fileFormat  = 2
)

// Bucket names and meta keys of the log file.
const (
	BucketMeta = "meta" // format version and epoch
	BucketLog  = "log"  // 8-byte big-endian LSN -> encoded record
	// BucketTx is the index of version-1 files: 16-byte TxID -> 8-byte LSN
	// of its decision. OpenBolt checks it and deletes it.
	BucketTx = "tx"
)

var (
	bucketMeta = []byte(BucketMeta)
	bucketLog  = []byte(BucketLog)
	bucketTx   = []byte(BucketTx)
	keyVersion = []byte("version")
	keyEpoch   = []byte("epoch")
	keyOwner   = []byte("owner")
)

// recordsChunk is how many records Records decodes per bbolt read
// transaction; fn is called between transactions, never inside one.
const recordsChunk = 256

// BoltOptions configures OpenBolt. The zero value gives the defaults.
type BoltOptions struct {
	// LockTimeout is how long OpenBolt waits for the file lock when another
	// process, or another open Bolt in this process, holds the file.
	// Zero means DefaultLockTimeout; a negative value tries once.
	LockTimeout time.Duration
	// NoGroupCommit writes every decision in its own bbolt commit (one
	// fsync each) instead of sharing a commit between concurrent appends.
	// It exists as a baseline for benchmarks.
	NoGroupCommit bool
	// EndFlushDelay is how long END records may wait in memory when no
	// decision is being written. Zero means DefaultEndFlushDelay.
	EndFlushDelay time.Duration
	// Owner names the coordinator the log belongs to (its gid prefix and
	// id, e.g. "txc.orders-1"). The first open with an owner stores it;
	// a later open naming another owner fails with ErrWrongOwner, since the
	// log's decisions are only meaningful for the gids of that coordinator.
	// Empty skips the check.
	Owner string
	// ReadOnly opens an existing log to read it with the server stopped
	// (an inspection tool): it shares the lock with other readers, writes
	// nothing (not even a new epoch), and refuses Append, End and Compact
	// with ErrReadOnly.
	ReadOnly bool
	// OnSync, if set, is called after each bbolt commit that wrote records,
	// with the number of decision and END records it made durable and how
	// long the write and its fsyncs took (for metrics). It must not block.
	OnSync func(decisions, ends int, d time.Duration)
}

func (o BoltOptions) withDefaults() BoltOptions {
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.EndFlushDelay <= 0 {
		o.EndFlushDelay = DefaultEndFlushDelay
	}
	return o
}

// boltTimeout maps LockTimeout to bbolt's Timeout, where zero waits forever.
func (o BoltOptions) boltTimeout() time.Duration {
	if o.LockTimeout < 0 {
		return time.Nanosecond
	}
	return o.LockTimeout
}

// Bolt is the durable Log, kept in a bbolt file.
//
// Writes are led, not handed off: Append, Flush and Compact queue their
// request, and if no commit is in progress the calling goroutine becomes
// the leader and writes everything queued in one bbolt commit (one fsync)
// itself. Requests queued while a commit runs wait; when it returns, the
// leader answers the requests it took and passes leadership to the first
// request still queued, whose goroutine then writes all that is queued by
// then. Concurrent decisions thus share a sync without any timer, and a
// lone writer pays no goroutine handoff. END records ride on the next
// commit; when none comes, a background goroutine writes them after
// EndFlushDelay.
//
// An in-memory index of decisions, rebuilt at open from the records
// themselves, answers Lookup, Pending and Stats without reading the file.
type Bolt struct {
	path  string
	opts  BoltOptions
	db    *bbolt.DB
	epoch uint64
	owner string

	kick chan struct{} // wakes the END flusher; capacity 1
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the END flusher has returned

	closeOnce sync.Once
	closeErr  error
	dbMu      sync.RWMutex // held for reading around each View; Close takes it to close db

	mu      sync.Mutex
	idle    sync.Cond // on mu; broadcast when writing becomes false
	closed  bool
	failed  error // non-nil once a write failed; wraps ErrFailed and the cause
	writing bool  // a leader owns the write path; only it writes to db
	queue   []*request
	ends    []pendingEnd
	// endsSince is when the oldest END record in ends was queued.
	endsSince time.Time
	// endsWatched is set while the END flusher will look at ends again
	// without being woken.
	endsWatched bool
	next        uint64 // next LSN
	byTx        map[ids.TxID]*Decision
	stats       Stats
	// writeHook, if set, runs inside every write transaction (commits and
	// compaction); an error fails that write as a disk error would.
	writeHook func() error
}

type reqKind uint8

const (
	reqAppend reqKind = 1 + iota
	reqFlush
	reqCompact
)

type reqState uint8

const (
	stateQueued    reqState = iota // waiting in Bolt.queue
	stateLeading                   // still queued; its goroutine is told to lead
	stateTaken                     // a leader has it
	stateCancelled                 // its caller left before a leader took it
)

type request struct {
	kind   reqKind
	final  bool        // reqFlush from Close: write every END record
	before time.Time   // reqCompact: remove what ended before this
	rec    Record      // reqAppend: Time and Epoch filled in
	val    []byte      // reqAppend: the encoded record
	state  reqState    // guarded by Bolt.mu
	done   chan result // capacity 1; one lead signal at most, then one result
}

type result struct {
	lead bool // not a result: the receiver is to lead the next commit
	lsn  uint64
	n    int
	err  error
}

func (r *request) answer(res result) { r.done <- res }

type pendingEnd struct {
	lsn uint64
	val []byte
}

// OpenBolt opens or creates the log file at path, takes its exclusive
// lock, reads and checks every record, and stores the next epoch.
//
// It fails with an error wrapping ErrLocked when another holder keeps the
// lock past LockTimeout, ErrBadFile when the file is not a log this build
// can read (not a bbolt file, truncated, unknown format version), and a
// *CorruptError (wrapping ErrCorrupt) naming the bucket and key of the
// first damaged record or broken state transition. Nothing is skipped.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	opts = opts.withDefaults()
	if err := precheck(path, opts); err != nil {
		return nil, err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.boltTimeout(), NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, ReadOnly: opts.ReadOnly})
	if err != nil {
		return nil, openError(path, opts, err)
	}
	b := &Bolt{
		path: path,
		opts: opts,
		db:   db,
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		next: 1,
		byTx: map[ids.TxID]*Decision{},
	}
	b.idle.L = &b.mu
	if err := b.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	go b.flushEnds()
	return b, nil
}

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
		return nil
	}
	epoch++
	err = b.db.Update(func(tx *bbolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
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
		return mb.Put(keyEpoch, u64(epoch))
	})
	if err != nil {
		return fmt.Errorf("wal: open %s: store epoch: %w", b.path, err)
	}
	b.epoch = epoch
	b.owner = owner
	return nil
}

// Owner returns the coordinator the log belongs to, or "" if none was
// ever named (see BoltOptions.Owner).
func (b *Bolt) Owner() string { return b.owner }

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

// loadRecords reads every record, checks the state transitions and, in a
// version-1 file (xb not nil), the tx index, and fills b.byTx and b.next.
//
// The next LSN is one past the largest key, or past the log bucket's
// sequence, which compaction raises to every LSN it deletes, so that an LSN
// is never reused.
func (b *Bolt) loadRecords(lb, xb *bbolt.Bucket) error {
	var last uint64
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		rec, err := b.decodeAt(k, v)
		if err != nil {
			return err
		}
		last = rec.LSN
		switch rec.Kind {
		case KindCommit, KindAbort:
			if d, ok := b.byTx[rec.TxID]; ok {
				return b.corrupt(BucketLog, rec.LSN, "second decision %v for %s (first: %v at key %d)", rec.Kind, rec.TxID, d.Kind, d.LSN)
			}
			if xb != nil {
				iv := xb.Get(rec.TxID[:])
				if len(iv) != 8 || binary.BigEndian.Uint64(iv) != rec.LSN {
					return b.corrupt(BucketTx, rec.LSN, "decision for %s at key %d has no matching entry in bucket %q (entry %x)", rec.TxID, rec.LSN, BucketTx, iv)
				}
			}
			d := &Decision{Record: rec}
			if rec.Holder != "" {
				// A holder's decision is noted once it has ended.
				d.Ended, d.EndLSN, d.EndTime = true, rec.LSN, rec.Time
			}
			b.byTx[rec.TxID] = d
		case KindEnd:
			d, ok := b.byTx[rec.TxID]
			if !ok {
				return b.corrupt(BucketLog, rec.LSN, "END for %s without its decision", rec.TxID)
			}
			if d.Ended {
				return b.corrupt(BucketLog, rec.LSN, "second END for %s (first at key %d)", rec.TxID, d.EndLSN)
			}
			d.Ended, d.EndLSN, d.EndTime = true, rec.LSN, rec.Time
		}
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
		d, ok := b.byTx[ids.TxID(k)]
		if !ok || d.LSN != lsn {
			return b.corrupt(BucketTx, lsn, "entry for %s points to key %d, which holds no decision for it", ids.TxID(k), lsn)
		}
		n++
	}
	if n != len(b.byTx) {
		return b.corrupt(BucketTx, 0, "%d entries for %d decisions", n, len(b.byTx))
	}
	return nil
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Path returns the log file's path.
func (b *Bolt) Path() string { return b.path }

// watchEndsLocked makes sure the END flusher will look at queued END
// records, waking it if it is not already waiting on their deadline.
func (b *Bolt) watchEndsLocked() {
	if b.endsWatched {
		return
	}
	b.endsWatched = true
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// submit queues r and returns its result. If no commit is in progress the
// caller leads one at once; otherwise it waits, and leads a later commit if
// the leader of the current one passes leadership to it.
func (b *Bolt) submit(ctx context.Context, r *request) (res result, cancelled bool) {
	r.done = make(chan result, 1)
	b.mu.Lock()
	if b.closed && !r.final {
		b.mu.Unlock()
		return result{err: ErrClosed}, false
	}
	if b.failed != nil {
		err := b.failed
		b.mu.Unlock()
		return result{err: err}, false
	}
	b.queue = append(b.queue, r)
	lead := !b.writing
	b.writing = true
	b.mu.Unlock()
	if lead {
		b.lead()
	}
	return b.await(ctx, r)
}

// await waits for r's result, leading commits when told to. If ctx ends
// while r is still queued, r is withdrawn and cancelled is true; once a
// leader has taken r, await waits for that commit's real result. A caller
// told to lead does so even if ctx has ended, so that the requests queued
// behind it are written; its own request is then withdrawn first.
func (b *Bolt) await(ctx context.Context, r *request) (result, bool) {
	for {
		var res result
		select {
		case res = <-r.done:
		case <-ctx.Done():
			b.mu.Lock()
			if r.state == stateQueued {
				r.state = stateCancelled
				b.mu.Unlock()
				return result{err: ctx.Err()}, true
			}
			b.mu.Unlock()
			res = <-r.done
		}
		if !res.lead {
			return res, false
		}
		b.mu.Lock()
		withdrawn := ctx.Err() != nil
		if withdrawn {
			r.state = stateCancelled
		} else {
			r.state = stateQueued
		}
		b.mu.Unlock()
		b.lead()
		if withdrawn {
			return result{err: ctx.Err()}, true
		}
	}
}

// lead runs one commit; the caller must have set b.writing. Afterwards it
// passes leadership to the first request still queued or, if there is
// none, leaves the write path free.
func (b *Bolt) lead() {
	b.step()
	b.mu.Lock()
	for _, r := range b.queue {
		if r.state == stateQueued {
			r.state = stateLeading
			b.mu.Unlock()
			r.done <- result{lead: true}
			return
		}
	}
	clear(b.queue)
	b.queue = b.queue[:0]
	b.writing = false
	if len(b.ends) > 0 && b.failed == nil {
		b.watchEndsLocked()
	}
	b.idle.Broadcast()
	b.mu.Unlock()
}

// existingLocked answers an append for a transaction already decided.
func existingLocked(d *Decision, rec *Record) (uint64, error) {
	if d.Kind != rec.Kind {
		return 0, fmt.Errorf("%w: %s has %v at LSN %d, refused %v", ErrConflict, rec.TxID, d.Kind, d.LSN, rec.Kind)
	}
	return d.LSN, nil
}

// Append implements Log. It returns once the bbolt commit holding the
// record has returned.
//
// If ctx ends while the record is still queued, the record is withdrawn
// and Append returns ctx.Err(): a context error always means the record
// was not written. Once a leader has taken the record, Append waits for
// that one commit and reports its real result, so that a caller never
// hears "not written" about a record that may be durable.
func (b *Bolt) Append(ctx context.Context, rec Record) (uint64, error) {
	if b.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	if err := rec.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	rec.LSN = 0
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	rec.Branches = append([]Branch(nil), rec.Branches...)
	b.mu.Lock()
	if rec.Epoch == 0 {
		rec.Epoch = b.epoch
	}
	if d, ok := b.byTx[rec.TxID]; ok && !b.closed {
		b.mu.Unlock()
		return existingLocked(d, &rec)
	}
	b.mu.Unlock()
	val, err := EncodeRecord(rec)
	if err != nil {
		return 0, err
	}
	res, _ := b.submit(ctx, &request{kind: reqAppend, rec: rec, val: val})
	return res.lsn, res.err
}

// End implements Log. The END record is written with the next commit of a
// decision, by Flush or Close, or after EndFlushDelay, whichever comes
// first. Lookup and Pending see the transaction as ended at once.
func (b *Bolt) End(txid ids.TxID) error {
	if b.opts.ReadOnly {
		return ErrReadOnly
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.failed != nil {
		return b.failed
	}
	d, ok := b.byTx[txid]
	if !ok || d.Ended {
		return nil
	}
	now := time.Now().UTC()
	val, err := EncodeRecord(Record{Kind: KindEnd, TxID: txid, Time: now, Epoch: b.epoch})
	if err != nil {
		return err
	}
	lsn := b.next
	b.next++
	d.Ended, d.EndLSN, d.EndTime = true, lsn, now
	b.queueLazyLocked(lsn, val)
	return nil
}

// queueLazyLocked queues a record that waits for the next sync (an END, or
// a noted decision). b.mu is held.
func (b *Bolt) queueLazyLocked(lsn uint64, val []byte) {
	if len(b.ends) == 0 {
		b.endsSince = time.Now()
	}
	b.ends = append(b.ends, pendingEnd{lsn: lsn, val: val})
	b.watchEndsLocked()
}

// Note implements Log. The record waits in memory with the END records.
func (b *Bolt) Note(rec Record) error {
	if b.opts.ReadOnly {
		return ErrReadOnly
	}
	if rec.Holder == "" {
		return fmt.Errorf("%w: a noted decision names its holder", ErrBadRecord)
	}
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	rec.Branches = append([]Branch(nil), rec.Branches...)
	if rec.Epoch == 0 {
		rec.Epoch = b.epoch // set at open, never changed
	}
	// The LSN is not part of the encoding: encode outside the lock.
	val, err := EncodeRecord(rec)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.failed != nil {
		return b.failed
	}
	if d, ok := b.byTx[rec.TxID]; ok {
		_, err := existingLocked(d, &rec)
		return err
	}
	rec.LSN = b.next
	b.next++
	b.byTx[rec.TxID] = &Decision{Record: rec, Ended: true, EndLSN: rec.LSN, EndTime: rec.Time}
	b.stats.Notes++
	b.queueLazyLocked(rec.LSN, val)
	return nil
}

// Flush implements Log. If ctx ends before a commit has taken the flush,
// Flush returns ctx.Err(); after that it waits for the commit.
func (b *Bolt) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	res, _ := b.submit(ctx, &request{kind: reqFlush})
	return res.err
}

// Compact implements Log. It deletes the decision and END records of every
// ended transaction in one bbolt commit. END records
// still queued for such transactions are dropped rather than written. If
// ctx ends before a leader has taken the request, Compact returns
// ctx.Err(); after that it waits for the compaction.
func (b *Bolt) Compact(ctx context.Context, endedBefore time.Time) (int, error) {
	if b.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	res, _ := b.submit(ctx, &request{kind: reqCompact, before: endedBefore})
	return res.n, res.err
}

func copyDecision(d *Decision) Decision {
	out := *d
	out.Branches = append([]Branch(nil), d.Branches...)
	return out
}

// Lookup implements Log. It reads the in-memory index only.
func (b *Bolt) Lookup(txid ids.TxID) (Decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Decision{}, ErrClosed
	}
	d, ok := b.byTx[txid]
	if !ok {
		return Decision{}, fmt.Errorf("%w for %s", ErrNotFound, txid)
	}
	return copyDecision(d), nil
}

// Pending implements Log. It reads the in-memory index only.
func (b *Bolt) Pending() ([]Decision, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	var out []Decision
	for _, d := range b.byTx {
		if !d.Ended {
			out = append(out, copyDecision(d))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LSN < out[j].LSN })
	return out, nil
}

// Records implements Log. It reads the file: END records still queued in
// memory are not seen until they are written. fn runs outside any bbolt
// transaction, so it may call the log.
func (b *Bolt) Records(fn func(Record) error) error {
	var from uint64 = 1
	for {
		chunk, err := b.readChunk(from)
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(chunk) < recordsChunk {
			return nil
		}
		from = chunk[len(chunk)-1].LSN + 1
	}
}

func (b *Bolt) readChunk(from uint64) ([]Record, error) {
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	var out []Record
	err := b.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketLog).Cursor()
		for k, v := c.Seek(u64(from)); k != nil && len(out) < recordsChunk; k, v = c.Next() {
			rec, err := b.decodeAt(k, v) // copies every field out of v
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// Epoch implements Log.
func (b *Bolt) Epoch() uint64 { return b.epoch }

// Stats implements Log. Syncs counts the writer's and compaction's bbolt
// commits, not the one OpenBolt makes to store the epoch.
func (b *Bolt) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	for _, d := range b.byTx {
		if !d.Ended {
			s.Pending++
		}
	}
	return s
}

// Close implements Log: it stops taking requests, writes everything queued
// (END records included), waits for the last commit to return, and closes
// the file. It returns the log's failure, if a write failed. Later calls
// return nil.
func (b *Bolt) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.stop)
		<-b.done
		// Queued after every request admitted before closed was set, the
		// final flush is taken only with or after all of them.
		b.submit(context.Background(), &request{kind: reqFlush, final: true})
		b.mu.Lock()
		for b.writing {
			b.idle.Wait()
		}
		failed := b.failed
		b.mu.Unlock()
		b.dbMu.Lock()
		err := b.db.Close()
		b.dbMu.Unlock()
		if err != nil {
			err = fmt.Errorf("wal: close %s: %w", b.path, err)
		}
		b.closeErr = errors.Join(failed, err)
	})
	return b.closeErr
}

// flushEnds is the background goroutine that writes END records which
// waited EndFlushDelay with no commit to ride on. It returns on Close.
func (b *Bolt) flushEnds() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-b.kick:
		case <-timer.C:
		case <-b.stop:
			return
		}
		b.mu.Lock()
		if len(b.ends) == 0 || b.failed != nil {
			b.endsWatched = false
			b.mu.Unlock()
			timer.Stop()
			continue
		}
		if wait := b.opts.EndFlushDelay - time.Since(b.endsSince); wait > 0 {
			b.mu.Unlock()
			timer.Reset(wait)
			continue
		}
		// Due. A leader busy now watches the END records again when it
		// leaves the write path with some still queued.
		b.endsWatched = false
		if b.writing {
			b.mu.Unlock()
			continue
		}
		b.writing = true
		b.mu.Unlock()
		b.lead()
	}
}

type dup struct{ r, of *request }

// step takes what is queued, writes it in one bbolt commit, and answers
// every request it took. The caller leads (b.writing is set).
func (b *Bolt) step() {
	b.mu.Lock()
	if b.failed != nil {
		err := b.failed
		for _, r := range b.queue {
			if r.state == stateQueued || r.state == stateLeading {
				r.state = stateTaken
				r.answer(result{err: err})
			}
		}
		clear(b.queue)
		b.queue, b.ends = b.queue[:0], nil
		b.mu.Unlock()
		return
	}
	var (
		appends   []*request
		dups      []dup
		flushes   []*request
		compacts  []*request
		inBatch   map[ids.TxID]*request
		remaining []*request
		final     bool
	)
	for i, r := range b.queue {
		if r.state == stateCancelled {
			continue
		}
		if r.kind == reqAppend && b.opts.NoGroupCommit && len(appends) > 0 {
			remaining = append(remaining, b.queue[i:]...)
			break
		}
		r.state = stateTaken
		switch r.kind {
		case reqAppend:
			if d, ok := b.byTx[r.rec.TxID]; ok {
				lsn, err := existingLocked(d, &r.rec)
				r.answer(result{lsn: lsn, err: err})
				continue
			}
			if first, ok := inBatch[r.rec.TxID]; ok {
				if first.rec.Kind != r.rec.Kind {
					r.answer(result{err: fmt.Errorf("%w: %s is being logged as %v, refused %v", ErrConflict, r.rec.TxID, first.rec.Kind, r.rec.Kind)})
				} else {
					dups = append(dups, dup{r: r, of: first})
				}
				continue
			}
			if inBatch == nil {
				inBatch = map[ids.TxID]*request{}
			}
			r.rec.LSN = b.next
			b.next++
			inBatch[r.rec.TxID] = r
			appends = append(appends, r)
		case reqFlush:
			flushes = append(flushes, r)
			final = final || r.final
		case reqCompact:
			compacts = append(compacts, r)
		}
	}
	clear(b.queue)
	b.queue = append(b.queue[:0], remaining...)
	var ends []pendingEnd
	endsDue := len(b.ends) > 0 && time.Since(b.endsSince) >= b.opts.EndFlushDelay
	if final || endsDue || len(appends) > 0 || len(flushes) > 0 {
		ends, b.ends = b.ends, nil
	}
	hook := b.writeHook
	b.mu.Unlock()

	var err error
	if len(appends) > 0 || len(ends) > 0 {
		start := time.Now()
		err = b.write(hook, appends, ends)
		if err == nil && b.opts.OnSync != nil {
			b.opts.OnSync(len(appends), len(ends), time.Since(start))
		}
	}

	b.mu.Lock()
	if err != nil {
		b.failed = fmt.Errorf("%w: %s: %w", ErrFailed, b.path, err)
		err = b.failed
	} else if len(appends) > 0 || len(ends) > 0 {
		for _, r := range appends {
			b.byTx[r.rec.TxID] = &Decision{Record: r.rec}
		}
		b.stats.Appends += uint64(len(appends))
		b.stats.Ends += uint64(len(ends))
		b.stats.Syncs++
		b.stats.MaxBatch = max(b.stats.MaxBatch, uint64(len(appends)+len(ends)))
	}
	b.mu.Unlock()
	for _, r := range appends {
		r.answer(result{lsn: r.rec.LSN, err: err})
	}
	for _, d := range dups {
		d.r.answer(result{lsn: d.of.rec.LSN, err: err})
	}
	for _, r := range flushes {
		r.answer(result{err: err})
	}
	for _, r := range compacts {
		var n int
		if err == nil {
			n, err = b.compact(hook, r.before)
		}
		r.answer(result{n: n, err: err})
	}
}

// write stores decisions and END records in one bbolt commit.
func (b *Bolt) write(hook func() error, appends []*request, ends []pendingEnd) error {
	failpoint.Hit(failpoint.WALBeforeSync)
	err := b.db.Update(func(tx *bbolt.Tx) error {
		if hook != nil {
			if err := hook(); err != nil {
				return err
			}
		}
		lb := tx.Bucket(bucketLog)
		// Keys only grow: fill each leaf before starting the next, which
		// keeps the tree, and the pages a commit rewrites, fewer.
		lb.FillPercent = 1
		for _, e := range ends {
			if err := lb.Put(u64(e.lsn), e.val); err != nil {
				return err
			}
		}
		for _, r := range appends {
			if err := lb.Put(u64(r.rec.LSN), r.val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	failpoint.Hit(failpoint.WALAfterSync)
	return nil
}

// compact removes every ended transaction in one bbolt commit.
func (b *Bolt) compact(hook func() error, before time.Time) (int, error) {
	type victim struct {
		id          ids.TxID
		lsn, endLSN uint64
	}
	var victims []victim
	b.mu.Lock()
	gone := map[uint64]bool{}
	for id, d := range b.byTx {
		if d.Ended && d.EndTime.Before(before) {
			victims = append(victims, victim{id, d.LSN, d.EndLSN})
			gone[d.EndLSN] = true
		}
	}
	// An END of a removed transaction still in memory is never written.
	kept := b.ends[:0]
	for _, e := range b.ends {
		if !gone[e.lsn] {
			kept = append(kept, e)
		}
	}
	b.ends = kept
	b.mu.Unlock()
	if len(victims) == 0 {
		return 0, nil
	}
	failpoint.Hit(failpoint.WALBeforeCompact)
	err := b.db.Update(func(tx *bbolt.Tx) error {
		if hook != nil {
			if err := hook(); err != nil {
				return err
			}
		}
		lb := tx.Bucket(bucketLog)
		top := lb.Sequence()
		for _, v := range victims {
			if err := lb.Delete(u64(v.lsn)); err != nil {
				return err
			}
			if err := lb.Delete(u64(v.endLSN)); err != nil {
				return err
			}
			top = max(top, v.lsn, v.endLSN)
		}
		// Keys deleted here may have been the largest; the sequence keeps
		// their LSNs from being handed out again after a restart.
		return lb.SetSequence(top)
	})
	if err == nil {
		failpoint.Hit(failpoint.WALAfterCompact)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.failed = fmt.Errorf("%w: %s: compact: %w", ErrFailed, b.path, err)
		return 0, b.failed
	}
	for _, v := range victims {
		delete(b.byTx, v.id)
	}
	b.stats.Compacted += uint64(len(victims))
	b.stats.Syncs++
	return len(victims), nil
}
