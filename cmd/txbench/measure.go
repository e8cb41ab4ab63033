package main

import (
	"context"
	"database/sql"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// pairedRatio is the median over rounds of a mode's throughput divided by
// plain-2pc's in the same round: the machine's drift (checkpoints, a noisy
// neighbour) hits both runs of a round alike, so the ratio is steadier
// than a ratio of medians. 0 when there is no plain-2pc run.
func pairedRatio(mode, plain []result) float64 {
	if len(plain) != len(mode) || len(plain) == 0 {
		return 0
	}
	ratios := make([]float64, 0, len(mode))
	for i := range mode {
		if plain[i].TPS > 0 {
			ratios = append(ratios, mode[i].TPS/plain[i].TPS)
		}
	}
	if len(ratios) == 0 {
		return 0
	}
	sort.Float64s(ratios)
	return ratios[len(ratios)/2]
}

// median returns the run with the median throughput, with every round's
// throughput attached in round order.
func median(runs []result) result {
	rs := append([]result(nil), runs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].TPS < rs[j].TPS })
	m := rs[len(rs)/2]
	for _, r := range runs {
		m.Rounds = append(m.Rounds, math.Round(r.TPS))
	}
	return m
}

// walSyncs sums pg_stat_wal.wal_sync over the servers: the WAL flushes
// they forced. 0 and false if a server cannot tell. A backend reports its
// counts to pg_stat_wal at most once a second, and an idle one after ten:
// so the pools' idle connections are closed first (a backend reports as
// it exits), which makes the sum exact up to this moment.
func walSyncs(ctx context.Context, dbs []*sql.DB) (int64, bool) {
	for _, d := range dbs {
		d.SetMaxIdleConns(0)
		d.SetMaxIdleConns(benchIdleConns)
	}
	time.Sleep(100 * time.Millisecond) // the backends exit
	var total int64
	for _, d := range dbs {
		var n int64
		if err := d.QueryRowContext(ctx, `SELECT wal_sync FROM pg_stat_wal`).Scan(&n); err != nil {
			return 0, false
		}
		total += n
	}
	return total, true
}

// measure runs op from w workers: warmup, then d measured. syncs counts the
// servers' forced writes so far (walSyncs, say), read with no op running.
func measure(ctx context.Context, w int, warmup, d time.Duration, op func(context.Context, *rand.Rand) error, syncs func(context.Context) (int64, bool)) result {
	var (
		mu        sync.Mutex
		lat       []time.Duration
		errs      int64
		measuring atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		gate      sync.RWMutex // held by each op; the counters are read with no op running
	)
	for i := 0; i < w; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 42))
			var mine []time.Duration
			var myErrs int64
			for {
				gate.RLock()
				if stop.Load() {
					gate.RUnlock()
					break
				}
				t0 := time.Now()
				err := op(ctx, r)
				gate.RUnlock()
				if measuring.Load() {
					if err != nil {
						myErrs++
					} else {
						mine = append(mine, time.Since(t0))
					}
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += myErrs
			mu.Unlock()
		}(uint64(i) + 1)
	}
	time.Sleep(warmup)
	gate.Lock()
	sync0, syncOK := syncs(ctx)
	measuring.Store(true)
	start := time.Now()
	cpu0, cpuOK := busyCPU()
	self0 := selfCPU()
	gate.Unlock()
	time.Sleep(d)
	measuring.Store(false)
	gate.Lock()
	cpu1, _ := busyCPU()
	self1 := selfCPU()
	elapsed := time.Since(start)
	sync1, _ := syncs(ctx)
	stop.Store(true)
	gate.Unlock()
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := result{Workers: w, Done: int64(len(lat)), Errors: errs, TPS: float64(len(lat)) / elapsed.Seconds()}
	if len(lat) > 0 {
		if cpuOK {
			r.CPU = (cpu1 - cpu0) / time.Duration(len(lat))
		}
		r.ClientCPU = (self1 - self0) / time.Duration(len(lat))
		if syncOK {
			r.ForcedWrites = float64(sync1-sync0) / float64(len(lat))
		}
		r.P50 = lat[len(lat)*50/100]
		r.P99 = lat[len(lat)*99/100]
	}
	return r
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fmtRounds(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = strconv.FormatFloat(r, 'f', 0, 64)
	}
	return strings.Join(parts, " ")
}
