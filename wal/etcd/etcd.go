// Package etcd is the coordinator's log (wal.Log) on an etcd cluster, for
// coordinators that fail over between machines: a decision is durable once
// etcd acknowledges it (a Raft majority, each member's own fsync), and any
// machine that can reach the cluster can read it.
//
// Records live under Options.Prefix as rec/<LSN> (the wal codec's
// encoding), with meta/epoch, meta/id, meta/created and meta/horizon
// beside them. Concurrent decisions share one etcd transaction (group
// commit, no timer: a batch takes whatever queued while the previous one
// was in flight), so the log scales with concurrency as the bbolt one
// does. END records and holders' notes ride on the next batch, or on Flush.
//
// One process writes a log at a time. Options.Fence adds compares to every
// write (for example the primary's election key and its create revision):
// when they fail, this process is no longer the log's writer, the write is
// refused with ErrFenced and the log accepts nothing more, so a deposed
// primary cannot write a decision after a standby took over. A write whose
// outcome stays unknown (etcd unreachable past Options.WriteBudget) fails
// the log too: only a fresh Open, which reads what etcd holds, knows what
// was written.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/wal"
)

var _ wal.Log = (*Log)(nil)

// ErrFenced: a write's fence compares failed, so another process owns the
// log now; nothing more is written.
var ErrFenced = errors.New("etcd wal: fenced: this process no longer owns the log")

// Options configure a Log.
type Options struct {
	// Prefix is the key prefix of this log, for example
	// "/txcoord/txc.orders-1/". Required; one log per prefix.
	Prefix string
	// Fence, if set, gives compares that every write must pass.
	Fence func() []clientv3.Cmp
	// MaxBatch bounds the records of one etcd transaction (default 100;
	// etcd refuses more than --max-txn-ops, 128 by default, operations).
	MaxBatch int
	// EndFlushDelay is the longest an END record waits for a decision to
	// ride with before it is written alone (default 50ms).
	EndFlushDelay time.Duration
	// Timeout bounds each etcd call (default 5s).
	Timeout time.Duration
	// WriteBudget bounds how long a write is tried again while etcd
	// cannot take it (default 30s); then the log fails.
	WriteBudget time.Duration
	// HistoryInterval is how often Compact also compacts etcd's history
	// (default 5m): it drops every revision older than the one it saw at
	// its previous history compaction, so at least one interval of
	// history stays for watchers, as the Kubernetes API server does.
	// etcd's history is the whole cluster's, not this log's.
	HistoryInterval time.Duration
	// KeepHistory leaves etcd's history alone, for a cluster whose
	// operator compacts it (etcd --auto-compaction-retention).
	KeepHistory bool
}

// op is one queued write: a decision to make durable, or a flush barrier.
type op struct {
	rec     wal.Record
	barrier bool
	taken   bool // the writer took it: it may be durable
	done    chan struct{}
	err     error
}

// Log is a wal.Log on etcd. Open it with Open; it is safe for concurrent
// use.
type Log struct {
	cli  *clientv3.Client
	opts Options

	mu       sync.Mutex
	closed   bool
	failed   error
	next     uint64
	epoch    uint64
	byTx     map[ids.TxID]*wal.Decision
	inflight map[ids.TxID]*op // decisions queued or being written
	queue    []*op
	lazy     []wal.Record // END records and notes not written yet
	horizon  time.Time
	created  time.Time
	logID    string
	stats    wal.Stats
	// histRev and histAt: the revision seen at the last history
	// compaction, and when.
	histRev       int64
	histAt        time.Time
	histCompacted int64

	kick     chan struct{}
	stop     chan struct{}
	finished chan struct{}
}

const (
	recDir     = "rec/"
	keyEpoch   = "meta/epoch"
	keyID      = "meta/id"
	keyCreated = "meta/created"
	keyHorizon = "meta/horizon"
)

func lsnKey(lsn uint64) string { return fmt.Sprintf("%s%020d", recDir, lsn) }

// Open reads the log under opts.Prefix from etcd (making it if there is
// none), takes the next epoch, and starts its writer.
func Open(ctx context.Context, cli *clientv3.Client, opts Options) (*Log, error) {
	if cli == nil {
		return nil, errors.New("etcd wal: no client")
	}
	if opts.Prefix == "" || !strings.HasSuffix(opts.Prefix, "/") {
		return nil, fmt.Errorf("etcd wal: prefix %q: want a key prefix ending in /", opts.Prefix)
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 100
	}
	if opts.EndFlushDelay <= 0 {
		opts.EndFlushDelay = 50 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.WriteBudget <= 0 {
		opts.WriteBudget = 30 * time.Second
	}
	if opts.HistoryInterval <= 0 {
		opts.HistoryInterval = 5 * time.Minute
	}
	l := &Log{cli: cli, opts: opts, next: 1, byTx: map[ids.TxID]*wal.Decision{}, inflight: map[ids.TxID]*op{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), finished: make(chan struct{})}
	if err := l.meta(ctx); err != nil {
		return nil, err
	}
	if err := l.load(ctx); err != nil {
		return nil, err
	}
	go l.writer()
	return l, nil
}

func (l *Log) key(k string) string { return l.opts.Prefix + k }

func (l *Log) fence() []clientv3.Cmp {
	if l.opts.Fence == nil {
		return nil
	}
	return l.opts.Fence()
}

// meta makes the log's identity on first open and takes the next epoch.
func (l *Log) meta(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	now := time.Now().UTC()
	id := uuid.NewString()
	cmps := append(l.fence(), clientv3.Compare(clientv3.CreateRevision(l.key(keyID)), "=", 0))
	if _, err := l.cli.Txn(cctx).If(cmps...).Then(
		clientv3.OpPut(l.key(keyID), id), clientv3.OpPut(l.key(keyCreated), now.Format(time.RFC3339Nano)),
	).Commit(); err != nil {
		return fmt.Errorf("etcd wal: %s: make the log: %w", l.opts.Prefix, err)
	}
	for {
		resp, err := l.cli.Get(cctx, l.opts.Prefix+"meta/", clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("etcd wal: %s: read the log's identity: %w", l.opts.Prefix, err)
		}
		var epochRev int64
		var epoch uint64
		for _, kv := range resp.Kvs {
			v := string(kv.Value)
			switch strings.TrimPrefix(string(kv.Key), l.opts.Prefix) {
			case keyID:
				l.logID = v
			case keyCreated:
				if l.created, err = time.Parse(time.RFC3339Nano, v); err != nil {
					return fmt.Errorf("etcd wal: %s: %s: %w", l.opts.Prefix, keyCreated, err)
				}
			case keyHorizon:
				if l.horizon, err = time.Parse(time.RFC3339Nano, v); err != nil {
					return fmt.Errorf("etcd wal: %s: %s: %w", l.opts.Prefix, keyHorizon, err)
				}
			case keyEpoch:
				if epoch, err = strconv.ParseUint(v, 10, 64); err != nil {
					return fmt.Errorf("etcd wal: %s: %s: %w", l.opts.Prefix, keyEpoch, err)
				}
				epochRev = kv.ModRevision
			}
		}
		cmps := append(l.fence(), clientv3.Compare(clientv3.ModRevision(l.key(keyEpoch)), "=", epochRev))
		tr, err := l.cli.Txn(cctx).If(cmps...).Then(clientv3.OpPut(l.key(keyEpoch), strconv.FormatUint(epoch+1, 10))).Commit()
		if err != nil {
			return fmt.Errorf("etcd wal: %s: take the next epoch: %w", l.opts.Prefix, err)
		}
		if tr.Succeeded {
			l.epoch = epoch + 1
			return nil
		}
		if len(l.fence()) > 0 {
			// The epoch may have moved, or the fence failed: read again
			// once to tell.
			if ok, err := l.fenceHolds(cctx); err != nil {
				return err
			} else if !ok {
				return ErrFenced
			}
		}
	}
}

// fenceHolds reports whether the fence compares pass now.
func (l *Log) fenceHolds(ctx context.Context) (bool, error) {
	tr, err := l.cli.Txn(ctx).If(l.fence()...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcd wal: %s: check the fence: %w", l.opts.Prefix, err)
	}
	return tr.Succeeded, nil
}

// load reads every record into the index.
func (l *Log) load(ctx context.Context) error {
	return l.walk(ctx, func(r wal.Record) error {
		if r.LSN >= l.next {
			l.next = r.LSN + 1
		}
		switch r.Kind {
		case wal.KindEnd:
			if d, ok := l.byTx[r.TxID]; ok {
				d.Ended, d.EndLSN, d.EndTime = true, r.LSN, r.Time
			}
		default:
			d := &wal.Decision{Record: r}
			if r.Holder != "" {
				d.Ended, d.EndLSN, d.EndTime = true, r.LSN, r.Time
			}
			l.byTx[r.TxID] = d
		}
		return nil
	})
}

// walk calls fn for each record in etcd, in LSN order, a page at a time.
func (l *Log) walk(ctx context.Context, fn func(wal.Record) error) error {
	from := l.key(recDir)
	end := clientv3.GetPrefixRangeEnd(l.key(recDir))
	for {
		cctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
		resp, err := l.cli.Get(cctx, from, clientv3.WithRange(end), clientv3.WithLimit(1000),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		cancel()
		if err != nil {
			return fmt.Errorf("etcd wal: %s: read records: %w", l.opts.Prefix, err)
		}
		for _, kv := range resp.Kvs {
			k := strings.TrimPrefix(string(kv.Key), l.key(recDir))
			lsn, perr := strconv.ParseUint(k, 10, 64)
			if perr != nil {
				return &wal.CorruptError{Path: "etcd:" + l.opts.Prefix, Bucket: "rec", Reason: fmt.Sprintf("key %q is not an LSN", kv.Key)}
			}
			r, derr := wal.DecodeRecord(kv.Value)
			if derr != nil {
				return &wal.CorruptError{Path: "etcd:" + l.opts.Prefix, Bucket: "rec", Key: lsn, Reason: derr.Error()}
			}
			r.LSN = lsn
			if err := fn(r); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Created returns when the log was first made.
func (l *Log) Created() time.Time { return l.created }

// LogID returns the log's id, made at its first open.
func (l *Log) LogID() string { return l.logID }

func (l *Log) usable() error {
	switch {
	case l.closed:
		return wal.ErrClosed
	case l.failed != nil:
		return fmt.Errorf("%w: %w", wal.ErrFailed, l.failed)
	}
	return nil
}

// Append implements wal.Log.
func (l *Log) Append(ctx context.Context, rec wal.Record) (uint64, error) {
	if err := rec.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	if d, ok := l.byTx[rec.TxID]; ok {
		l.mu.Unlock()
		if d.Kind != rec.Kind {
			return 0, fmt.Errorf("%w: %s has %v at LSN %d, refused %v", wal.ErrConflict, rec.TxID, d.Kind, d.LSN, rec.Kind)
		}
		return d.LSN, nil
	}
	o, ok := l.inflight[rec.TxID]
	if ok && o.rec.Kind != rec.Kind {
		l.mu.Unlock()
		return 0, fmt.Errorf("%w: %s has %v being written, refused %v", wal.ErrConflict, rec.TxID, o.rec.Kind, rec.Kind)
	}
	if !ok {
		l.stampLocked(&rec)
		o = &op{rec: rec, done: make(chan struct{})}
		l.inflight[rec.TxID] = o
		l.queue = append(l.queue, o)
		l.signal()
	}
	l.mu.Unlock()
	select {
	case <-o.done:
		return o.rec.LSN, o.err
	case <-ctx.Done():
	}
	l.mu.Lock()
	if !o.taken {
		// Not written: withdraw it.
		for i, q := range l.queue {
			if q == o {
				l.queue = append(l.queue[:i], l.queue[i+1:]...)
				break
			}
		}
		delete(l.inflight, o.rec.TxID)
		o.err = ctx.Err()
		close(o.done)
		l.mu.Unlock()
		return 0, ctx.Err()
	}
	l.mu.Unlock()
	// In flight: only its outcome tells.
	<-o.done
	return o.rec.LSN, o.err
}

func (l *Log) signal() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// stampLocked gives a new decision record its LSN, time, epoch and a
// copy of its branches.
func (l *Log) stampLocked(rec *wal.Record) {
	rec.LSN = l.next
	l.next++
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	if rec.Epoch == 0 {
		rec.Epoch = l.epoch
	}
	rec.Branches = append([]wal.Branch(nil), rec.Branches...)
}

// Note implements wal.Log.
func (l *Log) Note(rec wal.Record) error {
	if rec.Holder == "" {
		return fmt.Errorf("%w: a noted decision names its holder", wal.ErrBadRecord)
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	if d, ok := l.byTx[rec.TxID]; ok {
		if d.Kind != rec.Kind {
			return fmt.Errorf("%w: %s has %v at LSN %d, refused %v", wal.ErrConflict, rec.TxID, d.Kind, d.LSN, rec.Kind)
		}
		return nil
	}
	if o, ok := l.inflight[rec.TxID]; ok && o.rec.Kind != rec.Kind {
		return fmt.Errorf("%w: %s has %v being written, refused %v", wal.ErrConflict, rec.TxID, o.rec.Kind, rec.Kind)
	}
	l.stampLocked(&rec)
	l.byTx[rec.TxID] = &wal.Decision{Record: rec, Ended: true, EndLSN: rec.LSN, EndTime: rec.Time}
	l.lazy = append(l.lazy, rec)
	l.stats.Notes++
	l.signal()
	return nil
}

// End implements wal.Log.
func (l *Log) End(txid ids.TxID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usable(); err != nil {
		return err
	}
	d, ok := l.byTx[txid]
	if !ok || d.Ended {
		return nil
	}
	r := wal.Record{LSN: l.next, Kind: wal.KindEnd, TxID: txid, Time: time.Now().UTC(), Epoch: l.epoch}
	l.next++
	d.Ended, d.EndLSN, d.EndTime = true, r.LSN, r.Time
	l.lazy = append(l.lazy, r)
	l.stats.Ends++
	l.signal()
	return nil
}

// Flush implements wal.Log: it returns nil once every END and note handed
// to the log before it is in etcd.
func (l *Log) Flush(ctx context.Context) error {
	l.mu.Lock()
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		return err
	}
	// Always a barrier, even with nothing lazy queued: the writer may
	// have taken the last lazy records and be writing them now, and only
	// the outcome of that write says whether they are durable. The writer
	// takes the barrier after it.
	o := &op{barrier: true, done: make(chan struct{})}
	l.queue = append(l.queue, o)
	l.signal()
	l.mu.Unlock()
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer writes queued decisions, and lazy records with them or after
// EndFlushDelay, until Close.
func (l *Log) writer() {
	defer close(l.finished)
	var timer <-chan time.Time
	for {
		lazyToo := false
		select {
		case <-l.stop:
			l.write(true)
			return
		case <-l.kick:
		case <-timer:
			timer, lazyToo = nil, true
		}
		if l.write(lazyToo) && timer == nil {
			timer = time.After(l.opts.EndFlushDelay)
		}
	}
}

// write writes batches until nothing waits: decisions and flush barriers,
// each batch with as many lazy records as fit, and the lazy records alone
// when lazyToo. It reports whether lazy records are left for later.
func (l *Log) write(lazyToo bool) bool {
	for {
		l.mu.Lock()
		if l.failed != nil {
			l.failQueuedLocked()
			l.lazy = nil
			l.mu.Unlock()
			return false
		}
		var ops []*op
		var recs []wal.Record
		barrier := false
		for len(l.queue) > 0 && len(recs) < l.opts.MaxBatch {
			o := l.queue[0]
			l.queue = l.queue[1:]
			o.taken = true
			ops = append(ops, o)
			if o.barrier {
				barrier = true
			} else {
				recs = append(recs, o.rec)
			}
		}
		if len(recs) > 0 || barrier || lazyToo {
			n := min(len(l.lazy), l.opts.MaxBatch-len(recs))
			recs = append(recs, l.lazy[:n]...)
			l.lazy = l.lazy[n:]
		}
		if len(ops) == 0 && len(recs) == 0 {
			left := len(l.lazy) > 0
			l.mu.Unlock()
			return left
		}
		l.mu.Unlock()
		var err error
		if len(recs) > 0 {
			err = l.commit(recs)
		}
		l.mu.Lock()
		if err != nil && l.failed == nil {
			l.failed = err
		}
		var requeue []*op
		for _, o := range ops {
			switch {
			case o.barrier && err == nil && len(l.lazy) > 0:
				// More lazy records than fit in one batch: it waits.
				o.taken = false
				requeue = append(requeue, o)
			case o.barrier:
				o.err = err
				close(o.done)
			case err != nil:
				delete(l.inflight, o.rec.TxID)
				o.err = fmt.Errorf("%w: the decision may or may not be in etcd: %w", wal.ErrFailed, err)
				close(o.done)
			default:
				delete(l.inflight, o.rec.TxID)
				l.byTx[o.rec.TxID] = &wal.Decision{Record: o.rec}
				l.stats.Appends++
				close(o.done)
			}
		}
		l.queue = append(requeue, l.queue...)
		if err == nil && len(recs) > 0 {
			l.stats.Syncs++
			l.stats.MaxBatch = max(l.stats.MaxBatch, uint64(len(recs)))
		}
		l.mu.Unlock()
		if err != nil {
			return false
		}
	}
}

// failQueuedLocked fails every queued write once the log has failed.
func (l *Log) failQueuedLocked() {
	for _, o := range l.queue {
		o.err = fmt.Errorf("%w: %w", wal.ErrFailed, l.failed)
		if !o.barrier {
			delete(l.inflight, o.rec.TxID)
		}
		close(o.done)
	}
	l.queue = nil
}

// commit writes recs in one etcd transaction behind the fence.
func (l *Log) commit(recs []wal.Record) error {
	puts := make([]clientv3.Op, 0, len(recs))
	for _, r := range recs {
		b, err := wal.EncodeRecord(r)
		if err != nil {
			return fmt.Errorf("etcd wal: encode %s: %w", r.TxID, err)
		}
		puts = append(puts, clientv3.OpPut(l.key(lsnKey(r.LSN)), string(b)))
	}
	failpoint.Hit(failpoint.WALBeforeSync)
	if err := l.txn(puts); err != nil {
		return err
	}
	failpoint.Hit(failpoint.WALAfterSync)
	return nil
}

// txn runs ops behind the fence. A write that fails for a while (a
// leader election, a member restarting) is tried again until WriteBudget
// has passed: the ops put and delete fixed keys with fixed values, so
// running them twice changes nothing, and the fence is compared each time.
func (l *Log) txn(ops []clientv3.Op) error {
	deadline := time.Now().Add(l.opts.WriteBudget)
	delay := 50 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(l.cli.Ctx(), l.opts.Timeout)
		tr, err := l.cli.Txn(ctx).If(l.fence()...).Then(ops...).Commit()
		cancel()
		if err == nil {
			if !tr.Succeeded {
				return ErrFenced
			}
			return nil
		}
		if !transient(err) || l.cli.Ctx().Err() != nil || time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("etcd wal: %s: write: %w", l.opts.Prefix, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, time.Second)
	}
}

// transient reports an etcd error that a later attempt may not meet.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	msg := err.Error()
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "leader") || strings.Contains(msg, "timed out")
}

// Lookup implements wal.Log.
func (l *Log) Lookup(txid ids.TxID) (wal.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return wal.Decision{}, wal.ErrClosed
	}
	d, ok := l.byTx[txid]
	if !ok {
		return wal.Decision{}, fmt.Errorf("%w for %s", wal.ErrNotFound, txid)
	}
	return *d, nil
}

// Pending implements wal.Log.
func (l *Log) Pending() ([]wal.Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, wal.ErrClosed
	}
	var out []wal.Decision
	for _, d := range l.byTx {
		if !d.Ended {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LSN < out[j].LSN })
	return out, nil
}

// Records implements wal.Log: what etcd holds, in log order.
func (l *Log) Records(fn func(wal.Record) error) error {
	return l.walk(context.Background(), fn)
}

// Compact implements wal.Log. An END still waiting to be written is
// dropped with its transaction.
func (l *Log) Compact(ctx context.Context, endedBefore time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	var gone []*wal.Decision
	horizon := l.horizon
	for _, d := range l.byTx {
		if d.Ended && d.EndTime.Before(endedBefore) {
			gone = append(gone, d)
			if d.EndTime.After(horizon) {
				horizon = d.EndTime
			}
		}
	}
	if len(gone) == 0 {
		l.mu.Unlock()
		return 0, l.compactHistory(ctx)
	}
	drop := map[uint64]bool{}
	for _, d := range gone {
		drop[d.LSN], drop[d.EndLSN] = true, true
	}
	kept := l.lazy[:0]
	for _, r := range l.lazy {
		if !drop[r.LSN] {
			kept = append(kept, r)
		}
	}
	l.lazy = kept
	l.mu.Unlock()
	keys := make([]string, 0, len(drop))
	for lsn := range drop {
		keys = append(keys, l.key(lsnKey(lsn)))
	}
	sort.Strings(keys)
	failpoint.Hit(failpoint.WALBeforeCompact)
	for i := 0; i < len(keys); i += l.opts.MaxBatch {
		var ops []clientv3.Op
		for _, k := range keys[i:min(i+l.opts.MaxBatch, len(keys))] {
			ops = append(ops, clientv3.OpDelete(k))
		}
		if i+l.opts.MaxBatch >= len(keys) {
			ops = append(ops, clientv3.OpPut(l.key(keyHorizon), horizon.UTC().Format(time.RFC3339Nano)))
		}
		if err := l.txn(ops); err != nil {
			l.mu.Lock()
			if l.failed == nil {
				l.failed = err
			}
			l.mu.Unlock()
			return 0, err
		}
	}
	l.mu.Lock()
	for _, d := range gone {
		delete(l.byTx, d.TxID)
	}
	l.horizon = horizon
	l.stats.Compacted += uint64(len(gone))
	l.mu.Unlock()
	failpoint.Hit(failpoint.WALAfterCompact)
	return len(gone), l.compactHistory(ctx)
}

// compactHistory compacts etcd's history, at most once per
// HistoryInterval, up to the revision seen at the previous time. Its
// failure fails nothing: the records are gone already, and the next pass
// tries again.
func (l *Log) compactHistory(ctx context.Context) error {
	if l.opts.KeepHistory {
		return nil
	}
	l.mu.Lock()
	prev, due := l.histRev, time.Since(l.histAt) >= l.opts.HistoryInterval
	l.mu.Unlock()
	if !due {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	resp, err := l.cli.Get(cctx, l.key(keyID), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("etcd wal: %s: history compaction: %w", l.opts.Prefix, err)
	}
	if prev > 0 {
		if _, err := l.cli.Compact(cctx, prev); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			return fmt.Errorf("etcd wal: %s: compact etcd's history to revision %d: %w", l.opts.Prefix, prev, err)
		}
	}
	l.mu.Lock()
	l.histRev, l.histAt = resp.Header.Revision, time.Now()
	if prev > 0 {
		l.histCompacted = prev
	}
	l.mu.Unlock()
	return nil
}

// HistoryCompactedTo returns the revision this log last compacted etcd's
// history to (0: never).
func (l *Log) HistoryCompactedTo() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.histCompacted
}

// Epoch implements wal.Log.
func (l *Log) Epoch() uint64 { return l.epoch }

// Horizon implements wal.Log.
func (l *Log) Horizon() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.horizon
}

// Stats implements wal.Log.
func (l *Log) Stats() wal.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	for _, d := range l.byTx {
		if !d.Ended {
			s.Pending++
		}
	}
	return s
}

// Close implements wal.Log: it writes what waits and stops the writer.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.finished
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil && !errors.Is(l.failed, ErrFenced) {
		return l.failed
	}
	return nil
}
