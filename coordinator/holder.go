package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/wal"
)

// A decision holder is a resource that keeps the commit decisions of the
// transactions that have a branch at it in its own database
// (participant.DecisionHolder; a PostgreSQL resource can). Such a
// transaction prepares its other branches, then the holder branch inserts
// the decision row and commits in one phase: that commit is the commit
// point, and nothing is forced to the coordinator's log. Every branch's gid
// names the holder (ids.HolderBranch), so recovery finds the decision
// without the log. A transaction without a branch at its holder, or with a
// branch joined by a remote participant whose gid does not name the holder,
// takes the logged path.

// TxOption changes how one transaction is run.
type TxOption func(*txOptions)

type txOptions struct {
	holder   string
	noHolder bool
}

// WithHolder makes the registered resource named name the transaction's
// decision holder, overriding Config.Holder.
func WithHolder(name string) TxOption {
	return func(o *txOptions) { o.holder, o.noHolder = name, false }
}

// WithoutHolder runs the transaction on the logged path even when
// Config.Holder names a holder.
func WithoutHolder() TxOption {
	return func(o *txOptions) { o.holder, o.noHolder = "", true }
}

// decisionHolder returns the registered resource name as a decision
// holder, or an error saying why it cannot be one.
func (c *Coordinator) decisionHolder(name string) (participant.DecisionHolder, error) {
	r, ok := c.Resource(name)
	if !ok {
		return nil, fmt.Errorf("%w: decision holder %q is not a registered resource", ErrUnknownResource, name)
	}
	h, ok := r.(participant.DecisionHolder)
	if !ok {
		return nil, fmt.Errorf("%w: resource %q (%T) cannot hold decisions; a PostgreSQL resource can", ErrConfig, name, r)
	}
	if err := ids.ValidateHolderName(name); err != nil {
		return nil, fmt.Errorf("%w: decision holder %q goes into every gid: %v", ErrConfig, name, err)
	}
	return h, nil
}

// owner is how the holders' rows name this coordinator.
func (c *Coordinator) owner() string { return c.cfg.Prefix + "." + c.cfg.ID }

// holderDecision is the row a holder commits for t, naming the prepared
// branches.
func (d *driver) holderDecision(branches []int) participant.Decision {
	t, c := d.t, d.t.c
	dec := participant.Decision{TxID: t.id, Owner: c.owner(), Outcome: participant.OutcomeCommit, Epoch: c.log.Epoch()}
	for _, i := range branches {
		dec.Branches = append(dec.Branches, participant.BranchRef{Resource: d.regs[i].Name(), GID: d.branches[i].GID()})
	}
	return dec
}

// forgetter deletes, in batches and off the commit path, the rows of
// decisions whose every branch finished and the proofs (markers) of the
// branches of ended transactions. Before it deletes anything it makes the
// log's notes and END records durable (one log flush per batch): "what
// happened to transaction X" is still answered once a row is gone, and no
// recovery pass asks for a commit whose proof is gone. A transaction's
// proofs go only after its holder's row: while the row is there, recovery
// drives its commit again and needs them.
type forgetter struct {
	c        *Coordinator
	interval time.Duration

	mu    sync.Mutex
	items []forgetItem
	n     int
	kick  chan struct{}
}

// forgetItem is one finished transaction: its holder's row (h, if any)
// and the proofs of its branches (gids[i] at regs[i]).
type forgetItem struct {
	h    participant.DecisionHolder
	txid ids.TxID
	regs []participant.Resource
	gids []ids.GID
}

// forgetBatch is how many queued rows and proofs make the forgetter run
// before its interval is up.
const forgetBatch = 1024

func newForgetter(c *Coordinator, interval time.Duration) *forgetter {
	return &forgetter{c: c, interval: interval, kick: make(chan struct{}, 1)}
}

// add queues txid's row at h (if h is not nil) and the proofs of gids at
// the resources that keep them (regs[i] for gids[i]) for deletion.
func (f *forgetter) add(h participant.DecisionHolder, txid ids.TxID, regs []participant.Resource, gids []ids.GID) {
	if h == nil && !anyProver(regs) {
		return // nothing to delete: no log flush for it either
	}
	f.mu.Lock()
	f.items = append(f.items, forgetItem{h: h, txid: txid, regs: regs, gids: gids})
	if h != nil {
		f.n++
	}
	f.n += len(gids)
	full := f.n >= forgetBatch
	f.mu.Unlock()
	if full {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
}

// anyProver reports whether some resource of regs keeps proofs.
func anyProver(regs []participant.Resource) bool {
	for _, r := range regs {
		if _, ok := r.(participant.Prover); ok {
			return true
		}
	}
	return false
}

// pending reports how many rows and proofs wait for deletion.
func (f *forgetter) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// run deletes what is queued every interval until stop is closed, then
// once more. Once ctx ends (the coordinator closing, its transactions'
// drivers still finishing) it only waits for stop: a batch cut short by
// ctx would leave its rows and proofs to the next start.
func (f *forgetter) run(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			f.flush(fctx)
			cancel()
			return
		case <-t.C:
		case <-f.kick:
		}
		if ctx.Err() == nil {
			f.flush(ctx)
		}
	}
}

// flush deletes everything queued. A failure leaves rows and proofs to the
// next recovery pass, which forgets them.
func (f *forgetter) flush(ctx context.Context) {
	f.mu.Lock()
	items := f.items
	f.items, f.n = nil, 0
	f.mu.Unlock()
	if len(items) == 0 {
		return
	}
	c := f.c
	if err := c.log.Flush(ctx); err != nil {
		c.logger.Warn("holder rows and markers kept: the log's notes and END records could not be flushed", "err", err)
		return
	}
	rows := map[participant.DecisionHolder][]ids.TxID{}
	for _, it := range items {
		if it.h != nil {
			rows[it.h] = append(rows[it.h], it.txid)
		}
	}
	kept := map[participant.DecisionHolder]bool{}
	for h, txids := range rows {
		if err := h.Forget(ctx, txids); err != nil {
			kept[h] = true
			c.logger.Warn("holder rows kept; recovery forgets them", "holder", h.Name(), "rows", len(txids), "err", err)
			continue
		}
		c.stats.forgotten.Add(uint64(len(txids)))
	}
	proofs := map[participant.Prover][]ids.GID{}
	for _, it := range items {
		if it.h != nil && kept[it.h] {
			continue // the row stays, so do the proofs its redrive needs
		}
		for i, r := range it.regs {
			if p, ok := r.(participant.Prover); ok {
				proofs[p] = append(proofs[p], it.gids[i])
			}
		}
	}
	for p, gids := range proofs {
		if err := p.ForgetProofs(ctx, gids); err != nil {
			c.logger.Warn("markers kept; recovery forgets them", "markers", len(gids), "err", err)
		}
	}
}

// noteHeld notes a holder's commit decision in the log (not forced) once
// every branch acknowledged it.
func noteHeld(log wal.Log, holder string, txid ids.TxID, epoch uint64, branches []wal.Branch) error {
	return log.Note(wal.Record{Kind: wal.KindCommit, TxID: txid, Time: time.Now().UTC(), Epoch: epoch, Branches: branches, Holder: holder})
}

// holderOf returns the registered decision holder a gid names, if any.
func (c *Coordinator) holderOf(g ids.GID) (participant.DecisionHolder, string, bool) {
	name, ok := g.Holder()
	if !ok {
		return nil, "", false
	}
	r, ok := c.Resource(name)
	if !ok {
		return nil, name, true
	}
	h, _ := r.(participant.DecisionHolder)
	return h, name, true
}

// holders lists the registered resources that can hold decisions, by
// name.
func (c *Coordinator) holders() []participant.DecisionHolder {
	var out []participant.DecisionHolder
	for _, r := range c.resourceList() {
		if h, ok := r.(participant.DecisionHolder); ok {
			out = append(out, h)
		}
	}
	return out
}

// resolveHeld answers for a transaction the log knows nothing of, from
// the holders' rows: g's holder (fenced, so that the answer is final), or,
// without a gid, a read of every holder. found is false when no holder
// keeps a decision.
func (c *Coordinator) resolveHeld(ctx context.Context, id ids.TxID, g *ids.GID) (res Resolution, found bool, err error) {
	if g != nil {
		h, name, marked := c.holderOf(*g)
		if !marked {
			return Wait, false, nil
		}
		if h == nil {
			return Wait, false, fmt.Errorf("%w: %s names decision holder %q, which is not registered here", ErrUnknownResource, g, name)
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
		got, err := h.Fence(cctx, c.owner(), []ids.TxID{id})
		if err != nil {
			return Wait, false, err
		}
		d := got[id]
		if d.Outcome == participant.OutcomeCommit && d.Names(*g) {
			return CommitBranch, true, nil
		}
		return RollbackBranch, true, nil
	}
	_, d, err := c.HeldDecision(ctx, id, "")
	switch {
	case err == nil && d.Outcome == participant.OutcomeCommit:
		return CommitBranch, true, nil
	case err == nil:
		return RollbackBranch, true, nil
	case !errors.Is(err, participant.ErrNoDecision):
		// A holder that cannot be asked may keep the commit.
		return Wait, false, err
	}
	// No row anywhere proves nothing: a holder's session may still be
	// committing (its coordinator lost the reply, or died). Fence the
	// holders this coordinator's transactions use, so that the answer is
	// final.
	used := c.usedHolders()
	if len(used) == 0 {
		return Wait, false, nil
	}
	res = RollbackBranch
	for _, h := range used {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		got, err := h.Fence(cctx, c.owner(), []ids.TxID{id})
		cancel()
		if err != nil {
			return Wait, false, fmt.Errorf("coordinator: fence %s at decision holder %s: %w", id, h.Name(), err)
		}
		if got[id].Outcome == participant.OutcomeCommit {
			res = CommitBranch
		}
	}
	return res, true, nil
}

// useHolder records that a transaction of this run has decision holder h
// (the default holder is recorded at New), so that an outcome question
// without a gid fences it.
func (c *Coordinator) useHolder(h participant.DecisionHolder) {
	c.usedMu.Lock()
	defer c.usedMu.Unlock()
	if c.used == nil {
		c.used = map[string]participant.DecisionHolder{}
	}
	c.used[h.Name()] = h
}

// usedHolders lists the holders useHolder recorded, by name.
func (c *Coordinator) usedHolders() []participant.DecisionHolder {
	c.usedMu.Lock()
	defer c.usedMu.Unlock()
	out := make([]participant.DecisionHolder, 0, len(c.used))
	for _, h := range c.used {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// commitHolder performs protocol.CommitHolder: the holder branch records
// the decision and commits. Never inline: a commit that hangs must not
// hold a caller whose context ends (the outcome is then unknown).
func (d *driver) commitHolder(e protocol.CommitHolder) {
	t, c := d.t, d.t.c
	d.end(&d.prep, PhasePrepare, nil)
	d.begin(&d.dec, PhaseDecision, d.callerCtx)
	hb, ok := d.branches[e.Branch].(participant.HolderBranch)
	dec := d.holderDecision(e.Branches)
	d.run(false, func() protocol.Event {
		if !ok {
			return protocol.HolderCommitted{Err: fmt.Errorf("coordinator: branch %d of %s is not a holder branch", e.Branch, t.id)}
		}
		failpoint.Hit(failpoint.CoordBeforeDecision)
		// Not the caller's context: a cancelled COMMIT would make the
		// outcome unknown for nothing.
		ctx, cancel := context.WithTimeout(d.ctx, c.cfg.CallTimeout)
		defer cancel()
		err := hb.CommitDecision(ctx, dec)
		if err == nil {
			failpoint.Hit(failpoint.CoordAfterDecision)
		}
		return protocol.HolderCommitted{Err: err}
	})
}

// fenceHolder performs protocol.FenceHolder.
func (d *driver) fenceHolder(e protocol.FenceHolder) {
	t, c := d.t, d.t.c
	c.logger.Warn("the decision holder's commit reply was lost; fencing", "txid", t.id, "holder", t.holder.Name(), "attempt", e.Attempt)
	d.run(false, func() protocol.Event {
		if err := sleep(d.ctx, e.Delay); err != nil {
			return protocol.HolderFenced{Err: err}
		}
		ctx, cancel := context.WithTimeout(d.ctx, c.cfg.CallTimeout)
		defer cancel()
		got, err := t.holder.Fence(ctx, c.owner(), []ids.TxID{t.id})
		if err != nil {
			return protocol.HolderFenced{Err: err}
		}
		c.stats.fenced.Add(1)
		return protocol.HolderFenced{Committed: got[t.id].Outcome == participant.OutcomeCommit}
	})
}

// heldEvent closes t.decided once the holder's commit is known to have
// happened.
func (d *driver) heldEvent(ev protocol.Event) {
	switch ev := ev.(type) {
	case protocol.HolderCommitted:
		d.end(&d.dec, PhaseDecision, ev.Err)
		if ev.Err == nil {
			d.t.c.stats.held.Add(1)
			close(d.t.decided)
		}
	case protocol.HolderFenced:
		if ev.Err == nil && ev.Committed {
			d.t.c.stats.held.Add(1)
			close(d.t.decided)
		}
	}
}

// forgetDecision performs protocol.ForgetDecision: a commit is noted in
// the log (not forced), then the holder's row is queued for deletion; a
// fence's abort row is queued as it is.
func (d *driver) forgetDecision() {
	t, c := d.t, d.t.c
	d.end(&d.commit, PhaseCommit, nil)
	failpoint.Hit(failpoint.CoordBeforeEnd)
	d.t.mu.Lock()
	state := t.m.State()
	d.t.mu.Unlock()
	if state == protocol.StateCommitted {
		branches := make([]wal.Branch, 0, len(d.branches))
		for i, b := range d.branches {
			branches = append(branches, wal.Branch{Resource: d.regs[i].Name(), GID: b.GID()})
		}
		if err := noteHeld(c.log, t.holder.Name(), t.id, c.log.Epoch(), branches); err != nil {
			// The row stays; recovery notes and forgets it.
			c.logger.Warn("holder decision not noted in the log; its row stays for recovery", "txid", t.id, "err", err)
			return
		}
	}
	var h participant.DecisionHolder = t.holder
	if state != protocol.StateCommitted {
		// A fence's abort row: no branch committed, no proof to forget.
		c.forgetter.add(h, t.id, nil, nil)
	} else {
		c.forgetter.add(h, t.id, d.regs, d.gids())
	}
	failpoint.Hit(failpoint.CoordAfterEnd)
}

// HeldDecision reads, without fencing, the decision a holder keeps for
// transaction id: at the holder named holder, or, if holder is empty, at
// every registered holder. It returns the holder's name, or an error
// wrapping participant.ErrNoDecision when none keeps one (which does not
// prove that none will: only a fence does).
func (c *Coordinator) HeldDecision(ctx context.Context, id ids.TxID, holder string) (string, participant.Decision, error) {
	hs := c.holders()
	if holder != "" {
		h, err := c.decisionHolder(holder)
		if err != nil {
			return holder, participant.Decision{}, err
		}
		hs = []participant.DecisionHolder{h}
	}
	var errs []error
	for _, h := range hs {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		d, err := h.HeldDecision(cctx, id)
		cancel()
		if err == nil {
			return h.Name(), d, nil
		}
		if !errors.Is(err, participant.ErrNoDecision) {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name(), err))
		}
	}
	if len(errs) > 0 {
		return holder, participant.Decision{}, errors.Join(errs...)
	}
	return holder, participant.Decision{}, fmt.Errorf("%w: %s", participant.ErrNoDecision, id)
}
