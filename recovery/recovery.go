// Package recovery finishes what a coordinator left undone: it drives every
// logged decision without END to the end, and every commit a decision
// holder keeps whose branches are not all finished; and it resolves
// prepared branches found at the registered resources: commit if the log
// holds COMMIT for their transaction, or, for a branch whose gid names a
// decision holder, if the holder keeps the commit after a fence; otherwise
// roll back (presumed abort: no COMMIT record and no commit row at the
// holder, after a fence, means ABORT). Live transactions and foreign
// branches are never touched.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/wal"
)

var (
	// ErrUnknownResource reports a log record naming a resource that is not
	// registered: its branches cannot be driven until it is.
	ErrUnknownResource = errors.New("recovery: resource not registered")
	// ErrBeforeLog reports a prepared branch of a transaction begun before
	// the coordinator's log was created: its decision may be in a log that
	// was lost, so presumed abort does not apply; resolve it by hand.
	ErrBeforeLog = errors.New("recovery: prepared branch older than the log; its decision may be in a lost log")
	// ErrHazard reports a branch of a committed transaction that its
	// resource does not hold prepared and cannot prove committed: a
	// heuristic hazard. The decision is never ended by recovery.
	ErrHazard = errors.New("recovery: heuristic hazard: the branch is not prepared and nothing proves it committed")
	// ErrResourceDown reports a branch at a resource that is down (Config.Down):
	// it is left until the resource is back.
	ErrResourceDown = errors.New("recovery: resource down")
)

// BeganBeforeLog reports whether transaction id began before a log created
// at created (zero: unknown, never). Transaction ids carry milliseconds.
func BeganBeforeLog(id ids.TxID, created time.Time) bool {
	t := id.Time()
	return !created.IsZero() && !t.IsZero() && !t.Add(time.Millisecond).After(created)
}

// Config says what a pass may touch.
type Config struct {
	Prefix        string // gid prefix (ids.DefaultPrefix if empty)
	CoordinatorID string
	Log           wal.Log
	Resources     []participant.Resource
	// Down names registered resources left out of Resources because they
	// cannot be reached (with why): branches there wait for a later pass,
	// and the rest is resolved.
	Down map[string]error
	// Live reports transactions this process is still running; recovery
	// leaves them alone. Nil means none are live (the start-up pass).
	Live func(ids.TxID) bool
	// Aborted reports transactions this process aborted. No COMMIT can
	// come for them, so a prepared branch of one is rolled back without
	// waiting for InDoubtTimeout: a prepare whose answer was lost (the
	// call cancelled, the connection cut) can still complete on the
	// server after the rollback found nothing, and its locks must not wait
	// a minute. Nil means none.
	Aborted func(ids.TxID) bool
	// InDoubtTimeout: in a periodic pass (Live != nil), a prepared branch of
	// ours is resolved only once it is older than this (unless Aborted
	// says its transaction was aborted); any prepared branch older than
	// this is reported as stale.
	InDoubtTimeout time.Duration
	// LogCreated is when the coordinator's log was created, if it knows: a
	// branch of a transaction begun before it, that the log does not know
	// and whose gid names no holder, may have its decision in a log that
	// was lost, so it is left unresolved (never presumed aborted).
	LogCreated time.Time
	// RunStart is when this coordinator run began: a prepared branch of a
	// transaction begun before it belongs to an earlier run and is resolved
	// without waiting for InDoubtTimeout.
	RunStart time.Time
	// CallTimeout bounds each call to a resource (default 30s).
	CallTimeout time.Duration
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Action is one thing a pass did or declined to do.
type Action struct {
	Resource string
	GID      string
	TxID     ids.TxID
	What     string // "commit", "rollback", "skip-live", "skip-young", "foreign", "unresolved", "hazard"
	Age      time.Duration
	Err      error
	// Holder names the decision holder that decided, when the log did not.
	Holder string
}

// Report says what a pass did.
type Report struct {
	Redriven     int        // decisions driven to END
	Unfinished   []ids.TxID // decisions some branch of which is still unacknowledged
	Committed    int        // prepared branches committed
	RolledBack   int        // prepared branches rolled back
	SkippedLive  int
	SkippedYoung int
	Foreign      int
	// Fenced counts transactions whose decision a holder settled; Held,
	// commits kept by holders driven to the end; Forgotten, holder rows
	// deleted.
	Fenced, Held, Forgotten int
	// Stale lists prepared branches older than the in-doubt timeout that
	// this pass left prepared (foreign ones, and ours it could not resolve).
	Stale []Action
	// Hazards lists the branches of committed transactions that their
	// resources did not hold prepared and could not prove committed; their
	// decisions stay unfinished (not in Errors: nothing failed to run).
	Hazards []Action
	// ProofsForgotten counts markers of ended transactions deleted.
	ProofsForgotten int
	Actions         []Action
	Errors          []error
	// Down names the resources this pass left out, being down.
	Down []string
}

// Err joins every error of the pass.
func (r *Report) Err() error { return errors.Join(r.Errors...) }

// Pass runs one recovery pass.
func Pass(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Log == nil {
		return nil, errors.New("recovery: no log")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = ids.DefaultPrefix
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &pass{cfg: cfg, rep: &Report{}, res: map[string]participant.Resource{},
		unresolved: map[ids.TxID]bool{}, aborted: map[string][]ids.TxID{}}
	downNames := make([]string, 0, len(cfg.Down))
	for n := range cfg.Down {
		downNames = append(downNames, n)
	}
	sort.Strings(downNames)
	for _, n := range downNames {
		p.rep.Down = append(p.rep.Down, n)
		p.rep.Errors = append(p.rep.Errors, fmt.Errorf("%w: %s, left for a later pass: %v", ErrResourceDown, n, cfg.Down[n]))
	}
	for _, r := range cfg.Resources {
		p.res[r.Name()] = r
	}
	if err := p.redrive(ctx); err != nil {
		return p.rep, err
	}
	names := make([]string, 0, len(p.res))
	for n := range p.res {
		names = append(names, n)
	}
	sort.Strings(names)
	p.redriveHeld(ctx, names)
	if err := ctx.Err(); err != nil {
		return p.rep, err
	}
	p.scan(ctx, names)
	if err := ctx.Err(); err != nil {
		return p.rep, err
	}
	p.forgetAborted(ctx)
	p.forgetProofs(ctx, names)
	return p.rep, nil
}

type pass struct {
	cfg Config
	rep *Report
	res map[string]participant.Resource

	mu         sync.Mutex            // guards rep, unresolved, aborted and ended while branches resolve in parallel
	ended      []wal.Branch          // branches of decisions this pass ended, whose proofs may go
	scanFailed bool                  // a resource could not be scanned
	unresolved map[ids.TxID]bool     // transactions with a prepared branch left
	aborted    map[string][]ids.TxID // abort rows seen or made, by holder
}

func (p *pass) owner() string { return p.cfg.Prefix + "." + p.cfg.CoordinatorID }

func (p *pass) live(id ids.TxID) bool { return p.cfg.Live != nil && p.cfg.Live(id) }

func (p *pass) abortedHere(id ids.TxID) bool { return p.cfg.Aborted != nil && p.cfg.Aborted(id) }

// earlierRun reports whether g's transaction began before this run.
func (p *pass) earlierRun(g ids.GID) bool {
	t := g.TxID.Time()
	return !p.cfg.RunStart.IsZero() && !t.IsZero() && t.Before(p.cfg.RunStart)
}

func (p *pass) fail(err error) {
	p.mu.Lock()
	p.rep.Errors = append(p.rep.Errors, err)
	p.mu.Unlock()
	p.cfg.Logger.Warn("recovery", "err", err)
}

// each runs f(0..n-1), resolveParallel at a time, until ctx ends.
func (p *pass) each(ctx context.Context, n int, f func(i int)) {
	sem := make(chan struct{}, resolveParallel)
	var wg sync.WaitGroup
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(i)
		}()
	}
	wg.Wait()
}

// redrive drives logged decisions without END.
func (p *pass) redrive(ctx context.Context) error {
	pending, err := p.cfg.Log.Pending()
	if err != nil {
		return fmt.Errorf("recovery: read pending decisions: %w", err)
	}
	p.each(ctx, len(pending), func(i int) {
		d := pending[i]
		if p.live(d.TxID) {
			return
		}
		done := true
		for _, b := range d.Branches {
			if err := p.finish(ctx, d.Kind, b, 0, ""); err != nil {
				done = false
			}
		}
		if !done {
			p.mu.Lock()
			p.rep.Unfinished = append(p.rep.Unfinished, d.TxID)
			p.mu.Unlock()
			return
		}
		if err := p.cfg.Log.End(d.TxID); err != nil {
			p.fail(fmt.Errorf("recovery: end %s: %w", d.TxID, err))
			return
		}
		p.mu.Lock()
		p.rep.Redriven++
		if d.Kind == wal.KindCommit {
			p.ended = append(p.ended, d.Branches...)
		}
		p.mu.Unlock()
		p.cfg.Logger.Debug("recovery: decision driven to the end", "txid", d.TxID, "decision", d.Kind, "branches", len(d.Branches))
	})
	return ctx.Err()
}

// finish applies a decision to one branch; holder names the decision
// holder that keeps it, if one does. A rollback of a branch the resource
// no longer holds is done (I6); a commit of one is done only if the
// resource proves it committed, and otherwise a hazard (apply).
func (p *pass) finish(ctx context.Context, kind wal.Kind, b wal.Branch, age time.Duration, holder string) error {
	r, ok := p.res[b.Resource]
	if why, down := p.cfg.Down[b.Resource]; !ok && down {
		// Left until the resource is back; reported once per pass by
		// Pass.
		return fmt.Errorf("%w: %s (branch %s): %v", ErrResourceDown, b.Resource, b.GID, why)
	}
	if !ok {
		err := fmt.Errorf("%w: %q (branch %s)", ErrUnknownResource, b.Resource, b.GID)
		p.fail(err)
		return err
	}
	act, err := p.apply(ctx, kind, r, b.GID, age, holder)
	p.record(kind, act, err)
	return err
}

// apply commits or rolls back branch g at r. It touches nothing of the
// pass, so that several can run at once; record files the result.
func (p *pass) apply(ctx context.Context, kind wal.Kind, r participant.Resource, g ids.GID, age time.Duration, holder string) (*Action, error) {
	what := "commit"
	if kind != wal.KindCommit {
		what = "rollback"
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	failpoint.Hit(failpoint.RecoveryBeforeResolve)
	var err error
	if kind == wal.KindCommit {
		err = r.Commit(cctx, g)
	} else {
		err = r.Rollback(cctx, g)
	}
	failpoint.Hit(failpoint.RecoveryAfterResolve)
	hazard := false
	if errors.Is(err, participant.ErrUnknownBranch) {
		if kind != wal.KindCommit {
			return nil, nil // rolled back before (presumed abort)
		}
		// A resource that can prove a commit answers nil: this branch is
		// not prepared and nothing proves it committed.
		hazard, what = true, "hazard"
	}
	act := &Action{Resource: r.Name(), GID: g.String(), TxID: g.TxID, What: what, Age: age, Err: err, Holder: holder}
	switch {
	case hazard:
		err = fmt.Errorf("%w: %s at %s: %w", ErrHazard, g, r.Name(), err)
		act.Err = err
	case err != nil:
		err = fmt.Errorf("recovery: %s %s at %s: %w", what, g, r.Name(), err)
	}
	return act, err
}

// record files what apply did.
func (p *pass) record(kind wal.Kind, act *Action, err error) {
	if act == nil {
		return // already finished
	}
	if errors.Is(err, ErrHazard) {
		p.mu.Lock()
		p.rep.Hazards = append(p.rep.Hazards, *act)
		p.rep.Actions = append(p.rep.Actions, *act)
		p.mu.Unlock()
		p.cfg.Logger.Debug("recovery: heuristic hazard", "resource", act.Resource, "gid", act.GID, "err", err)
		return
	}
	if err != nil {
		p.fail(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil:
	case kind == wal.KindCommit:
		p.rep.Committed++
	default:
		p.rep.RolledBack++
	}
	p.rep.Actions = append(p.rep.Actions, *act)
}

// found is one prepared branch of ours a scan found, and what to do with
// it.
type found struct {
	r    participant.Resource
	pr   participant.Prepared
	act  Action
	kind wal.Kind // the decision to apply; 0 while unknown
	// holder names the decision holder the gid names, when the log has
	// no decision for it.
	holder string
	stale  bool
}

// scan lists the prepared branches of every resource (in parallel, each
// bounded by CallTimeout), settles the decisions the log does not have at
// the holders the gids name (fences, one batch per holder), and resolves
// every branch that is ours, not live and not young.
func (p *pass) scan(ctx context.Context, names []string) {
	lists := make([][]participant.Prepared, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			defer cancel()
			lists[i], errs[i] = p.res[n].Prepared(sctx)
		}()
	}
	wg.Wait()
	now := p.cfg.Now()
	var todo []*found
	fence := map[string][]ids.TxID{}
	fenced := map[ids.TxID]bool{}
	for i, n := range names {
		r := p.res[n]
		if errs[i] != nil {
			p.scanFailed = true
			p.fail(fmt.Errorf("recovery: scan %s: %w", n, errs[i]))
			continue
		}
		for _, pr := range lists[i] {
			if f := p.classify(r, pr, now); f != nil {
				todo = append(todo, f)
				if f.holder != "" && !fenced[pr.GID.TxID] {
					fenced[pr.GID.TxID] = true
					fence[f.holder] = append(fence[f.holder], pr.GID.TxID)
				}
			}
		}
	}
	if ctx.Err() != nil {
		return
	}
	held := p.fence(ctx, fence)
	var act []*found
	for _, f := range todo {
		if f.holder != "" {
			d, ok := held[f.pr.GID.TxID]
			switch {
			case !ok:
				p.leave(f.act, fmt.Errorf("recovery: the decision holder %s of %s could not be asked", f.holder, f.pr.GID.TxID), f.stale)
				continue
			case d.Outcome == participant.OutcomeCommit && d.Names(f.pr.GID):
				f.kind = wal.KindCommit
			default:
				f.kind = wal.KindAbort
			}
		}
		act = append(act, f)
	}
	p.finishAll(ctx, act)
}

// classify decides what to do with one prepared branch: nil when it is
// not ours to resolve now (foreign, live, young; each reported), or a
// found whose kind is the logged decision or presumed abort, or that waits
// for its holder's decision.
func (p *pass) classify(r participant.Resource, pr participant.Prepared, now time.Time) *found {
	since := pr.Since
	if since.IsZero() && !pr.GID.IsZero() {
		since = pr.GID.TxID.Time()
	}
	var age time.Duration
	if !since.IsZero() {
		age = now.Sub(since)
	}
	stale := p.cfg.InDoubtTimeout > 0 && age > p.cfg.InDoubtTimeout
	act := Action{Resource: r.Name(), GID: pr.Raw, TxID: pr.GID.TxID, Age: age}
	switch {
	case pr.GID.IsZero() || !pr.GID.Owned(p.cfg.Prefix, p.cfg.CoordinatorID):
		act.What = "foreign"
		p.rep.Foreign++
		p.rep.Actions = append(p.rep.Actions, act)
		if stale {
			p.rep.Stale = append(p.rep.Stale, act)
		}
		return nil
	case p.live(pr.GID.TxID):
		act.What = "skip-live"
		p.rep.SkippedLive++
		p.rep.Actions = append(p.rep.Actions, act)
		p.unresolved[pr.GID.TxID] = true
		return nil
	case p.cfg.Live != nil && !stale && !p.earlierRun(pr.GID) && !p.abortedHere(pr.GID.TxID):
		act.What = "skip-young"
		p.rep.SkippedYoung++
		p.rep.Actions = append(p.rep.Actions, act)
		p.unresolved[pr.GID.TxID] = true
		return nil
	}
	f := &found{r: r, pr: pr, act: act, stale: stale, kind: wal.KindAbort} // presumed abort
	d, err := p.cfg.Log.Lookup(pr.GID.TxID)
	switch {
	case err == nil:
		f.kind = d.Kind
		if f.kind == wal.KindCommit && !named(d.Branches, pr.GID) {
			// Prepared for a transaction that committed without it
			// (it joined too late and was refused): not part of the
			// decision, so presumed abort.
			f.kind = wal.KindAbort
		}
	case errors.Is(err, wal.ErrNotFound):
		if h, ok := pr.GID.Holder(); ok {
			// The decision may be the holder's: ask it, not the log.
			f.kind, f.holder = 0, h
			f.act.Holder = h
			break
		}
		if BeganBeforeLog(pr.GID.TxID, p.cfg.LogCreated) {
			err := fmt.Errorf("%w: %s began before the log was created (%s)", ErrBeforeLog, pr.GID.TxID, p.cfg.LogCreated.Format(time.RFC3339))
			p.fail(err)
			p.leave(act, err, stale)
			return nil
		}
	default:
		p.fail(fmt.Errorf("recovery: look up %s: %w", pr.GID.TxID, err))
		p.leave(act, err, stale)
		return nil
	}
	return f
}

// leave files a branch this pass cannot resolve. The caller holds p.mu or
// runs alone.
func (p *pass) leave(act Action, err error, stale bool) {
	act.What, act.Err = "unresolved", err
	p.rep.Actions = append(p.rep.Actions, act)
	p.unresolved[act.TxID] = true
	if stale {
		p.rep.Stale = append(p.rep.Stale, act)
	}
}

// fence settles, at each holder, the decisions of the transactions whose
// branches name it. A transaction missing from the result could not be
// settled (its holder is not registered, cannot hold decisions, or failed).
func (p *pass) fence(ctx context.Context, fence map[string][]ids.TxID) map[ids.TxID]participant.Decision {
	out := map[ids.TxID]participant.Decision{}
	var wg sync.WaitGroup
	for name, txids := range fence {
		r, ok := p.res[name]
		h, isHolder := r.(participant.DecisionHolder)
		if _, down := p.cfg.Down[name]; down && !ok {
			continue // its branches are left: the holder cannot be asked
		}
		if !ok || !isHolder {
			p.fail(fmt.Errorf("%w: decision holder %q of %d transactions (for example %s) is not a registered holder", ErrUnknownResource, name, len(txids), txids[0]))
			continue
		}
		// Holders are fenced in parallel: one that hangs delays no other.
		wg.Add(1)
		go func() {
			defer wg.Done()
			fctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			got, err := h.Fence(fctx, p.owner(), txids)
			cancel()
			if err != nil {
				p.fail(fmt.Errorf("recovery: fence %d transactions at decision holder %s: %w", len(txids), name, err))
				return
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			p.rep.Fenced += len(txids)
			for id, d := range got {
				out[id] = d
				if d.Outcome == participant.OutcomeAbort {
					p.aborted[name] = append(p.aborted[name], id)
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// finishAll applies each found branch's decision, a few at a time.
func (p *pass) finishAll(ctx context.Context, todo []*found) {
	p.each(ctx, len(todo), func(i int) {
		f := todo[i]
		act, err := p.apply(ctx, f.kind, f.r, f.pr.GID, f.act.Age, f.holder)
		p.record(f.kind, act, err)
		if err != nil {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.unresolved[f.pr.GID.TxID] = true
			if f.stale {
				st := *act
				st.What = "unresolved"
				p.rep.Stale = append(p.rep.Stale, st)
			}
		}
	})
}

// resolveParallel bounds the commits and rollbacks a pass runs at once.
const resolveParallel = 16

// named reports whether g is one of a COMMIT record's branches; a record
// that lists none (written before branches were listed) names them all.
func named(branches []wal.Branch, g ids.GID) bool {
	if len(branches) == 0 {
		return true
	}
	for _, b := range branches {
		if b.GID == g {
			return true
		}
	}
	return false
}

// redriveHeld drives every commit a decision holder keeps for this
// coordinator whose transaction is not live here (and, in a periodic pass,
// that belongs to an earlier run or is older than the in-doubt timeout) to
// the end: commit each branch it names, note the decision in the log, and
// forget the row. Abort rows are remembered for forgetAborted.
func (p *pass) redriveHeld(ctx context.Context, names []string) {
	var wg sync.WaitGroup
	for _, n := range names {
		h, ok := p.res[n].(participant.DecisionHolder)
		if !ok {
			continue
		}
		// Holders in parallel: one that hangs delays no other.
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.redriveHolder(ctx, n, h)
		}()
	}
	wg.Wait()
}

// redriveHolder is redriveHeld for one holder.
func (p *pass) redriveHolder(ctx context.Context, n string, h participant.DecisionHolder) {
	now := p.cfg.Now()
	epoch := p.cfg.Log.Epoch()
	lctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	rows, err := h.Decisions(lctx, p.owner())
	cancel()
	if err != nil {
		p.fail(fmt.Errorf("recovery: read the decisions held by %s: %w", n, err))
		return
	}
	var commits []participant.Decision
	for _, d := range rows {
		switch {
		case p.live(d.TxID):
		case d.Outcome == participant.OutcomeAbort:
			p.mu.Lock()
			p.aborted[n] = append(p.aborted[n], d.TxID)
			p.mu.Unlock()
		case p.cfg.Live != nil && d.Epoch >= epoch && now.Sub(d.Time) < p.cfg.InDoubtTimeout:
			// This run's phase two, or its forgetter, has it.
		default:
			commits = append(commits, d)
		}
	}
	var done []ids.TxID
	var doneBranches []wal.Branch
	p.each(ctx, len(commits), func(i int) {
		d := commits[i]
		ok := true
		branches := make([]wal.Branch, 0, len(d.Branches))
		for _, b := range d.Branches {
			wb := wal.Branch{Resource: b.Resource, GID: b.GID}
			branches = append(branches, wb)
			if err := p.finish(ctx, wal.KindCommit, wb, now.Sub(d.Time), n); err != nil {
				ok = false
			}
		}
		if !ok {
			p.mu.Lock()
			p.rep.Unfinished = append(p.rep.Unfinished, d.TxID)
			p.mu.Unlock()
			return
		}
		if err := p.cfg.Log.Note(wal.Record{Kind: wal.KindCommit, TxID: d.TxID, Time: now.UTC(), Epoch: d.Epoch, Branches: branches, Holder: n}); err != nil {
			p.fail(fmt.Errorf("recovery: note %s held by %s: %w", d.TxID, n, err))
			return
		}
		p.mu.Lock()
		p.rep.Held++
		done = append(done, d.TxID)
		doneBranches = append(doneBranches, branches...)
		p.mu.Unlock()
	})
	if len(done) == 0 || ctx.Err() != nil {
		return
	}
	// The notes must be durable before the rows go.
	fctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	err = p.cfg.Log.Flush(fctx)
	if err == nil {
		err = h.Forget(fctx, done)
	}
	cancel()
	if err != nil {
		p.fail(fmt.Errorf("recovery: forget %d finished decisions at %s: %w", len(done), n, err))
		return
	}
	p.mu.Lock()
	p.rep.Forgotten += len(done)
	p.ended = append(p.ended, doneBranches...)
	p.mu.Unlock()
	p.cfg.Logger.Info("recovery: holder decisions driven to the end", "holder", n, "transactions", len(done))
}

// forgetAborted deletes the abort rows of transactions this pass left no
// prepared branch of, once every resource could be scanned. An abort row
// only guards against a late commit by a holder session that a fence has
// already ended, so it may go once its branches are rolled back.
func (p *pass) forgetAborted(ctx context.Context) {
	if p.scanFailed {
		return
	}
	for n, txids := range p.aborted {
		var gone []ids.TxID
		for _, id := range txids {
			if !p.unresolved[id] && !p.live(id) {
				gone = append(gone, id)
			}
		}
		if len(gone) == 0 {
			continue
		}
		h := p.res[n].(participant.DecisionHolder)
		fctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
		err := h.Forget(fctx, gone)
		cancel()
		if err != nil {
			p.fail(fmt.Errorf("recovery: forget %d abort rows at %s: %w", len(gone), n, err))
			continue
		}
		p.rep.Forgotten += len(gone)
	}
}
