package wal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
)

type dup struct{ r, of *request }

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
	if (len(b.ends) > 0 || len(b.migr) > 0) && b.failed == nil {
		b.watchEndsLocked()
	}
	b.idle.Broadcast()
	b.mu.Unlock()
}

// queueLazyLocked queues a record that waits for the next sync (an END, or
// a noted decision). b.mu is held.
func (b *Bolt) queueLazyLocked(lsn uint64, txid ids.TxID, val []byte) {
	if len(b.ends) == 0 && len(b.migr) == 0 {
		b.endsSince = time.Now()
	}
	b.ends = append(b.ends, pendingEnd{lsn: lsn, txid: txid, val: val})
	b.watchEndsLocked()
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
		if len(b.ends) == 0 && len(b.migr) == 0 || b.failed != nil {
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
			if kind, lsn, ok := b.decidedLocked(r.rec.TxID); ok {
				lsn, err := existing(kind, lsn, &r.rec)
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
	// The file takes what waits for it (the journal's decisions, END
	// records, noted decisions) when it is due, asked for, or when there is
	// no journal; otherwise the decisions go to the journal alone.
	lazyDue := (len(b.ends) > 0 || len(b.migr) > 0) && time.Since(b.endsSince) >= b.opts.EndFlushDelay
	toFile := b.j == nil || final || lazyDue || len(flushes) > 0 || len(compacts) > 0
	hook := b.writeHook
	b.mu.Unlock()

	var err error
	journaled := false
	if !toFile && len(appends) > 0 {
		start := time.Now()
		err = b.writeJournal(hook, appends)
		switch {
		case err == nil:
			journaled = true
			if b.opts.OnSync != nil {
				b.opts.OnSync(len(appends), 0, time.Since(start))
			}
		case errors.Is(err, errJournalFull):
			toFile, err = true, nil
		}
	}
	var ends, migr []pendingEnd
	if toFile && err == nil {
		b.mu.Lock()
		ends, b.ends = b.ends, nil
		migr, b.migr = b.migr, nil
		b.mu.Unlock()
		if len(appends) > 0 || len(ends) > 0 || len(migr) > 0 {
			start := time.Now()
			err = b.write(hook, appends, migr, ends)
			if err == nil {
				if b.j != nil {
					b.j.reset()
				}
				if b.opts.OnSync != nil {
					b.opts.OnSync(len(appends), len(ends), time.Since(start))
				}
			}
		}
	}

	b.mu.Lock()
	if err != nil {
		b.failed = fmt.Errorf("%w: %s: %w", ErrFailed, b.path, err)
		err = b.failed
	} else if len(appends) > 0 || len(ends) > 0 || len(migr) > 0 {
		for _, r := range appends {
			b.byTx[r.rec.TxID] = &Decision{Record: r.rec}
		}
		if journaled {
			if len(b.ends) == 0 && len(b.migr) == 0 {
				b.endsSince = time.Now()
			}
			for _, r := range appends {
				b.migr = append(b.migr, pendingEnd{lsn: r.rec.LSN, txid: r.rec.TxID, val: r.val})
			}
		}
		// An ended transaction whose END (or noted decision) is now in
		// the file is read from there when asked for.
		for _, e := range ends {
			if d, ok := b.byTx[e.txid]; ok && d.Ended && d.EndLSN == e.lsn {
				b.onDisk[e.txid] = endedRef{lsn: d.LSN, endLSN: d.EndLSN, endTime: unixNano(d.EndTime), kind: d.Kind}
				delete(b.byTx, e.txid)
			}
		}
		b.stats.Appends += uint64(len(appends))
		b.stats.Ends += uint64(len(ends))
		// One durable write: the journal's, or the file's.
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

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// writeJournal makes decisions durable in the journal: one write, one
// fdatasync.
func (b *Bolt) writeJournal(hook func() error, appends []*request) error {
	failpoint.Hit(failpoint.WALBeforeSync)
	if hook != nil {
		if err := hook(); err != nil {
			return err
		}
	}
	if err := b.j.write(appends); err != nil {
		return err
	}
	failpoint.Hit(failpoint.WALAfterSync)
	return nil
}

// write stores decisions, the journal's decisions (migr) and END records
// in one bbolt commit. Decisions that did not go to the journal pass the
// crash points of a durable decision write; the journal's pass those of
// moving them to the file.
func (b *Bolt) write(hook func() error, appends []*request, migr, ends []pendingEnd) error {
	if len(appends) > 0 {
		failpoint.Hit(failpoint.WALBeforeSync)
	}
	if len(migr) > 0 {
		failpoint.Hit(failpoint.WALBeforeMove)
	}
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
		for _, m := range migr {
			if err := lb.Put(u64(m.lsn), m.val); err != nil {
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
	if len(migr) > 0 {
		failpoint.Hit(failpoint.WALAfterMove)
	}
	if len(appends) > 0 {
		failpoint.Hit(failpoint.WALAfterSync)
	}
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
	horizon := b.horizon
	for id, d := range b.byTx {
		if d.Ended && d.EndTime.Before(before) {
			victims = append(victims, victim{id, d.LSN, d.EndLSN})
			gone[d.EndLSN] = true
			if d.EndTime.After(horizon) {
				horizon = d.EndTime
			}
		}
	}
	for id, r := range b.onDisk {
		if t := r.endTimeUTC(); t.Before(before) {
			victims = append(victims, victim{id, r.lsn, r.endLSN})
			if t.After(horizon) {
				horizon = t
			}
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
		// What began before the horizon may have had a decision that is
		// gone now: it must read as forgotten, never as aborted.
		if err := tx.Bucket(bucketMeta).Put(keyHorizon, u64(uint64(horizon.UnixNano()))); err != nil {
			return err
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
		delete(b.onDisk, v.id)
	}
	b.horizon = horizon
	b.stats.Compacted += uint64(len(victims))
	b.stats.Syncs++
	return len(victims), nil
}
