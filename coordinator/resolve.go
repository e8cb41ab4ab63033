package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/wal"
)

// Resolution is what a participant holding a prepared branch of a
// transaction should do with it.
type Resolution int

const (
	// Wait: the transaction is still undecided (or its outcome is
	// unknown); ask again later.
	Wait Resolution = iota
	// CommitBranch: COMMIT is logged; the branch must commit.
	CommitBranch
	// RollbackBranch: no COMMIT is logged and the transaction is not being
	// decided, so it aborted (presumed abort), or an abort is logged.
	RollbackBranch
)

func (r Resolution) String() string {
	switch r {
	case CommitBranch:
		return "commit"
	case RollbackBranch:
		return "rollback"
	}
	return "wait"
}

// ResolveBranch tells what the participant holding prepared branch g must
// do with it. A live transaction answers from its state: Wait while it is
// undecided, and a branch that did not join before the decision must roll
// back. Otherwise the log answers: COMMIT for a branch it names, or
// presumed abort (DESIGN I4) for a transaction with no decision record.
// After a failed decision write it answers Wait: the log's contents are
// unknown until a restart.
//
// For a transaction whose decision a holder keeps, the holder answers when
// the log does not: the holder named in g's gid is fenced (so that the
// answer is final), or, for ResolveTx, every holder's rows are read.
func (c *Coordinator) ResolveBranch(ctx context.Context, g ids.GID) (Resolution, error) {
	if !g.Owned(c.cfg.Prefix, c.cfg.ID) {
		return Wait, fmt.Errorf("%w: %s was not issued by coordinator %s.%s", ids.ErrBadGID, g, c.cfg.Prefix, c.cfg.ID)
	}
	return c.resolve(ctx, g.TxID, &g)
}

// ResolveTx is ResolveBranch for any branch that took part in transaction
// id.
func (c *Coordinator) ResolveTx(ctx context.Context, id ids.TxID) (Resolution, error) {
	return c.resolve(ctx, id, nil)
}

func (c *Coordinator) resolve(ctx context.Context, id ids.TxID, g *ids.GID) (Resolution, error) {
	c.mu.Lock()
	t, live := c.live[id]
	failed := c.failed
	c.mu.Unlock()
	if live {
		t.mu.Lock()
		finishing, state := t.finishing, t.state
		if t.m != nil {
			state = t.m.State()
		}
		member := g == nil
		for _, b := range t.branches {
			if g != nil && b.GID() == *g {
				member = true
			}
		}
		t.mu.Unlock()
		switch {
		case !finishing:
			return Wait, nil
		case state == protocol.StateCommitting || state == protocol.StateCommitted:
			if member {
				return CommitBranch, nil
			}
			return RollbackBranch, nil
		case state == protocol.StateAborting || state == protocol.StateAborted:
			return RollbackBranch, nil
		case state == protocol.StatePreparing && !member:
			return RollbackBranch, nil
		}
		return Wait, nil
	}
	d, err := c.log.Lookup(id)
	switch {
	case err == nil && d.Kind == wal.KindCommit:
		if g == nil {
			return CommitBranch, nil
		}
		for _, b := range d.Branches {
			if b.GID == *g {
				return CommitBranch, nil
			}
		}
		return RollbackBranch, nil
	case err == nil:
		return RollbackBranch, nil
	case errors.Is(err, wal.ErrNotFound):
		if failed != nil {
			return Wait, nil
		}
		res, found, herr := c.resolveHeld(ctx, id, g)
		if herr != nil {
			return Wait, herr
		}
		if found {
			return res, nil
		}
		if g == nil && c.Forgotten(id) {
			// A COMMIT ended long ago may have been compacted away. (A
			// participant asking about a branch it still holds prepared
			// can rely on presumed abort: END needs every branch's
			// acknowledgement.)
			return Wait, nil
		}
		return RollbackBranch, nil
	}
	return Wait, err
}

// Forgotten reports whether transaction id began so long ago that a
// finished decision for it may have been compacted out of the log (see
// Config.KeepEnded): its absence from the log no longer means it aborted.
func (c *Coordinator) Forgotten(id ids.TxID) bool {
	t := id.Time()
	// The log's horizon covers compactions made with a shorter keep
	// period than this run's (txctl wal compact --keep, a past setting).
	return t.IsZero() || t.Before(time.Now().Add(-c.cfg.KeepEnded)) || !t.After(c.log.Horizon())
}
