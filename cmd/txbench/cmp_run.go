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
	// The auditor reads every database's total at once, over and over, and
	// counts the reads where money is missing or doubled.
	Audits         int64   `json:"audits"`
	Anomalies      int64   `json:"anomalies"`
	AnomalyRate    float64 `json:"anomaly_rate"`
	InvariantHolds bool    `json:"final_invariant_holds"`
	FinalDrift     int64   `json:"final_drift"`
	Leftover       int     `json:"prepared_left"`
	Note           string  `json:"note,omitempty"`
	FirstError     string  `json:"first_error,omitempty"` // the first operation error that was not a business failure
}

type runSpec struct {
	w        workload
	mode     string
	workers  int
	duration time.Duration
	warmup   time.Duration
	failRate float64
	crash    bool
	seed     uint64
}

// runOne measures one mode on one workload at one worker count.
func runOne(ctx context.Context, spec runSpec, m cmpMode, dbs []*sql.DB, servers []*pgtest.Server) cmpResult {
	res := cmpResult{Workload: spec.w.Name, Mode: spec.mode, Workers: spec.workers, Crash: spec.crash}
	var (
		mu                   sync.Mutex
		firstErr             atomic.Value
		lat, locked, windows []time.Duration
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
			for !stop.Load() {
				p := spec.w.plan(r, r.Float64() < spec.failRate)
				t0 := time.Now()
				o := m.op(opCtx, p)
				if !measuring.Load() {
					continue
				}
				switch {
				case o.committed:
					committed.Add(1)
					myLat = append(myLat, time.Since(t0))
				case o.aborted:
					aborts.Add(1)
				default:
					errs.Add(1)
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
			mu.Unlock()
		}(uint64(i) + 1)
	}
	auditCtx, stopAudit := context.WithCancel(ctx)
	var audits, anomalies atomic.Int64
	auditDone := make(chan struct{})
	go func() {
		defer close(auditDone)
		audit(auditCtx, dbs[:spec.w.DBs], spec.w.total(), &audits, &anomalies)
	}()
	time.Sleep(spec.warmup)
	measuring.Store(true)
	start := time.Now()
	if spec.crash {
		victim := servers[min(1, spec.w.DBs-1)]
		time.Sleep(spec.duration / 3)
		if err := victim.Kill(); err != nil {
			res.Note = "crash: " + err.Error()
		}
		time.Sleep(time.Second)
		if err := victim.Restart(ctx); err != nil {
			res.Note = "restart: " + err.Error()
		}
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
	<-auditDone

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
	res.Audits, res.Anomalies = audits.Load(), anomalies.Load()
	if res.Audits > 0 {
		res.AnomalyRate = float64(res.Anomalies) / float64(res.Audits)
	}
	return res
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

// audit reads the total balance of every database at the same moment
// (one goroutine per database), every few milliseconds, and counts the
// reads whose sum is not the invariant total.
func audit(ctx context.Context, dbs []*sql.DB, want int64, audits, anomalies *atomic.Int64) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	sums := make([]int64, len(dbs))
	errs := make([]error, len(dbs))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for i, db := range dbs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = db.QueryRowContext(ctx, `SELECT coalesce(sum(balance), 0) FROM accounts`).Scan(&sums[i])
			}()
		}
		wg.Wait()
		var total int64
		ok := true
		for i := range dbs {
			if errs[i] != nil {
				ok = false
			}
			total += sums[i]
		}
		if !ok {
			continue
		}
		audits.Add(1)
		if total != want {
			anomalies.Add(1)
		}
	}
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

func (r cmpResult) progress() string {
	s := fmt.Sprintf("%.0f ops/s, p99 %.1fms, aborts %.0f%%, anomalies %d/%d, invariant %v", r.TPS, r.P99, 100*r.AbortRate, r.Anomalies, r.Audits, r.InvariantHolds)
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}
