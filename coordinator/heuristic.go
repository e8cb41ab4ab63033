package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/wal"
)

var (
	// ErrLive: the transaction is live in this run; only its caller (or a
	// rollback) may finish it.
	ErrLive = errors.New("coordinator: the transaction is live")
	// ErrNothingPrepared: no resource holds a prepared branch of the
	// transaction, so there is nothing to commit.
	ErrNothingPrepared = errors.New("coordinator: no prepared branch of the transaction was found")
)

// BranchResult is what happened to one branch of a resolution.
type BranchResult struct {
	Resource string
	GID      ids.GID
	Err      error // nil: done (or already finished)
}

// Resolution report of ResolveHeuristic.
type HeuristicReport struct {
	Decision wal.Kind
	// Heuristic is true when this call logged the decision; false when it
	// drove a decision that was already logged.
	Heuristic bool
	Branches  []BranchResult
	Ended     bool // every branch is finished and END is written
}

// PreparedBranches finds the prepared branches of transaction id at every
// registered resource (this coordinator's gids only), with when each was
// prepared. Resources that cannot be asked are returned as errors.
func (c *Coordinator) PreparedBranches(ctx context.Context, id ids.TxID) ([]PreparedBranch, []error) {
	var out []PreparedBranch
	var errs []error
	for _, r := range c.resourceList() {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		list, err := r.Prepared(cctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name(), err))
			continue
		}
		for _, p := range list {
			if p.GID.TxID == id && p.GID.Owned(c.cfg.Prefix, c.cfg.ID) {
				out = append(out, PreparedBranch{Resource: r.Name(), GID: p.GID, Since: p.Since})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GID.String() < out[j].GID.String() })
	return out, errs
}

// PreparedBranch is a prepared branch found at a resource.
type PreparedBranch struct {
	Resource string
	GID      ids.GID
	Since    time.Time
}

// ResolveHeuristic drives transaction id to commit or abort on an
// operator's order. No recovery pass runs meanwhile.
//
//   - A logged decision is driven if it is the one asked for; a
//     contradicting order fails with wal.ErrConflict (DESIGN I3).
//   - A live transaction is refused (ErrLive).
//   - Otherwise the prepared branches of id are found at every resource,
//     the order is logged as a heuristic decision (who, why, when, and the
//     branches), and carried out. A commit with no prepared branch found
//     fails with ErrNothingPrepared; an abort with none logs nothing.
func (c *Coordinator) ResolveHeuristic(ctx context.Context, id ids.TxID, commit bool, who, why string) (*HeuristicReport, error) {
	if why == "" {
		return nil, fmt.Errorf("%w: a heuristic decision needs a reason", ErrConfig)
	}
	unlock, err := c.lockPass("heuristic decision")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c.isLive(id) {
		return nil, fmt.Errorf("%w: %s", ErrLive, id)
	}
	want := wal.KindAbort
	if commit {
		want = wal.KindCommit
	}
	rep := &HeuristicReport{Decision: want}
	var branches []wal.Branch
	d, err := c.log.Lookup(id)
	switch {
	case err == nil:
		if d.Kind != want {
			return nil, fmt.Errorf("%w: %s has %s logged at %s", wal.ErrConflict, id, d.Kind, d.Time.Format(time.RFC3339))
		}
		branches = d.Branches
	case errors.Is(err, wal.ErrNotFound):
		found, errs := c.PreparedBranches(ctx, id)
		if len(errs) > 0 {
			// A resource we cannot ask may hold a branch: deciding
			// without it could split the transaction.
			return nil, fmt.Errorf("coordinator: cannot ask every resource for branches of %s: %w", id, errors.Join(errs...))
		}
		if len(found) == 0 {
			if commit {
				return nil, fmt.Errorf("%w: %s", ErrNothingPrepared, id)
			}
			rep.Ended = true
			return rep, nil
		}
		for _, f := range found {
			branches = append(branches, wal.Branch{Resource: f.Resource, GID: f.GID})
		}
		rec := wal.Record{Kind: want, TxID: id, Time: time.Now().UTC(), Epoch: c.log.Epoch(), Branches: branches, Heuristic: true, Who: who, Why: why}
		if _, err := c.log.Append(ctx, rec); err != nil {
			if logFailure(err) {
				c.fail(err)
			}
			return nil, fmt.Errorf("coordinator: log the heuristic decision for %s: %w", id, err)
		}
		rep.Heuristic = true
		c.logger.Warn("heuristic decision logged", "txid", id, "decision", want, "who", who, "why", why, "branches", len(branches))
	default:
		return nil, err
	}
	done := true
	for _, b := range branches {
		res := BranchResult{Resource: b.Resource, GID: b.GID}
		r, ok := c.Resource(b.Resource)
		if !ok {
			res.Err = fmt.Errorf("%w: %q", ErrUnknownResource, b.Resource)
		} else {
			cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
			if commit {
				res.Err = r.Commit(cctx, b.GID)
			} else {
				res.Err = r.Rollback(cctx, b.GID)
			}
			cancel()
			if errors.Is(res.Err, participant.ErrUnknownBranch) {
				res.Err = nil // finished before (I6)
			}
		}
		if res.Err != nil {
			done = false
		}
		rep.Branches = append(rep.Branches, res)
	}
	if done {
		if err := c.log.End(id); err != nil {
			return rep, fmt.Errorf("coordinator: end %s: %w", id, err)
		}
		rep.Ended = true
	}
	return rep, nil
}
