package kv

import (
	"context"
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/internal/failpoint"
)

// Writes from concurrent callers share one bbolt write transaction, and so
// one fsync. The first caller to find no transaction running leads: it takes
// every queued write, runs them in one Update, reports to each, and hands
// the lead to the first caller that queued meanwhile. A lone caller runs its
// write at once, with no timer.

// writeKind selects the crash points around a write.
type writeKind int

const (
	writePrepare writeKind = 1 + iota
	writeCommit
	writeOther
)

// effects are the in-memory changes that go with a write. The apply
// function makes them at once when they must be seen by later writes of the
// same transaction, and then returns onFail to take them back; onCommit
// runs after the transaction is durable.
type effects struct {
	onCommit func()
	onFail   func()
}

// applyFunc performs one caller's write inside the shared transaction. It
// either succeeds, or refuses (returns an error) having changed neither tx
// nor memory. A bbolt error from a write it has begun must be returned as a
// *txError: it fails the whole shared transaction.
type applyFunc func(tx *bolt.Tx) (effects, error)

// txError carries a bbolt error that fails the shared transaction.
type txError struct{ err error }

func (e *txError) Error() string { return e.err.Error() }
func (e *txError) Unwrap() error { return e.err }

// failTx wraps a bbolt write error so that it fails the shared transaction.
func failTx(err error) error {
	if err == nil {
		return nil
	}
	return &txError{err: err}
}

// pending is one queued write.
type pending struct {
	kind  writeKind
	apply applyFunc
	eff   effects
	err   error
	// finished is set before wake is signalled for the last time; a wake
	// without finished hands this caller the lead.
	finished bool
	wake     chan struct{}
}

// group serialises writes to one bbolt file and shares fsyncs among them.
type group struct {
	db *bolt.DB

	mu      sync.Mutex
	queue   []*pending
	leading bool
}

// submit runs apply in a write transaction shared with concurrent callers
// and returns once that transaction is durable or has failed. ctx is checked
// before the write is queued; once queued, the write runs.
func (g *group) submit(ctx context.Context, kind writeKind, apply applyFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &pending{kind: kind, apply: apply, wake: make(chan struct{}, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, p)
	if g.leading {
		g.mu.Unlock()
		<-p.wake
		if p.finished {
			return p.err
		}
	} else {
		g.leading = true
		g.mu.Unlock()
	}
	// This caller leads, and its write is still queued.
	g.mu.Lock()
	batch := g.queue
	g.queue = nil
	g.mu.Unlock()

	g.run(batch)

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].wake <- struct{}{}
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	for _, q := range batch {
		if q != p {
			q.finished = true
			q.wake <- struct{}{}
		}
	}
	return p.err
}

// run performs batch in one Update and sets each write's error.
func (g *group) run(batch []*pending) {
	for _, p := range batch {
		switch p.kind {
		case writePrepare:
			failpoint.Hit(failpoint.KVBeforePrepare)
		case writeCommit:
			failpoint.Hit(failpoint.KVBeforeCommit)
		}
	}
	var undo []func()
	err := g.db.Update(func(tx *bolt.Tx) error {
		for _, p := range batch {
			eff, err := p.apply(tx)
			var fatal *txError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			p.eff, p.err = eff, err
			if err == nil && eff.onFail != nil {
				undo = append(undo, eff.onFail)
			}
		}
		return nil
	})
	if err != nil {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			err = ErrClosed
		} else {
			err = fmt.Errorf("kv: write transaction failed: %w", err)
		}
		for _, p := range batch {
			p.err = err
		}
		return
	}
	for _, p := range batch {
		if p.err != nil {
			continue
		}
		switch p.kind {
		case writePrepare:
			failpoint.Hit(failpoint.KVAfterPrepare)
		case writeCommit:
			failpoint.Hit(failpoint.KVAfterCommit)
		}
		if p.eff.onCommit != nil {
			p.eff.onCommit()
		}
	}
}
