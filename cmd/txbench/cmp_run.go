package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/txcoord/txcoord/internal/pgtest"
)

// cmpResult is one run: a workload, a mode and a worker count.
type cmpResult struct {
	Workload  string  `json:"workload"`
	Mode      string  `json:"mode"`
	Workers   int     `json:"workers"`
	Crash     bool    `json:"participant_crash"`
	Seconds   float64 `json:"seconds"`
	Committed int64   `json:"committed"`
	Aborts    int64   `json:"aborts"`
	Errors    int64   `json:"errors"`
	TPS       float64 `json:"throughput"`
	P50       float64 `json:"p50_ms"`
	P95       float64 `json:"p95_ms"`
	P99       float64 `json:"p99_ms"`
	AbortRate float64 `json:"abort_rate"`
	// Rows locked: how long an operation's rows stay locked (2PC: from the
	// first UPDATE to COMMIT PREPARED, about the whole operation; sagas and
	// independent commits: the longest single local transaction).
	LockedP50 float64 `json:"locked_p50_ms"`
	LockedP99 float64 `json:"locked_p99_ms"`
	// Inconsistent: how long a change is partly visible (2PC: phase two,
	// from the first COMMIT PREPARED to the last acknowledgement; sagas and
	// independent commits: from the first step's commit to the last step's
	// or compensation's).
	InconsistentP50 float64 `json:"inconsistent_p50_ms"`
	InconsistentP99 float64 `json:"inconsistent_p99_ms"`
	// NeverHealed counts operations left half done for good.
	NeverHealed int64 `json:"never_healed"`
	// The plain reader reads every database's total at once (one query
	// per database, in parallel), over and over, and counts the reads where
	// money is missing or doubled. It reads again at once after such a
	// read: off by the same amount both times, the partial state lasted
	// (Stable); off once, the read most likely raced a commit between its
	// own queries.
	Audits          int64   `json:"audits"`
	Anomalies       int64   `json:"anomalies"`
	AnomalyRate     float64 `json:"anomaly_rate"`
	StableAnomalies int64   `json:"anomalies_stable"`
	StableRate      float64 `json:"anomaly_rate_stable"`
	// The locking reader reads every database's total in one read-only
	// transaction per database, all held open until every database was
	// read, each taking a SHARE lock on the accounts table first (the
	// whole-table form of SELECT ... FOR SHARE: it waits for the writers
	// in flight, prepared branches included, and holds new ones off).
	LockAudits      int64   `json:"locking_audits"`
	LockAnomalies   int64   `json:"locking_anomalies"`
	LockAnomalyRate float64 `json:"locking_anomaly_rate"`
	LockTimeouts    int64   `json:"locking_timeouts"` // audits that gave up waiting for a lock
	LockWaitP50     float64 `json:"locking_wait_p50_ms"`
	LockWaitP99     float64 `json:"locking_wait_p99_ms"`
	LockWaitMax     float64 `json:"locking_wait_max_ms"`
	// Series is the run over time, in buckets of SeriesStep seconds from
	// the start of the measured time; KillAt and RestartAt (crash runs)
	// are seconds from the same start.
	SeriesStep     float64 `json:"series_step_s,omitempty"`
	Series         []tick  `json:"series,omitempty"`
	KillAt         float64 `json:"kill_at_s,omitempty"`
	RestartAt      float64 `json:"restart_at_s,omitempty"`
	InvariantHolds bool    `json:"final_invariant_holds"`
	FinalDrift     int64   `json:"final_drift"`
	Leftover       int     `json:"prepared_left"`
	Note           string  `json:"note,omitempty"`
	FirstError     string  `json:"first_error,omitempty"` // the first operation error that was not a business failure
}

// tick is one bucket of a run's time series.
type tick struct {
	T         float64 `json:"t_s"`          // the bucket's start, seconds from the measured start
	OpsPerSec float64 `json:"ops_per_s"`    // operations committed
	ErrPerSec float64 `json:"errors_per_s"` // operations failed for anything but a business reason
	P99       float64 `json:"p99_ms"`       // of the operations committed in the bucket (0 if none)
	// Plain reader: reads per second that saw money missing or doubled,
	// and of them the stable ones (a real partial state).
	AnomaliesPerSec       float64 `json:"anomalies_per_s"`
	StableAnomaliesPerSec float64 `json:"stable_anomalies_per_s"`
	// Locking reader: reads per second that saw money missing or doubled,
	// and the share of the bucket it spent waiting for locks (0 to 1).
	LockAnomaliesPerSec float64 `json:"locking_anomalies_per_s"`
	LockWaitShare       float64 `json:"locking_wait_share"`
}

type runSpec struct {
	w           workload
	mode        string
	workers     int
	duration    time.Duration
	warmup      time.Duration
	failRate    float64
	crash       bool
	seed        uint64
	lockedEvery time.Duration // the locking reader's interval
}

// plainEvery is the plain reader's interval.
const plainEvery = 10 * time.Millisecond

// opEvent is one measured operation, kept for the time series.
type opEvent struct {
	at        time.Time
	lat       time.Duration
	committed bool // else it failed for anything but a business reason
}

// runOne measures one mode on one workload at one worker count.
func runOne(ctx context.Context, spec runSpec, m cmpMode, dbs []*sql.DB, servers []*pgtest.Server) cmpResult {
	res := cmpResult{Workload: spec.w.Name, Mode: spec.mode, Workers: spec.workers, Crash: spec.crash}
	var (
		mu                   sync.Mutex
		firstErr             atomic.Value
		lat, locked, windows []time.Duration
		events               []opEvent
		committed, aborts    atomic.Int64
		errs, never          atomic.Int64
		measuring, stop      atomic.Bool
		wg                   sync.WaitGroup
	)
	opCtx, cancelOps := context.WithCancel(ctx)
	defer cancelOps()
	for i := 0; i < spec.workers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(spec.seed, seed))
			var myLat, myLocked, myWin []time.Duration
			var myEv []opEvent
			for !stop.Load() {
				p := spec.w.plan(r, r.Float64() < spec.failRate)
				t0 := time.Now()
				o := m.op(opCtx, p)
				if !measuring.Load() {
					continue
				}
				now := time.Now()
				switch {
				case o.committed:
					committed.Add(1)
					myLat = append(myLat, now.Sub(t0))
					myEv = append(myEv, opEvent{at: now, lat: now.Sub(t0), committed: true})
				case o.aborted:
					aborts.Add(1)
				default:
					errs.Add(1)
					myEv = append(myEv, opEvent{at: now})
					if o.err != nil {
						firstErr.CompareAndSwap(nil, o.err.Error())
					}
				}
				if o.partial {
					never.Add(1)
				}
				if o.hold > 0 {
					myLocked = append(myLocked, o.hold)
				}
				if !o.first.IsZero() && !o.partial {
					myWin = append(myWin, o.last.Sub(o.first))
				}
			}
			mu.Lock()
			lat, locked, windows = append(lat, myLat...), append(locked, myLocked...), append(windows, myWin...)
			events = append(events, myEv...)
			mu.Unlock()
		}(uint64(i) + 1)
	}
	auditCtx, stopAudit := context.WithCancel(ctx)
	var plain, locking readerStats
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		plain = plainReader(auditCtx, dbs[:spec.w.DBs], spec.w.total(), plainEvery, measuring.Load)
	}()
	go func() {
		defer readers.Done()
		if spec.lockedEvery > 0 {
			locking = lockingReader(auditCtx, dbs[:spec.w.DBs], spec.w.total(), spec.lockedEvery, measuring.Load)
		}
	}()
	time.Sleep(spec.warmup)
	start := time.Now()
	measuring.Store(true)
	if spec.crash {
		victim := servers[min(1, spec.w.DBs-1)]
		time.Sleep(spec.duration / 3)
		res.KillAt = time.Since(start).Seconds()
		if err := victim.Kill(); err != nil {
			res.Note = "crash: " + err.Error()
		}
		time.Sleep(time.Second)
		if err := victim.Restart(ctx); err != nil {
			res.Note = "restart: " + err.Error()
		}
		res.RestartAt = time.Since(start).Seconds()
		time.Sleep(time.Until(start.Add(spec.duration)))
	} else {
		time.Sleep(spec.duration)
	}
	measuring.Store(false)
	elapsed := time.Since(start)
	stop.Store(true)
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		cancelOps()
		<-waited
	}
	stopAudit()
	readers.Wait()

	fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := m.finish(fctx); err != nil {
		res.Note = joinNote(res.Note, "recovery: "+err.Error())
	}
	windows = append(windows, m.windows()...)
	total, left, err := check(fctx, dbs[:spec.w.DBs])
	if err != nil {
		res.Note = joinNote(res.Note, "check: "+err.Error())
	}
	res.FinalDrift = total - spec.w.total()
	res.Leftover = left
	res.InvariantHolds = err == nil && res.FinalDrift == 0 && left == 0

	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	res.Seconds = elapsed.Seconds()
	res.Committed, res.Aborts, res.Errors, res.NeverHealed = committed.Load(), aborts.Load(), errs.Load(), never.Load()
	res.TPS = float64(res.Committed) / elapsed.Seconds()
	if n := res.Committed + res.Aborts + res.Errors; n > 0 {
		res.AbortRate = float64(res.Aborts+res.Errors) / float64(n)
	}
	res.P50, res.P95, res.P99 = pct(lat, 0.50), pct(lat, 0.95), pct(lat, 0.99)
	res.LockedP50, res.LockedP99 = pct(locked, 0.50), pct(locked, 0.99)
	res.InconsistentP50, res.InconsistentP99 = pct(windows, 0.50), pct(windows, 0.99)
	res.Audits, res.Anomalies, res.StableAnomalies = plain.audits, plain.anomalies, plain.stable
	res.AnomalyRate, res.StableRate = ratio(res.Anomalies, res.Audits), ratio(res.StableAnomalies, res.Audits)
	res.LockAudits, res.LockAnomalies, res.LockTimeouts = locking.audits, locking.anomalies, locking.timeouts
	res.LockAnomalyRate = ratio(res.LockAnomalies, res.LockAudits)
	res.LockWaitP50, res.LockWaitP99, res.LockWaitMax = pct(locking.waits, 0.50), pct(locking.waits, 0.99), pct(locking.waits, 1)
	res.SeriesStep, res.Series = series(start, elapsed, events, plain.events, locking.events)
	return res
}

func ratio(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// seriesStep is the width of a time-series bucket for a run of d: about
// 40 buckets, 100 ms to 1 s each.
func seriesStep(d time.Duration) time.Duration {
	return min(max(d/40, 100*time.Millisecond), time.Second)
}

// series buckets a run's operations and reads by when they ended.
func series(start time.Time, elapsed time.Duration, ops []opEvent, plain, locking []readerEvent) (float64, []tick) {
	step := seriesStep(elapsed)
	n := int(elapsed / step) // whole buckets only: a last sliver would read as a drop
	if n == 0 {
		return 0, nil
	}
	ticks := make([]tick, n)
	lats := make([][]time.Duration, n)
	// bucket returns the bucket of at, -1 outside the measured buckets.
	bucket := func(at time.Time) int {
		if k := int(at.Sub(start) / step); at.After(start) && k < n {
			return k
		}
		return -1
	}
	sec := step.Seconds()
	for _, e := range ops {
		k := bucket(e.at)
		if k < 0 {
			continue
		}
		if e.committed {
			ticks[k].OpsPerSec += 1 / sec
			lats[k] = append(lats[k], e.lat)
		} else {
			ticks[k].ErrPerSec += 1 / sec
		}
	}
	for _, e := range plain {
		k := bucket(e.at)
		if k < 0 {
			continue
		}
		if e.anomaly {
			ticks[k].AnomaliesPerSec += 1 / sec
		}
		if e.stable {
			ticks[k].StableAnomaliesPerSec += 1 / sec
		}
	}
	for _, e := range locking {
		// The wait ended when the read did: spread it over the buckets
		// it covered.
		k := bucket(e.at)
		if k < 0 {
			k = n - 1 // its wait may still cover the last buckets
		} else if e.anomaly {
			ticks[k].LockAnomaliesPerSec += 1 / sec
		}
		from := e.at.Add(-e.wait)
		for j := max(bucket(from), 0); j <= k; j++ {
			lo := start.Add(time.Duration(j) * step)
			hi := lo.Add(step)
			if hi.After(e.at) {
				hi = e.at
			}
			if lo.Before(from) {
				lo = from
			}
			if w := hi.Sub(lo); w > 0 {
				ticks[j].LockWaitShare += w.Seconds() / sec
			}
		}
	}
	for k := range ticks {
		ticks[k].T = float64(k) * sec
		ticks[k].P99 = pct(lats[k], 0.99)
		ticks[k].LockWaitShare = min(ticks[k].LockWaitShare, 1)
	}
	return sec, ticks
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// pct returns the q-quantile in milliseconds.
func pct(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q * float64(len(s)-1))
	return float64(s[i].Microseconds()) / 1000
}

// check returns the total balance and how many transactions are left
// prepared.
func check(ctx context.Context, dbs []*sql.DB) (int64, int, error) {
	var total int64
	left := 0
	for _, db := range dbs {
		var s int64
		var n int
		if err := db.QueryRowContext(ctx, `SELECT coalesce(sum(balance), 0) FROM accounts`).Scan(&s); err != nil {
			return 0, 0, err
		}
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()`).Scan(&n); err != nil {
			return 0, 0, err
		}
		total += s
		left += n
	}
	return total, left, nil
}

// lockingCell is the locking reader's reads that saw money missing or
// doubled, of its reads, and its timeouts if any.
func (r cmpResult) lockingCell() string {
	s := fmt.Sprintf("%d/%d", r.LockAnomalies, r.LockAudits)
	if r.LockTimeouts > 0 {
		s += fmt.Sprintf(" (%d timed out)", r.LockTimeouts)
	}
	return s
}

func (r cmpResult) progress() string {
	s := fmt.Sprintf("%.0f ops/s, p99 %.1fms, aborts %.0f%%, plain reader %d/%d off (%d stable), locking reader %s off, invariant %v",
		r.TPS, r.P99, 100*r.AbortRate, r.Anomalies, r.Audits, r.StableAnomalies, r.lockingCell(), r.InvariantHolds)
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}
