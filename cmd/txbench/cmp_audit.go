package main

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync"
	"time"
)

// The two readers of a compare run. Both read the total balance of every
// database over and over and count the reads where money is missing or
// doubled; they differ in what an ordinary application read can see.

// readerEvent is one read of a reader, kept for the time series.
type readerEvent struct {
	at      time.Time
	anomaly bool
	stable  bool          // plain reader: the partial state read the same twice
	wait    time.Duration // locking reader: the time spent waiting for locks
}

// readerStats is what one reader saw over a run.
type readerStats struct {
	audits, anomalies, stable, timeouts int64
	waits                               []time.Duration
	events                              []readerEvent
}

// plainRead is an ordinary read: one query per database, in parallel, each
// in its own transaction (as a service reading its own database would).
// It fills sums and reports whether every query answered.
func plainRead(ctx context.Context, dbs []*sql.DB, sums []int64) bool {
	errs := make([]error, len(dbs))
	var wg sync.WaitGroup
	for i, db := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.QueryRowContext(ctx, sumSQL).Scan(&sums[i])
		}()
	}
	wg.Wait()
	return errors.Join(errs...) == nil
}

const sumSQL = `SELECT coalesce(sum(balance), 0) FROM accounts`

func total(sums []int64) int64 {
	var t int64
	for _, s := range sums {
		t += s
	}
	return t
}

// plainReader reads every interval until ctx ends. After a read whose
// total is off it reads again at once, and counts the read as stable when
// the second read is off by the same amount: the partial state lasted at
// least as long as a read, as a saga's steps or a 2PC's phase two can
// (or, by chance, both reads raced commits between their own queries
// the same way). A read off only once most likely raced a commit between
// its own queries.
func plainReader(ctx context.Context, dbs []*sql.DB, want int64, every time.Duration, measuring func() bool) readerStats {
	var st readerStats
	t := time.NewTicker(every)
	defer t.Stop()
	a, b := make([]int64, len(dbs)), make([]int64, len(dbs))
	for {
		select {
		case <-ctx.Done():
			return st
		case <-t.C:
		}
		if !plainRead(ctx, dbs, a) || !measuring() {
			continue
		}
		ev := readerEvent{at: time.Now()}
		st.audits++
		if off := total(a) - want; off != 0 {
			st.anomalies++
			ev.anomaly = true
			if plainRead(ctx, dbs, b) && total(b)-want == off {
				st.stable++
				ev.stable = true
			}
		}
		st.events = append(st.events, ev)
	}
}

// lockingTimeout bounds how long the locking reader waits for one lock
// (a prepared branch whose database is down holds its locks until
// recovery ends it): past it the read gives up and counts as a timeout.
const lockingTimeout = 2 * time.Second

// lockOrder is the order the locking reader takes its locks in: the order
// every operation's steps take theirs (databases 2 to N, then the paying
// database 1), so that the reader holding one database's lock never
// waits for an operation that waits for it.
func lockOrder(n int) []int {
	order := make([]int, 0, n)
	for i := 1; i < n; i++ {
		order = append(order, i)
	}
	return append(order, 0)
}

// lockingRead reads every database's total in one transaction per
// database, all held open until every database was read. Each first takes
// a SHARE lock on the accounts table: the whole-table form of SELECT ...
// FOR SHARE, it waits for the writers in flight, prepared branches among
// them, and holds new writers off until the read ends. It returns the
// totals, the time spent waiting for locks, and whether the read gave up
// on a lock.
func lockingRead(ctx context.Context, dbs []*sql.DB, sums []int64) (wait time.Duration, timedOut bool, err error) {
	var txs []*sql.Tx
	defer func() {
		for _, tx := range txs {
			_ = tx.Rollback() // it only read
		}
	}()
	for _, i := range lockOrder(len(dbs)) {
		tx, err := dbs[i].BeginTx(ctx, nil)
		if err != nil {
			return wait, false, err
		}
		txs = append(txs, tx)
		t0 := time.Now()
		_, err = tx.ExecContext(ctx, "SET LOCAL lock_timeout = '"+strconv.Itoa(int(lockingTimeout/time.Millisecond))+"ms'; LOCK TABLE accounts IN SHARE MODE")
		wait += time.Since(t0)
		if err != nil {
			return wait, isLockTimeout(err), err
		}
		if err := tx.QueryRowContext(ctx, sumSQL).Scan(&sums[i]); err != nil {
			return wait, false, err
		}
	}
	return wait, false, nil
}

// isLockTimeout reports whether err is PostgreSQL's lock_not_available
// (55P03), what lock_timeout raises.
func isLockTimeout(err error) bool {
	var c interface{ SQLState() string }
	return errors.As(err, &c) && c.SQLState() == "55P03"
}

// lockingReader runs lockingRead every interval until ctx ends.
func lockingReader(ctx context.Context, dbs []*sql.DB, want int64, every time.Duration, measuring func() bool) readerStats {
	var st readerStats
	t := time.NewTicker(every)
	defer t.Stop()
	sums := make([]int64, len(dbs))
	for {
		select {
		case <-ctx.Done():
			return st
		case <-t.C:
		}
		wait, timedOut, err := lockingRead(ctx, dbs, sums)
		if !measuring() {
			continue
		}
		ev := readerEvent{at: time.Now(), wait: wait}
		st.waits = append(st.waits, wait)
		switch {
		case timedOut:
			st.timeouts++
		case err == nil:
			st.audits++
			if total(sums) != want {
				st.anomalies++
				ev.anomaly = true
			}
		}
		st.events = append(st.events, ev)
	}
}
