package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/recovery"
	"github.com/txcoord/txcoord/wal"
)

var (
	// ErrLive: the transaction is live in this run; only its caller (or a
	// rollback) may finish it.
	ErrLive = errors.New("coordinator: the transaction is live")
	// ErrPresumedAborted: a forced COMMIT of a transaction that presumed
	// abort has decided: this log holds no COMMIT for it and no holder
	// keeps one, and its caller may have been told it aborted (I3, I5).
	ErrPresumedAborted = errors.New("coordinator: presumed abort has decided the transaction; a forced commit would contradict it")
	// ErrNothingPrepared: no resource holds a prepared branch of the
	// transaction, so there is nothing to commit.
	ErrNothingPrepared = errors.New("coordinator: no prepared branch of the transaction was found")
)

// BranchResult is what happened to one branch of a resolution.
type BranchResult struct {
	Resource string
	GID      ids.GID
	Err      error // nil: done (or already finished)
	// Hazard: the branch was not prepared and nothing proves it committed;
	// with AcceptHazard it counts as done (Err nil), otherwise Err wraps
	// ErrHeuristicHazard.
	Hazard bool
}

// ResolveOption changes how ResolveHeuristic carries out an order.
type ResolveOption func(*resolveOptions)

type resolveOptions struct{ acceptHazard bool }

// AcceptHazard lets a commit end a transaction some of whose branches are
// heuristic hazards (not prepared, and nothing proves they committed): the
// operator has checked those branches' databases. Without it such a
// transaction stays unfinished.
func AcceptHazard() ResolveOption { return func(o *resolveOptions) { o.acceptHazard = true } }

// Resolution report of ResolveHeuristic.
type HeuristicReport struct {
	Decision wal.Kind
	// Heuristic is true when this call logged the decision; false when it
	// drove a decision that was already logged.
	Heuristic bool
	Branches  []BranchResult
	Ended     bool // every branch is finished and END is written
	// Holder names the decision holder whose row decided, when the
	// branches' gids name one and the log has no decision: the order was
	// carried out only because it agrees with that row.
	Holder string
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
//   - Otherwise the prepared branches of id are found at every resource.
//     When their gids name a decision holder, the holder decides: it is
//     fenced (so that a commit still in flight is settled), and an order
//     that contradicts its row fails with wal.ErrConflict (I3); one that
//     agrees is carried out, and nothing is logged as heuristic.
//   - Otherwise presumed abort decides: a commit is refused
//     (ErrPresumedAborted), unless the transaction began before the log
//     was created (its decision may be in a lost log: only then is a
//     commit by hand not a contradiction). An order carried out is logged
//     as a heuristic decision (who, why, when, and the branches). A commit
//     with no prepared branch found fails with ErrNothingPrepared; an
//     abort with none logs nothing.
func (c *Coordinator) ResolveHeuristic(ctx context.Context, id ids.TxID, commit bool, who, why string, opts ...ResolveOption) (*HeuristicReport, error) {
	var o resolveOptions
	for _, opt := range opts {
		opt(&o)
	}
	if why == "" {
		return nil, fmt.Errorf("%w: a heuristic decision needs a reason", ErrConfig)
	}
	unlock, err := c.lockPass(ctx, "heuristic decision")
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
		if len(found) == 0 && commit && o.acceptHazard {
			// A hazard whose decision a holder keeps: every branch that
			// could be committed was, so none is prepared.
			if name, hd, err := c.HeldDecision(ctx, id, ""); err == nil && hd.Outcome == participant.OutcomeCommit {
				h, _ := c.decisionHolder(name)
				return c.resolveAtHolder(ctx, id, commit, true, h, name, nil, rep, who, why)
			}
		}
		if len(found) == 0 {
			if commit {
				return nil, fmt.Errorf("%w: %s", ErrNothingPrepared, id)
			}
			rep.Ended = true
			return rep, nil
		}
		if h, name, ok := c.holderOfAny(found); ok {
			return c.resolveAtHolder(ctx, id, commit, o.acceptHazard, h, name, found, rep, who, why)
		}
		if commit && !recovery.BeganBeforeLog(id, c.logCreated()) {
			// The log was there when the transaction began and holds no
			// COMMIT: it aborted. Only a transaction older than the log,
			// whose decision may be in a lost one, may be committed by
			// hand.
			return nil, fmt.Errorf("%w: the log holds no COMMIT for %s and it began after the log was created (%s): it aborted, and its client may have been told so",
				ErrPresumedAborted, id, c.logCreated().Format(time.RFC3339))
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
	done := c.drive(ctx, commit, branches, rep, o.acceptHazard)
	if done {
		if err := c.log.End(id); err != nil {
			return rep, fmt.Errorf("coordinator: end %s: %w", id, err)
		}
		rep.Ended = true
		c.endedByHand(id, rep, who, why, true)
	}
	return rep, nil
}

// endedByHand records an operator's end of transaction id: accepted
// hazards are logged with who and why, and, if forgetProofs, the
// branches' proofs are queued for deletion.
func (c *Coordinator) endedByHand(id ids.TxID, rep *HeuristicReport, who, why string, forgetProofs bool) {
	var regs []participant.Resource
	var gids []ids.GID
	for _, b := range rep.Branches {
		if b.Hazard {
			c.logger.Warn("heuristic hazard accepted by an operator; the transaction is ended", "txid", id, "resource", b.Resource, "gid", b.GID, "who", who, "why", why)
		}
		if r, ok := c.Resource(b.Resource); ok && rep.Decision == wal.KindCommit {
			regs, gids = append(regs, r), append(gids, b.GID)
		}
	}
	c.hazardEnded(id)
	if forgetProofs {
		c.forgetter.add(nil, id, regs, gids)
	}
}

// drive commits or rolls back branches on an operator's order and reports
// whether every one is finished. A commit that finds a branch not prepared
// and unproven is a hazard, finished only if acceptHazard.
func (c *Coordinator) drive(ctx context.Context, commit bool, branches []wal.Branch, rep *HeuristicReport, acceptHazard bool) bool {
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
			switch {
			case !errors.Is(res.Err, participant.ErrUnknownBranch):
			case !commit:
				res.Err = nil // rolled back before (presumed abort)
			case acceptHazard:
				res.Err, res.Hazard = nil, true
			default:
				res.Hazard = true
				res.Err = fmt.Errorf("%w: %w", ErrHeuristicHazard, res.Err)
			}
		}
		if res.Err != nil {
			done = false
		}
		rep.Branches = append(rep.Branches, res)
	}
	return done
}

// HeldConflictError refuses an operator's order that contradicts the
// decision a holder keeps (DESIGN I3). It wraps wal.ErrConflict, as a
// refusal that contradicts the log does.
type HeldConflictError struct {
	Holder string
	TxID   ids.TxID
	Held   participant.Outcome
	Since  time.Time
}

func (e *HeldConflictError) Error() string {
	other := "commit"
	if e.Held == participant.OutcomeCommit {
		other = "abort"
	}
	return fmt.Sprintf("coordinator: decision holder %s keeps %v for %s (since %s); a forced %s would contradict it",
		e.Holder, e.Held, e.TxID, e.Since.Format(time.RFC3339), other)
}

// Unwrap makes errors.Is(err, wal.ErrConflict) true.
func (e *HeldConflictError) Unwrap() error { return wal.ErrConflict }

// holderOfAny returns the decision holder the gids of found name, if any.
func (c *Coordinator) holderOfAny(found []PreparedBranch) (participant.DecisionHolder, string, bool) {
	for _, f := range found {
		if h, name, ok := c.holderOf(f.GID); ok {
			return h, name, true
		}
	}
	return nil, "", false
}

// resolveAtHolder carries out an operator's order for a transaction whose
// decision holder keeps the decision, if the holder's row agrees with it.
func (c *Coordinator) resolveAtHolder(ctx context.Context, id ids.TxID, commit, acceptHazard bool, h participant.DecisionHolder, name string, found []PreparedBranch, rep *HeuristicReport, who, why string) (*HeuristicReport, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: the branches of %s name decision holder %q, which is not registered here; its row decides", ErrUnknownResource, id, name)
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	got, err := h.Fence(cctx, c.owner(), []ids.TxID{id})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("coordinator: cannot ask decision holder %s about %s, whose row decides it: %w", name, id, err)
	}
	d := got[id]
	held := d.Outcome == participant.OutcomeCommit
	if held != commit {
		return nil, &HeldConflictError{Holder: name, TxID: id, Held: d.Outcome, Since: d.Time}
	}
	rep.Holder = name
	var branches []wal.Branch
	if commit {
		// Every branch the row names: those committed before answer so,
		// and one neither prepared nor proven is a hazard.
		for _, b := range d.Branches {
			branches = append(branches, wal.Branch{Resource: b.Resource, GID: b.GID})
		}
	} else {
		for _, f := range found {
			branches = append(branches, wal.Branch{Resource: f.Resource, GID: f.GID})
		}
	}
	c.logger.Warn("operator's order carried out as the decision holder's row says", "txid", id, "holder", name, "decision", d.Outcome)
	if !c.drive(ctx, commit, branches, rep, acceptHazard) {
		return rep, nil
	}
	if commit {
		all := make([]wal.Branch, 0, len(d.Branches))
		for _, b := range d.Branches {
			all = append(all, wal.Branch{Resource: b.Resource, GID: b.GID})
		}
		if err := noteHeld(c.log, name, id, d.Epoch, all); err != nil {
			return rep, fmt.Errorf("coordinator: note %s: %w", id, err)
		}
		if err := c.log.Flush(ctx); err != nil {
			return rep, fmt.Errorf("coordinator: note %s: %w", id, err)
		}
	}
	forgot := true
	if err := h.Forget(ctx, []ids.TxID{id}); err != nil {
		// The row stays, and with it the proofs its redrive needs.
		forgot = false
		c.logger.Warn("holder row kept; recovery forgets it", "txid", id, "holder", name, "err", err)
	}
	rep.Ended = true
	c.endedByHand(id, rep, who, why, forgot)
	return rep, nil
}
