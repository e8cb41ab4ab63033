package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/wal"
)

var _ participant.Enlister = (*Tx)(nil)

// Tx is one global transaction. Enlist, Commit and Rollback may be called
// from different goroutines, but a transaction is finished once.
type Tx struct {
	c       *Coordinator
	id      ids.TxID
	started time.Time

	mu        sync.Mutex
	branches  []participant.Branch
	regs      []participant.Resource // the registered resource of each branch
	finishing bool
	m         *protocol.Machine
	state     protocol.State // before the machine exists
	decided   chan struct{}  // closed when COMMIT is durable
	done      chan struct{}  // closed when the outcome is known
	result    error

	doneMu     sync.Mutex
	doneClosed bool
	onDone     []func() // AfterDone callbacks not run yet

	stop     context.CancelFunc         // ends the driver's context; set under c.mu
	holder   participant.DecisionHolder // the transaction's decision holder, or nil
	holderAt int                        // index of the holder branch, or -1
}

// ID returns the transaction id.
func (t *Tx) ID() ids.TxID { return t.id }

// Enlist starts a branch of the transaction at r, which must be registered
// with the coordinator. Adapters offer typed sugar over it, for example
// (*postgres.Resource).Enlist.
func (t *Tx) Enlist(ctx context.Context, r participant.Resource) (participant.Branch, error) {
	if reg, ok := t.c.Resource(r.Name()); !ok || reg != r {
		return nil, fmt.Errorf("%w: %q; pass it in Config.Resources so recovery can find its branches", ErrUnknownResource, r.Name())
	}
	if err := t.c.usable(ctx, r); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finishing {
		return nil, ErrTxDone
	}
	branch := strconv.Itoa(len(t.branches))
	if t.holder != nil {
		// Every gid names the holder, so that recovery finds the decision
		// without the log.
		var err error
		if branch, err = ids.HolderBranch(len(t.branches), t.holder.Name()); err != nil {
			return nil, err
		}
	}
	gid, err := ids.NewGID(t.c.cfg.Prefix, t.c.cfg.ID, t.id, branch)
	if err != nil {
		return nil, err
	}
	var b participant.Branch
	if t.holder != nil && t.holderAt < 0 && participant.Resource(t.holder) == r {
		b, err = t.holder.BeginHolder(ctx, gid)
		if err == nil {
			t.holderAt = len(t.branches)
		}
	} else {
		b, err = r.Begin(ctx, gid)
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: enlist %s: %w", r.Name(), err)
	}
	t.branches = append(t.branches, b)
	t.regs = append(t.regs, r)
	return b, nil
}

// allMarked reports whether every branch but the holder's own names the
// transaction's holder in its gid.
func (t *Tx) allMarked(branches []participant.Branch) bool {
	for i, b := range branches {
		if i == t.holderAt {
			continue
		}
		if h, ok := b.GID().Holder(); !ok || h != t.holder.Name() {
			return false
		}
	}
	return true
}

// Holder returns the name of the transaction's decision holder, if it has
// one.
func (t *Tx) Holder() (string, bool) {
	if t.holder == nil {
		return "", false
	}
	return t.holder.Name(), true
}

// Join adds a branch that its participant has already prepared under gid
// (a remote service that prepared its own work): joining is the branch's
// yes vote. r must be registered (see Coordinator.AddResource), gid must
// belong to this transaction, and no other branch may have the same gid.
// Joining the same gid through the same r again succeeds and changes
// nothing (a registration delivered twice), even once Commit has begun.
// After the decision, phase two and recovery finish the branch through r.
func (t *Tx) Join(r participant.Resource, gid ids.GID) error {
	if reg, ok := t.c.Resource(r.Name()); !ok || reg != r {
		return fmt.Errorf("%w: %q", ErrUnknownResource, r.Name())
	}
	if err := gid.Validate(); err != nil {
		return err
	}
	if h, ok := gid.Holder(); ok && (t.holder == nil || h != t.holder.Name()) {
		own := "none"
		if t.holder != nil {
			own = t.holder.Name()
		}
		return fmt.Errorf("%w: branch %q names decision holder %q, but the transaction's holder is %s", ids.ErrBadGID, gid.Branch, h, own)
	}
	if gid.TxID != t.id || gid.Prefix != t.c.cfg.Prefix || gid.Coordinator != t.c.cfg.ID {
		return fmt.Errorf("%w: gid %s does not belong to transaction %s.%s.%s", ids.ErrBadGID, gid, t.c.cfg.Prefix, t.c.cfg.ID, t.id)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range t.branches {
		if b.GID() != gid {
			continue
		}
		if j, ok := b.(*joined); ok && j.r == r {
			return nil // the same registration delivered again (I6)
		}
		return fmt.Errorf("%w: %s", ErrDuplicateBranch, gid)
	}
	if t.finishing {
		return ErrTxDone
	}
	t.branches = append(t.branches, &joined{r: r, gid: gid})
	t.regs = append(t.regs, r)
	return nil
}

// joined is a branch its participant prepared before joining.
type joined struct {
	r   participant.Resource
	gid ids.GID
}

func (j *joined) GID() ids.GID                   { return j.gid }
func (j *joined) Resource() participant.Resource { return j.r }
func (j *joined) Prepare(context.Context) (participant.Vote, error) {
	return participant.VoteYes, nil
}

// CommitOnePhase is never called: a transaction with a joined branch is
// always prepared and logged (protocol.Config.NoOnePhase), since a lost
// reply to a one-phase commit could not be told from "not committed".
func (j *joined) CommitOnePhase(context.Context) error {
	return fmt.Errorf("%w: joined branch %s is not committed in one phase", participant.ErrOutcomeUnknown, j.gid)
}

// Abort rolls the prepared branch back.
func (j *joined) Abort(ctx context.Context) error {
	err := j.r.Rollback(ctx, j.gid)
	if errors.Is(err, participant.ErrUnknownBranch) {
		return nil
	}
	return err
}

// Commit commits the transaction atomically across its branches and
// returns one of three outcomes (see OutcomeOf): nil when every branch
// committed; an error wrapping ErrAborted when every branch rolled back (or
// will, by recovery); an error wrapping ErrCommitPending when the decision
// is durable but phase two is still going (ctx ended first); otherwise the
// outcome is unknown (ErrOutcomeUnknown): the transaction id tells where to
// look. ctx bounds phase one (with Config.PrepareTimeout); once the
// decision is logged, phase two no longer depends on ctx.
func (t *Tx) Commit(ctx context.Context) error {
	return t.finish(ctx, protocol.Commit{})
}

// Rollback rolls the transaction back. It returns nil once every branch was
// asked to roll back; a branch that could not be reached is rolled back by
// recovery later (no COMMIT is logged).
func (t *Tx) Rollback(ctx context.Context) error {
	err := t.finish(ctx, protocol.Rollback{Cause: protocol.ErrRolledBack})
	if errors.Is(err, protocol.ErrRolledBack) {
		return nil
	}
	return err
}

// Done is closed once the transaction's outcome is known to its caller
// (Commit or Rollback returned, or would have).
func (t *Tx) Done() <-chan struct{} { return t.done }

// AfterDone calls f once Done is closed, on the goroutine that closes it
// (at once, on this one, if it is closed already). f must not block: it
// runs before the caller of Commit or Rollback is answered.
func (t *Tx) AfterDone(f func()) {
	t.doneMu.Lock()
	if t.doneClosed {
		t.doneMu.Unlock()
		f()
		return
	}
	t.onDone = append(t.onDone, f)
	t.doneMu.Unlock()
}

// closeDone closes Done and runs the AfterDone callbacks.
func (t *Tx) closeDone() {
	t.doneMu.Lock()
	fs := t.onDone
	t.onDone, t.doneClosed = nil, true
	close(t.done)
	t.doneMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Result is what Commit returned (see OutcomeOf); valid once Done is
// closed.
func (t *Tx) Result() error {
	<-t.done
	return t.result
}

// Finishing reports whether Commit or Rollback was called.
func (t *Tx) Finishing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.finishing
}

// Status returns a snapshot of the transaction.
func (t *Tx) Status() TxStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := TxStatus{TxID: t.id, Started: t.started, State: t.state}
	if t.holder != nil {
		s.Holder = t.holder.Name()
	}
	for i, b := range t.branches {
		bs := BranchStatus{Resource: t.regs[i].Name(), GID: b.GID(), State: protocol.BranchActive}
		if t.m != nil {
			info := t.m.Branch(i)
			bs.State, bs.Attempts, bs.LastErr = info.State, info.Attempts, info.LastErr
		}
		s.Branches = append(s.Branches, bs)
	}
	if t.m != nil {
		s.State, s.Retries, s.Cause = t.m.State(), t.m.Retries(), t.m.Cause()
	}
	return s
}

func (t *Tx) finish(ctx context.Context, ev protocol.Event) error {
	t.mu.Lock()
	if t.finishing {
		t.mu.Unlock()
		return ErrTxDone
	}
	t.finishing = true
	branches := append([]participant.Branch(nil), t.branches...)
	regs := append([]participant.Resource(nil), t.regs...)
	cfg := t.c.machineConfig()
	for _, b := range branches {
		if _, ok := b.(*joined); ok {
			cfg.NoOnePhase = true
		}
	}
	// The holder keeps the decision only when every other gid names it,
	// so that recovery can find it: a branch joined by a participant that
	// did not name the holder makes the transaction log its decision.
	if t.holderAt >= 0 && len(branches) > 1 && t.allMarked(branches) {
		cfg.HasHolder, cfg.Holder = true, t.holderAt
	}
	t.m = protocol.New(len(branches), cfg)
	t.decided = make(chan struct{})
	t.mu.Unlock()

	c := t.c
	c.mu.Lock()
	var refuse error
	switch {
	case c.closed:
		refuse = ErrClosed
	case c.failed != nil:
		refuse = fmt.Errorf("%w: %v", ErrLogFailed, c.failed)
	}
	var dctx context.Context
	if refuse == nil {
		c.wg.Add(1) // held by the driver until the transaction settles
		// The driver's own context, which Close cancels: its calls and
		// selects share no lock with other transactions'.
		dctx, t.stop = context.WithCancel(context.Background())
	}
	c.mu.Unlock()
	if refuse != nil {
		for _, b := range branches {
			_ = b.Abort(ctx)
		}
		c.forget(t)
		if _, ok := ev.(protocol.Rollback); ok {
			// Rolled back as asked (Rollback answers nil); whoever waits
			// on Result reads aborted, not committed.
			t.result = fmt.Errorf("%w: %w (%w)", ErrAborted, protocol.ErrRolledBack, refuse)
		} else {
			c.stats.aborted.Add(1)
			t.result = fmt.Errorf("%w: %w", ErrAborted, refuse)
		}
		t.closeDone()
		return t.result
	}

	prepCtx, cancelPrep := context.WithTimeout(ctx, c.cfg.PrepareTimeout)
	d := &driver{t: t, ctx: dctx, branches: branches, regs: regs, prepCtx: prepCtx, cancelPrep: cancelPrep, callerCtx: ctx,
		events: make(chan protocol.Event, 2*len(branches)+2)}
	d.effs = d.step(ev)

	// The caller's goroutine drives the protocol until the outcome is known;
	// what remains (phase-two retries, cleanup of late prepares) goes on in
	// a goroutine the coordinator owns.
	if d.loop(true, ctx.Done()) {
		d.close()
		return t.result
	}
	go func() {
		d.loop(false, nil)
		d.close()
	}()
	select {
	case <-t.done:
		return t.result
	default:
	}
	select {
	case <-t.decided:
		return fmt.Errorf("%w (%s): %w", ErrCommitPending, t.id, ctx.Err())
	default:
	}
	select {
	case <-t.decided:
		return fmt.Errorf("%w (%s): %w", ErrCommitPending, t.id, ctx.Err())
	case <-t.done:
		return t.result
	case <-ctx.Done():
		// The caller left while the decision holder was committing or
		// being fenced: the transaction may commit.
		c.stats.unknown.Add(1)
		return fmt.Errorf("%w (%s): the decision holder's commit is still being settled: %w", ErrOutcomeUnknown, t.id, ctx.Err())
	}
}

// driver performs one transaction's effects and feeds results back to its
// machine. It runs in the caller's goroutine until the outcome is known,
// then, if anything is left, in a goroutine owned by the coordinator.
type driver struct {
	t          *Tx
	ctx        context.Context // ends at Close
	branches   []participant.Branch
	regs       []participant.Resource // phase two and rollbacks go through these
	prepCtx    context.Context
	cancelPrep context.CancelFunc
	callerCtx  context.Context
	events     chan protocol.Event
	effs       []protocol.Effect // effects not yet performed
	inflight   int
	reported   bool
	stopping   bool
	selfCancel bool // the prepares were cancelled because a branch voted no
	prepDone   <-chan struct{}
	fallback   *time.Timer // prepare timeout after a self-cancel
	commitCtx  context.Context
	commitEnd  context.CancelFunc
	prep       phase
	dec        phase
	commit     phase
	abortTimer *time.Timer
	onePhase   bool // the single branch was committed in one phase
}

// phase times one phase of a transaction and spans it.
type phase struct {
	start time.Time
	span  trace.Span
	ended bool
}

func (d *driver) begin(p *phase, name Phase, ctx context.Context) {
	if !p.start.IsZero() {
		return
	}
	p.start = time.Now()
	if d.t.c.tracing {
		_, p.span = d.t.c.cfg.Tracer.Start(ctx, "txcoord."+string(name), trace.WithAttributes(attribute.String("txcoord.txid", d.t.id.String())))
	}
}

func (d *driver) end(p *phase, name Phase, err error) {
	if p.start.IsZero() || p.ended {
		return
	}
	p.ended = true
	if p.span != nil {
		if err != nil {
			p.span.RecordError(err)
			p.span.SetStatus(codes.Error, err.Error())
		}
		p.span.End()
	}
	if f := d.t.c.cfg.Observe; f != nil {
		f(name, time.Since(p.start), err)
	}
}

func (d *driver) step(ev protocol.Event) []protocol.Effect {
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	return d.t.m.Step(ev)
}

func (d *driver) state() (protocol.State, bool) {
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	return d.t.m.State(), d.t.m.Settled()
}

// loop performs effects and feeds events until the transaction settles
// (true), or, in the caller's goroutine (caller), until the outcome is
// reported and what is left is calls in flight or the caller's context
// can end, or the caller gives up after the decision (false).
func (d *driver) loop(caller bool, callerDone <-chan struct{}) bool {
	c := d.t.c
	for {
		for len(d.effs) > 0 {
			e := d.effs[0]
			d.effs = d.effs[1:]
			if next := d.perform(e, len(d.effs) == 0); next != nil {
				d.effs = append(d.effs, d.step(next)...)
			}
		}
		state, settled := d.state()
		if (settled || d.stopping) && d.inflight == 0 {
			return true
		}
		if caller && d.reported && (callerDone != nil || d.inflight > 0) {
			return false
		}
		var prepDone <-chan struct{}
		var fallback <-chan time.Time
		if state == protocol.StatePreparing {
			prepDone = d.prepDone
			if d.fallback != nil {
				fallback = d.fallback.C
			}
		}
		var gaveUp <-chan struct{}
		switch state {
		case protocol.StateCommitting, protocol.StateHolding, protocol.StateFencing:
			gaveUp = callerDone
		}
		// The abort is decided (no COMMIT will be logged): the caller
		// waits for the rollbacks, but not for one that hangs past its
		// call timeout (a database that swallows packets); recovery
		// finishes it.
		var abortWait <-chan time.Time
		if caller && state == protocol.StateAborting && !d.reported {
			if d.abortTimer == nil {
				d.abortTimer = time.NewTimer(c.cfg.CallTimeout + time.Second)
			}
			abortWait = d.abortTimer.C
		}
		select {
		case ev := <-d.events:
			d.inflight--
			if d.stopping {
				continue
			}
			d.effs = d.step(ev)
			d.heldEvent(ev)
			if cd, ok := ev.(protocol.CommitDone); ok && cd.Err == nil {
				if st, _ := d.state(); st == protocol.StateCommitting {
					// One branch committed, at least one not yet acknowledged.
					failpoint.Hit(failpoint.CoordBetweenCommits)
				}
			}
		case <-prepDone:
			d.prepDone = nil
			if d.selfCancel {
				// Not a timeout: the prepares were told to hurry. Keep what
				// is left of the prepare timeout for a participant that
				// ignores that.
				left := c.cfg.PrepareTimeout
				if dl, ok := d.prepCtx.Deadline(); ok {
					left = max(time.Until(dl), 0)
				}
				d.fallback = time.NewTimer(left)
				continue
			}
			d.effs = d.step(protocol.PrepareTimedOut{})
		case <-fallback:
			d.effs = d.step(protocol.PrepareTimedOut{})
		case <-gaveUp:
			return false
		case <-abortWait:
			d.t.mu.Lock()
			cause := d.t.m.Cause()
			d.t.mu.Unlock()
			c.logger.Warn("a rollback is still hanging; answering the caller, recovery will finish it", "txid", d.t.id)
			d.report(protocol.Report{Outcome: protocol.OutcomeAborted, Err: cause})
			return false
		case <-d.ctx.Done():
			if !d.stopping {
				d.stopping = true
				d.cancelPrep()
			}
			// Drain what is in flight; its contexts are ending too.
			if d.inflight > 0 {
				<-d.events
				d.inflight--
			}
		}
	}
}

// close releases what the driver holds once the transaction settled or the
// coordinator closed.
func (d *driver) close() {
	t, c := d.t, d.t.c
	defer c.wg.Done()
	defer t.stop() // set before the driver began
	d.cancelPrep()
	if d.fallback != nil {
		d.fallback.Stop()
	}
	if d.commitEnd != nil {
		d.commitEnd()
	}
	if d.abortTimer != nil {
		d.abortTimer.Stop()
	}
	d.end(&d.commit, PhaseCommit, ErrClosed) // unless it ended
	state, _ := d.state()
	if !d.reported {
		// The coordinator closed before the outcome was known.
		switch state {
		case protocol.StateCommitting, protocol.StateCommitted:
			d.report(protocol.Report{Outcome: protocol.OutcomeCommitted, Err: ErrClosed})
		default:
			d.report(protocol.Report{Outcome: protocol.OutcomeUnknown, Err: ErrClosed})
		}
	}
	c.mu.Lock()
	keep := state == protocol.StateUnknown && c.failed != nil
	c.mu.Unlock()
	if !keep {
		c.forget(t)
	}
}

// perform carries out one effect. A synchronous effect returns the event
// it produced; an asynchronous one sends its event to d.events, from a new
// goroutine, or from this one when it is the last effect queued (nothing
// else would run in parallel with it).
func (d *driver) perform(e protocol.Effect, last bool) protocol.Event {
	t, c := d.t, d.t.c
	switch e := e.(type) {
	case protocol.SendPrepare:
		d.begin(&d.prep, PhasePrepare, d.callerCtx)
		d.prepDone = d.prepCtx.Done()
		// Never inline: a participant call that ignores its context (a
		// driver blocked on a link that swallows packets) must not keep
		// the prepare timeout from firing.
		for _, i := range e.Branches {
			d.run(false, func() protocol.Event {
				v, err := d.branches[i].Prepare(d.prepCtx)
				return protocol.Voted{Branch: i, Vote: v, Err: err}
			})
		}
	case protocol.CancelPrepares:
		d.selfCancel = true
		d.cancelPrep()
	case protocol.SendCommitOnePhase:
		d.onePhase = true
		d.run(last, func() protocol.Event {
			failpoint.Hit(failpoint.CoordBeforeOnePhase)
			err := d.branches[e.Branch].CommitOnePhase(d.callerCtx)
			if err == nil {
				failpoint.Hit(failpoint.CoordAfterOnePhase)
			}
			return protocol.OnePhaseDone{Err: err}
		})
	case protocol.LogCommit:
		d.end(&d.prep, PhasePrepare, nil)
		var dec phase
		d.begin(&dec, PhaseDecision, d.callerCtx)
		rec := wal.Record{Kind: wal.KindCommit, TxID: t.id, Time: time.Now().UTC(), Epoch: c.log.Epoch()}
		for _, i := range e.Branches {
			b := d.branches[i]
			rec.Branches = append(rec.Branches, wal.Branch{Resource: d.regs[i].Name(), GID: b.GID()})
		}
		failpoint.Hit(failpoint.CoordBeforeDecision)
		// Not the caller's context: once asked, the record is written or
		// the log has failed; a cancelled wait would make the outcome
		// unknown for nothing.
		_, err := c.log.Append(d.ctx, rec)
		d.end(&dec, PhaseDecision, err)
		if err != nil {
			// A record refused before it was written (invalid,
			// contradicting one already logged, or withdrawn at Close:
			// a context error) says nothing about the disk; anything
			// else may or may not be durable.
			if logFailure(err) {
				c.fail(err)
			}
			return protocol.DecisionLogged{Err: err}
		}
		failpoint.Hit(failpoint.CoordAfterDecision)
		close(t.decided)
		return protocol.DecisionLogged{}
	case protocol.SendCommit:
		if d.stopping || d.ctx.Err() != nil {
			return nil // left to recovery after restart
		}
		if e.Attempt > 1 {
			c.stats.retries.Add(1)
		}
		b := d.branches[e.Branch]
		d.begin(&d.commit, PhaseCommit, d.callerCtx)
		if e.Attempt == 1 && d.commitCtx == nil {
			// First attempts share one deadline.
			d.commitCtx, d.commitEnd = context.WithTimeout(d.ctx, c.cfg.CallTimeout)
		}
		// Never inline: the caller may give up during phase two
		// (ErrCommitPending) while a commit hangs until CallTimeout.
		d.run(false, func() protocol.Event {
			ctx := d.commitCtx
			if e.Attempt > 1 {
				if err := sleep(d.ctx, e.Delay); err != nil {
					return protocol.CommitDone{Branch: e.Branch, Err: err}
				}
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(d.ctx, c.cfg.CallTimeout)
				defer cancel()
			}
			err := d.regs[e.Branch].Commit(ctx, b.GID())
			if err != nil {
				c.logger.Debug("phase two commit failed; will retry", "txid", t.id, "gid", b.GID(), "attempt", e.Attempt, "err", err)
			}
			return protocol.CommitDone{Branch: e.Branch, Err: err}
		})
	case protocol.SendRollback:
		b := d.branches[e.Branch]
		// Never inline: a rollback that hangs past its call timeout must
		// not keep the caller from its answer (abortWait in loop).
		d.run(false, func() protocol.Event {
			ctx, cancel := context.WithTimeout(d.ctx, c.cfg.CallTimeout)
			defer cancel()
			err := b.Abort(ctx)
			if e.MayBePrepared && errors.Is(err, participant.ErrBranchDone) {
				// A prepared branch is known by its gid alone now.
				err = nil
			}
			if e.MayBePrepared {
				if rerr := d.regs[e.Branch].Rollback(ctx, b.GID()); rerr != nil && !errors.Is(rerr, participant.ErrUnknownBranch) {
					err = rerr
				}
			}
			if err != nil {
				c.logger.Warn("rollback failed; recovery will finish it", "txid", t.id, "gid", b.GID(), "err", err)
			}
			return protocol.RollbackDone{Branch: e.Branch, Err: err}
		})
	case protocol.LogEnd:
		d.end(&d.commit, PhaseCommit, nil)
		failpoint.Hit(failpoint.CoordBeforeEnd)
		if err := c.log.End(t.id); err != nil {
			c.logger.Warn("END record not written; recovery will write it", "txid", t.id, "err", err)
		} else {
			// The branches' markers go once END is durable.
			c.forgetter.add(nil, t.id, d.regs, d.gids())
		}
		failpoint.Hit(failpoint.CoordAfterEnd)
	case protocol.CommitHolder:
		d.commitHolder(e)
	case protocol.FenceHolder:
		d.fenceHolder(e)
	case protocol.ForgetDecision:
		d.forgetDecision()
	case protocol.Report:
		d.report(e)
	default:
		panic(fmt.Sprintf("coordinator: unknown effect %T", e))
	}
	return nil
}

// gids returns the gids of the transaction's branches, in order.
func (d *driver) gids() []ids.GID {
	out := make([]ids.GID, len(d.branches))
	for i, b := range d.branches {
		out[i] = b.GID()
	}
	return out
}

// sleep waits d, or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run performs f inline or on one of the coordinator's workers; either
// way its event arrives on d.events.
func (d *driver) run(inline bool, f func() protocol.Event) {
	d.inflight++
	if inline {
		d.events <- f()
		return
	}
	d.t.c.workers.run(func() { d.events <- f() })
}

func (d *driver) report(r protocol.Report) {
	t, c := d.t, d.t.c
	if d.reported {
		return // answered early (a rollback hung); the rest was background work
	}
	d.reported = true
	if r.Outcome != protocol.OutcomeCommitted {
		d.end(&d.prep, PhasePrepare, r.Err)
	}
	switch r.Outcome {
	case protocol.OutcomeCommitted:
		t.result = nil
		if r.Err != nil {
			// Decided, but phase two was cut short by Close.
			t.result = fmt.Errorf("%w (%s): %w", ErrCommitPending, t.id, r.Err)
		}
		c.stats.committed.Add(1)
		if d.onePhase {
			c.stats.onePhase.Add(1)
		}
	case protocol.OutcomeAborted:
		t.result = fmt.Errorf("%w (%s): %w", ErrAborted, t.id, r.Err)
		c.stats.aborted.Add(1)
		c.aborted.add(t.id)
	case protocol.OutcomeHazard:
		t.result = fmt.Errorf("%w (%s): %w", ErrHeuristicHazard, t.id, r.Err)
		c.hazard(t.id, r.Err)
	default:
		t.result = fmt.Errorf("%w (%s): %w", ErrOutcomeUnknown, t.id, r.Err)
		c.stats.unknown.Add(1)
	}
	t.closeDone()
}

// logFailure reports whether err from Log.Append means the log may hold
// the record or not (the coordinator must stop deciding), rather than a
// record refused before it was written.
func logFailure(err error) bool {
	return !errors.Is(err, wal.ErrBadRecord) && !errors.Is(err, wal.ErrConflict) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, wal.ErrClosed)
}
