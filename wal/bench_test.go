package wal

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
)

// BenchmarkDecisions measures durable COMMIT decisions per second with 1,
// 8 and 64 concurrent writers: with group commit into the journal
// ("group"), with group commit straight into the bbolt file ("no-journal",
// two fdatasyncs per commit instead of one), and with one bbolt commit per
// decision ("fsync-each", the baseline). cpu-µs/decision
// is the whole process's CPU time (user and system, the writers' own work
// included) divided by the decisions made.
func BenchmarkDecisions(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts BoltOptions
	}{
		{"group", BoltOptions{}},
		{"no-journal", BoltOptions{NoJournal: true}},
		{"fsync-each", BoltOptions{NoGroupCommit: true, NoJournal: true}},
	} {
		for _, writers := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d", mode.name, writers), func(b *testing.B) {
				benchDecisions(b, mode.opts, writers)
			})
		}
	}
}

func benchDecisions(b *testing.B, opts BoltOptions, writers int) {
	l, err := OpenBolt(filepath.Join(b.TempDir(), "wal.db"), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	var (
		next    atomic.Int64
		latency atomic.Int64
		wg      sync.WaitGroup
	)
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				id, err := ids.NewTxID()
				if err != nil {
					b.Error(err)
					return
				}
				g, err := ids.NewGID("txc", "bench", id, "b0")
				if err != nil {
					b.Error(err)
					return
				}
				rec := Record{Kind: KindCommit, TxID: id, Branches: []Branch{{Resource: "pg", GID: g}}}
				t0 := time.Now()
				if _, err := l.Append(ctx, rec); err != nil {
					b.Error(err)
					return
				}
				latency.Add(int64(time.Since(t0)))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	s := l.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(float64(cpu)/float64(b.N)/1e3, "cpu-µs/decision")
	b.ReportMetric(float64(latency.Load())/float64(b.N)/1e3, "µs-latency")
	b.ReportMetric(float64(s.Syncs)/float64(b.N), "syncs/decision")
}

// processCPU returns the CPU time (user and system) this process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
