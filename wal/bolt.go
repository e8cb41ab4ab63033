package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
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
	// keyHorizon holds the compaction horizon (Log.Horizon), Unix
	// nanoseconds, once something was compacted.
	keyHorizon = []byte("horizon")
	// keyLogID and keyCreated hold the log's own id and creation time.
	keyLogID   = []byte("log-id")
	keyCreated = []byte("created")
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
	// EndFlushDelay is how long END records, noted decisions and the
	// journal's decisions may wait before the bbolt file takes them. Zero
	// means DefaultEndFlushDelay.
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
	// OnSync, if set, is called after each durable write of records (a
	// journal write, or a bbolt commit), with the number of decision and END
	// records it made durable and how long the write and its fsyncs took
	// (for metrics). It must not block.
	OnSync func(decisions, ends int, d time.Duration)
	// NoJournal writes every group of decisions straight into the bbolt
	// file (a commit with two fdatasyncs) instead of the journal (one). It
	// exists as a baseline for benchmarks. A journal left with decisions
	// in it is still read at open.
	NoJournal bool
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
// lone writer pays no goroutine handoff.
//
// A group of decisions is made durable in the journal (JournalPath): one
// write and one fdatasync. The bbolt file takes the journal's decisions
// later, in one commit with the END records and noted decisions waiting in
// memory: when the oldest of them has waited EndFlushDelay (a background
// goroutine sees to it), on Flush, Compact and Close, or when the journal
// is full. The journal then starts again at its beginning. Opening reads
// the journal's decisions newer than the file's into the file.
//
// An in-memory index, rebuilt at open from the records themselves, holds
// the pending decisions whole (Pending and Stats read nothing else) and,
// for each ended transaction, where its records are: Lookup reads an
// ended decision from the file. Memory and the time to open grow with the
// pending decisions, and only a little with the ended ones (about 60 bytes
// each), however many ended within the keep period.
type Bolt struct {
	path  string
	opts  BoltOptions
	db    *bbolt.DB
	epoch uint64
	owner string
	// logID, created: the log's identity (empty, zero for a log made
	// before they were kept); fresh: this open created the log.
	logID   string
	created time.Time
	fresh   bool

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
	// endsSince is when the oldest record waiting for the file (in ends or
	// migr) was queued.
	endsSince time.Time
	// endsWatched is set while the END flusher will look at ends again
	// without being woken.
	endsWatched bool
	next        uint64    // next LSN
	horizon     time.Time // Log.Horizon
	// byTx holds the pending decisions, and the ended ones whose END (or
	// noted decision) is not written yet; onDisk the ended ones whose END
	// is in the file.
	byTx   map[ids.TxID]*Decision
	onDisk map[ids.TxID]endedRef
	// j is the journal decisions are forced to (nil if read-only or
	// NoJournal); migr the decisions in it that the bbolt file does not
	// hold yet, in LSN order. jrecs are the journal's decisions a read-only
	// open found (Records lists them after the file's).
	j     *journal
	migr  []pendingEnd
	jrecs []Record
	stats Stats
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
	lsn  uint64
	txid ids.TxID
	val  []byte
}

// endedRef is an ended transaction whose records are in the file: its
// decision at lsn, its END at endLSN (lsn itself for a noted decision).
type endedRef struct {
	lsn, endLSN uint64
	endTime     int64 // Unix nanoseconds; 0 if the record had no time
	kind        Kind
}

func (r endedRef) endTimeUTC() time.Time {
	if r.endTime == 0 {
		return time.Time{}
	}
	return time.Unix(0, r.endTime).UTC()
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
		path:   path,
		opts:   opts,
		db:     db,
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		next:   1,
		byTx:   map[ids.TxID]*Decision{},
		onDisk: map[ids.TxID]endedRef{},
	}
	b.idle.L = &b.mu
	if err := b.load(); err != nil {
		if b.j != nil {
			_ = b.j.close()
		}
		_ = db.Close()
		return nil, err
	}
	b.dropResident()
	go b.flushEnds()
	return b, nil
}

// Owner returns the coordinator the log belongs to, or "" if none was
// ever named (see BoltOptions.Owner).
func (b *Bolt) Owner() string { return b.owner }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Path returns the log file's path.
func (b *Bolt) Path() string { return b.path }

// decidedLocked returns the kind and LSN of txid's decision, if the log
// holds one. b.mu is held.
func (b *Bolt) decidedLocked(txid ids.TxID) (Kind, uint64, bool) {
	if d, ok := b.byTx[txid]; ok {
		return d.Kind, d.LSN, true
	}
	if r, ok := b.onDisk[txid]; ok {
		return r.kind, r.lsn, true
	}
	return 0, 0, false
}

// existing answers an append for a transaction already decided (kind at
// lsn).
func existing(kind Kind, lsn uint64, rec *Record) (uint64, error) {
	if kind != rec.Kind {
		return 0, fmt.Errorf("%w: %s has %v at LSN %d, refused %v", ErrConflict, rec.TxID, kind, lsn, rec.Kind)
	}
	return lsn, nil
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
	if kind, lsn, ok := b.decidedLocked(rec.TxID); ok && !b.closed {
		b.mu.Unlock()
		return existing(kind, lsn, &rec)
	}
	b.mu.Unlock()
	val, err := EncodeRecord(rec)
	if err != nil {
		return 0, err
	}
	res, _ := b.submit(ctx, &request{kind: reqAppend, rec: rec, val: val})
	return res.lsn, res.err
}

// End implements Log. The END record goes into the file with the next move
// of the journal's decisions: after EndFlushDelay, on Flush, Compact or
// Close, or when the journal is full, whichever comes first. Lookup and
// Pending see the transaction as ended at once.
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
	b.queueLazyLocked(lsn, txid, val)
	return nil
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
	if kind, lsn, ok := b.decidedLocked(rec.TxID); ok {
		_, err := existing(kind, lsn, &rec)
		return err
	}
	rec.LSN = b.next
	b.next++
	b.byTx[rec.TxID] = &Decision{Record: rec, Ended: true, EndLSN: rec.LSN, EndTime: rec.Time}
	b.stats.Notes++
	b.queueLazyLocked(rec.LSN, rec.TxID, val)
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

// Lookup implements Log. A pending decision comes from memory; an ended
// one is read from the file.
func (b *Bolt) Lookup(txid ids.TxID) (Decision, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Decision{}, ErrClosed
	}
	if d, ok := b.byTx[txid]; ok {
		out := copyDecision(d)
		b.mu.Unlock()
		return out, nil
	}
	ref, ok := b.onDisk[txid]
	b.mu.Unlock()
	if !ok {
		return Decision{}, fmt.Errorf("%w for %s", ErrNotFound, txid)
	}
	rec, found, err := b.readRecord(ref.lsn)
	switch {
	case err != nil:
		return Decision{}, err
	case !found:
		// Compacted since.
		return Decision{}, fmt.Errorf("%w for %s", ErrNotFound, txid)
	case rec.TxID != txid:
		return Decision{}, b.corrupt(BucketLog, ref.lsn, "holds %s, the index says %s", rec.TxID, txid)
	}
	return Decision{Record: rec, Ended: true, EndLSN: ref.endLSN, EndTime: ref.endTimeUTC()}, nil
}

// view runs fn in a read transaction of the file, unless the log is
// closed.
func (b *Bolt) view(fn func(*bbolt.Tx) error) error {
	b.dbMu.RLock()
	defer b.dbMu.RUnlock()
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return b.db.View(fn)
}

// readRecord reads the record at lsn from the file.
func (b *Bolt) readRecord(lsn uint64) (Record, bool, error) {
	var rec Record
	var found bool
	err := b.view(func(tx *bbolt.Tx) error {
		k := u64(lsn)
		v := tx.Bucket(bucketLog).Get(k)
		if v == nil {
			return nil
		}
		found = true
		var err error
		rec, err = b.decodeAt(k, v) // copies every field out of v
		return err
	})
	return rec, found, err
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

// Records implements Log. It reads the file; fn runs outside any bbolt
// transaction, so it may call the log.
//
// It first moves the journal's decisions into the file (a Flush); a
// read-only log lists the decisions it found in the journal after the
// file's.
func (b *Bolt) Records(fn func(Record) error) error {
	if !b.opts.ReadOnly {
		if err := b.Flush(context.Background()); err != nil {
			return err
		}
	}
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
			break
		}
		from = chunk[len(chunk)-1].LSN + 1
	}
	for _, r := range b.jrecs {
		r.Branches = append([]Branch(nil), r.Branches...)
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bolt) readChunk(from uint64) ([]Record, error) {
	var out []Record
	err := b.view(func(tx *bbolt.Tx) error {
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

// LogID returns the log's own id, made when the log was created ("" for a
// log made before logs kept one).
func (b *Bolt) LogID() string { return b.logID }

// Created returns when the log was created (zero for a log made before
// logs kept it). A prepared branch older than its coordinator's log may
// have its decision in a log that was lost.
func (b *Bolt) Created() time.Time { return b.created }

// Fresh reports whether this open created the log: the file was missing or
// empty.
func (b *Bolt) Fresh() bool { return b.fresh }

// Horizon implements Log.
func (b *Bolt) Horizon() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.horizon
}

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
		if b.j != nil {
			err = errors.Join(err, b.j.close())
		}
		b.dbMu.Unlock()
		if err != nil {
			err = fmt.Errorf("wal: close %s: %w", b.path, err)
		}
		b.closeErr = errors.Join(failed, err)
	})
	return b.closeErr
}
