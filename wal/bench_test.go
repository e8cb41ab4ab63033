package wal

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txcoord/txcoord/participant"
)

// BenchmarkDecisions measures durable COMMIT decisions per second with 1,
// 8 and 64 concurrent writers, with group commit ("group") and with one
// bbolt commit per decision ("fsync-each", the baseline).
func BenchmarkDecisions(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts BoltOptions
	}{
		{"group", BoltOptions{}},
		{"fsync-each", BoltOptions{NoGroupCommit: true}},
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
	start := time.Now()
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				id, err := participant.NewTxID()
				if err != nil {
					b.Error(err)
					return
				}
				g, err := participant.NewGID("txc", "bench", id, "b0")
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
	b.StopTimer()
	s := l.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(float64(latency.Load())/float64(b.N)/1e3, "µs-latency")
	b.ReportMetric(float64(s.Syncs)/float64(b.N), "syncs/decision")
}
