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

	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

var _ Log = (*Bolt)(nil)

// Defaults for BoltOptions.
const (
	DefaultLockTimeout   = time.Second
	DefaultEndFlushDelay = 50 * time.Millisecond
)

// fileFormat is the layout version stored in the meta bucket.
const fileFormat = 1

// Bucket names and meta keys of the log file.
const (
	BucketMeta = "meta" // format version and epoch
	BucketLog  = "log"  // 8-byte big-endian LSN -> encoded record
	BucketTx   = "tx"   // 16-byte TxID -> 8-byte LSN of its decision
)

var (
	bucketMeta = []byte(BucketMeta)
	bucketLog  = []byte(BucketLog)
	bucketTx   = []byte(BucketTx)
	keyVersion = []byte("version")
	keyEpoch   = []byte("epoch")
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
// One writer goroutine owns every write. Append queues its record and
// waits; the writer takes everything queued, writes it in one bbolt commit
// (one fsync) and then answers every waiter, so concurrent decisions share
// a sync without any timer. END records ride on the next commit; when no
// decision comes, the writer writes them after EndFlushDelay.
//
// An in-memory index of decisions, loaded at open, answers Lookup, Pending
// and Stats without reading the file.
type Bolt struct {
	path  string
	opts  BoltOptions
	db    *bbolt.DB
	epoch uint64

	kick chan struct{} // wakes the writer; capacity 1
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the writer has returned

	closeOnce sync.Once
	closeErr  error
	dbMu      sync.RWMutex // held for reading around each View; Close takes it to close db

	mu        sync.Mutex
	closed    bool
	failed    error // non-nil once a write failed; wraps ErrFailed and the cause
	queue     []*request
	ends      []pendingEnd
	endsSince time.Time
	next      uint64 // next LSN
	byTx      map[participant.TxID]*Decision
	stats     Stats
	// writeHook, if set, runs inside every write transaction of the writer
	// and compaction; an error fails that write as a disk error would.
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
	stateTaken                     // the writer has it
	stateCancelled                 // its caller left before the writer took it
)

type request struct {
	kind  reqKind
	rec   Record      // reqAppend: Time and Epoch filled in
	val   []byte      // reqAppend: the encoded record
	state reqState    // guarded by Bolt.mu
	done  chan result // capacity 1; receives exactly one result
}

type result struct {
	lsn uint64
	n   int
	err error
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
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.boltTimeout(), NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
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
		byTx: map[participant.TxID]*Decision{},
	}
	if err := b.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	go b.run()
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
// next epoch (creating the buckets of a new file).
func (b *Bolt) load() (err error) {
	defer func() {
		// bbolt panics on some damaged pages.
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: damaged bbolt page: %v", ErrBadFile, b.path, p)
		}
	}()
	var fresh bool
	var epoch uint64
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
		ver, err := b.metaUint(mb, keyVersion)
		if err != nil {
			return err
		}
		if ver != fileFormat {
			return fmt.Errorf("%w: %s has format version %d; this build reads version %d", ErrBadFile, b.path, ver, fileFormat)
		}
		if epoch, err = b.metaUint(mb, keyEpoch); err != nil {
			return err
		}
		lb, xb := tx.Bucket(bucketLog), tx.Bucket(bucketTx)
		if lb == nil || xb == nil {
			return fmt.Errorf("%w: %s lacks bucket %q or %q", ErrBadFile, b.path, BucketLog, BucketTx)
		}
		return b.loadRecords(lb, xb)
	})
	if err != nil {
		return err
	}
	epoch++
	err = b.db.Update(func(tx *bbolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if fresh {
			if err := mb.Put(keyVersion, u64(fileFormat)); err != nil {
				return err
			}
		}
		for _, name := range [][]byte{bucketLog, bucketTx} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return mb.Put(keyEpoch, u64(epoch))
	})
	if err != nil {
		return fmt.Errorf("wal: open %s: store epoch: %w", b.path, err)
	}
	b.epoch = epoch
	return nil
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

// loadRecords reads every record, checks the state transitions and the tx
// index, and fills b.byTx, b.next and b.stats.
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
			iv := xb.Get(rec.TxID[:])
			if len(iv) != 8 || binary.BigEndian.Uint64(iv) != rec.LSN {
				return b.corrupt(BucketTx, rec.LSN, "decision for %s at key %d has no matching entry in bucket %q (entry %x)", rec.TxID, rec.LSN, BucketTx, iv)
			}
			b.byTx[rec.TxID] = &Decision{Record: rec}
		case KindEnd:
			d, ok := b.byTx[rec.TxID]
			if !ok {
				return b.corrupt(BucketLog, rec.LSN, "END for %s without its decision", rec.TxID)
			}
			if d.Ended {
				return b.corrupt(BucketLog, rec.LSN, "second END for %s (first at key %d)", rec.TxID, d.EndLSN)
			}
			d.Ended, d.EndLSN = true, rec.LSN
		}
	}
	n := 0
	c = xb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 16 || len(v) != 8 {
			return b.corrupt(BucketTx, 0, "entry %x -> %x: want a 16-byte id and an 8-byte LSN", k, v)
		}
		lsn := binary.BigEndian.Uint64(v)
		d, ok := b.byTx[participant.TxID(k)]
		if !ok || d.LSN != lsn {
			return b.corrupt(BucketTx, lsn, "entry for %s points to key %d, which holds no decision for it", participant.TxID(k), lsn)
		}
		n++
	}
	if n != len(b.byTx) {
		return b.corrupt(BucketTx, 0, "%d entries for %d decisions", n, len(b.byTx))
	}
	if seq := lb.Sequence(); seq > last {
		last = seq
	}
	b.next = last + 1
	return nil
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Path returns the log file's path.
func (b *Bolt) Path() string { return b.path }

// wake makes the writer look at the queue.
func (b *Bolt) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// enqueueLocked adds r to the queue; it fails if the log is closed or failed.
func (b *Bolt) enqueueLocked(r *request) error {
	if b.closed {
		return ErrClosed
	}
	if b.failed != nil {
		return b.failed
	}
	r.done = make(chan result, 1)
	b.queue = append(b.queue, r)
	return nil
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
// was not written. Once the writer has taken the record, Append waits for
// that one commit and reports its real result, so that a caller never
// hears "not written" about a record that may be durable.
func (b *Bolt) Append(ctx context.Context, rec Record) (uint64, error) {
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
	r := &request{kind: reqAppend, rec: rec, val: val}
	b.mu.Lock()
	err = b.enqueueLocked(r)
	b.mu.Unlock()
	if err != nil {
		return 0, err
	}
	b.wake()
	select {
	case res := <-r.done:
		return res.lsn, res.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	if r.state == stateQueued {
		r.state = stateCancelled
		b.mu.Unlock()
		return 0, ctx.Err()
	}
	b.mu.Unlock()
	res := <-r.done
	return res.lsn, res.err
}

// End implements Log. The END record is written with the next commit of a
// decision, by Flush or Close, or after EndFlushDelay, whichever comes
// first. Lookup and Pending see the transaction as ended at once.
func (b *Bolt) End(txid participant.TxID) error {
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
	val, err := EncodeRecord(Record{Kind: KindEnd, TxID: txid, Time: time.Now().UTC(), Epoch: b.epoch})
	if err != nil {
		return err
	}
	lsn := b.next
	b.next++
	d.Ended, d.EndLSN = true, lsn
	if len(b.ends) == 0 {
		b.endsSince = time.Now()
		defer b.wake()
	}
	b.ends = append(b.ends, pendingEnd{lsn: lsn, val: val})
	return nil
}

// Flush implements Log.
func (b *Bolt) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &request{kind: reqFlush}
	b.mu.Lock()
	err := b.enqueueLocked(r)
	b.mu.Unlock()
	if err != nil {
		return err
	}
	b.wake()
	select {
	case res := <-r.done:
		return res.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Compact implements Log. It deletes the decision and END records and the
// index entry of every ended transaction in one bbolt commit. END records
// still queued for such transactions are dropped rather than written.
func (b *Bolt) Compact(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r := &request{kind: reqCompact}
	b.mu.Lock()
	err := b.enqueueLocked(r)
	b.mu.Unlock()
	if err != nil {
		return 0, err
	}
	b.wake()
	select {
	case res := <-r.done:
		return res.n, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func copyDecision(d *Decision) Decision {
	out := *d
	out.Branches = append([]Branch(nil), d.Branches...)
	return out
}

// Lookup implements Log. It reads the in-memory index only.
func (b *Bolt) Lookup(txid participant.TxID) (Decision, error) {
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

// Close implements Log: it stops taking requests, lets the writer finish
// everything queued (END records included), and closes the file. It
// returns the log's failure, if a write failed. Later calls return nil.
func (b *Bolt) Close() error {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.stop)
		<-b.done
		b.mu.Lock()
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

// run is the writer goroutine.
func (b *Bolt) run() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-b.kick:
		case <-timer.C:
		case <-b.stop:
			for b.step(true).more {
			}
			return
		}
		st := b.step(false)
		if st.more {
			b.wake()
		}
		if st.endsWait > 0 {
			timer.Reset(st.endsWait)
		} else {
			timer.Stop()
		}
	}
}

type stepResult struct {
	more     bool          // requests or END records are left to write now
	endsWait time.Duration // END records are left, to write after this long
}

type dup struct{ r, of *request }

// step takes what is queued and writes it. With final set, END records are
// written whatever their age.
func (b *Bolt) step(final bool) stepResult {
	b.mu.Lock()
	if b.failed != nil {
		err := b.failed
		for _, r := range b.queue {
			if r.state == stateQueued {
				r.state = stateTaken
				r.answer(result{err: err})
			}
		}
		b.queue, b.ends = nil, nil
		b.mu.Unlock()
		return stepResult{}
	}
	var (
		appends   []*request
		dups      []dup
		flushes   []*request
		compacts  []*request
		inBatch   = map[participant.TxID]*request{}
		remaining []*request
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
			r.rec.LSN = b.next
			b.next++
			inBatch[r.rec.TxID] = r
			appends = append(appends, r)
		case reqFlush:
			flushes = append(flushes, r)
		case reqCompact:
			compacts = append(compacts, r)
		}
	}
	b.queue = remaining
	var ends []pendingEnd
	endsDue := len(b.ends) > 0 && time.Since(b.endsSince) >= b.opts.EndFlushDelay
	if final || endsDue || len(appends) > 0 || len(flushes) > 0 {
		ends, b.ends = b.ends, nil
	}
	hook := b.writeHook
	b.mu.Unlock()

	var err error
	if len(appends) > 0 || len(ends) > 0 {
		err = b.write(hook, appends, ends)
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
	if len(compacts) > 0 {
		var n int
		if err == nil {
			n, err = b.compact(hook)
		}
		for _, r := range compacts {
			r.answer(result{n: n, err: err})
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	var st stepResult
	if b.failed != nil {
		st.more = len(b.queue) > 0
		return st
	}
	st.more = len(b.queue) > 0 || (final && len(b.ends) > 0)
	if len(b.ends) > 0 {
		st.endsWait = max(b.opts.EndFlushDelay-time.Since(b.endsSince), time.Nanosecond)
	}
	return st
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
		lb, xb := tx.Bucket(bucketLog), tx.Bucket(bucketTx)
		top := lb.Sequence()
		for _, e := range ends {
			if err := lb.Put(u64(e.lsn), e.val); err != nil {
				return err
			}
			top = max(top, e.lsn)
		}
		for _, r := range appends {
			k := u64(r.rec.LSN)
			if err := lb.Put(k, r.val); err != nil {
				return err
			}
			if err := xb.Put(r.rec.TxID[:], k); err != nil {
				return err
			}
			top = max(top, r.rec.LSN)
		}
		return lb.SetSequence(top)
	})
	if err != nil {
		return err
	}
	failpoint.Hit(failpoint.WALAfterSync)
	return nil
}

// compact removes every ended transaction in one bbolt commit.
func (b *Bolt) compact(hook func() error) (int, error) {
	type victim struct {
		id          participant.TxID
		lsn, endLSN uint64
	}
	var victims []victim
	b.mu.Lock()
	for id, d := range b.byTx {
		if d.Ended {
			victims = append(victims, victim{id, d.LSN, d.EndLSN})
		}
	}
	// Every queued END belongs to an ended transaction, removed here.
	b.ends = nil
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
		lb, xb := tx.Bucket(bucketLog), tx.Bucket(bucketTx)
		for _, v := range victims {
			if err := lb.Delete(u64(v.lsn)); err != nil {
				return err
			}
			if err := lb.Delete(u64(v.endLSN)); err != nil {
				return err
			}
			if err := xb.Delete(v.id[:]); err != nil {
				return err
			}
		}
		return nil
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
