// Package recovery finishes what a coordinator left undone: it drives every
// logged decision without END to the end, and resolves prepared branches
// found at the registered resources (commit if the log holds COMMIT for
// their transaction, otherwise roll back: presumed abort). Live
// transactions and foreign branches are never touched.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
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
)

// Config says what a pass may touch.
type Config struct {
	Prefix        string // gid prefix (ids.DefaultPrefix if empty)
	CoordinatorID string
	Log           wal.Log
	Resources     []participant.Resource
	// Live reports transactions this process is still running; recovery
	// leaves them alone. Nil means none are live (the start-up pass).
	Live func(ids.TxID) bool
	// InDoubtTimeout: in a periodic pass (Live != nil), a prepared branch of
	// ours is resolved only once it is older than this; any prepared branch
	// older than this is reported as stale.
	InDoubtTimeout time.Duration
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
	What     string // "commit", "rollback", "skip-live", "skip-young", "foreign", "unresolved"
	Age      time.Duration
	Err      error
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
	// Stale lists prepared branches older than the in-doubt timeout that
	// this pass left prepared (foreign ones, and ours it could not resolve).
	Stale   []Action
	Actions []Action
	Errors  []error
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
	p := &pass{cfg: cfg, rep: &Report{}, res: map[string]participant.Resource{}}
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
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return p.rep, err
		}
		p.scan(ctx, p.res[n])
	}
	return p.rep, nil
}

type pass struct {
	cfg Config
	rep *Report
	res map[string]participant.Resource
}

func (p *pass) live(id ids.TxID) bool { return p.cfg.Live != nil && p.cfg.Live(id) }

// earlierRun reports whether g's transaction began before this run.
func (p *pass) earlierRun(g ids.GID) bool {
	t := g.TxID.Time()
	return !p.cfg.RunStart.IsZero() && !t.IsZero() && t.Before(p.cfg.RunStart)
}

func (p *pass) fail(err error) {
	p.rep.Errors = append(p.rep.Errors, err)
	p.cfg.Logger.Warn("recovery", "err", err)
}

// redrive drives logged decisions without END.
func (p *pass) redrive(ctx context.Context) error {
	pending, err := p.cfg.Log.Pending()
	if err != nil {
		return fmt.Errorf("recovery: read pending decisions: %w", err)
	}
	for _, d := range pending {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p.live(d.TxID) {
			continue
		}
		done := true
		for _, b := range d.Branches {
			if err := p.finish(ctx, d.Kind, b, 0); err != nil {
				done = false
			}
		}
		if !done {
			p.rep.Unfinished = append(p.rep.Unfinished, d.TxID)
			continue
		}
		if err := p.cfg.Log.End(d.TxID); err != nil {
			p.fail(fmt.Errorf("recovery: end %s: %w", d.TxID, err))
			continue
		}
		p.rep.Redriven++
		p.cfg.Logger.Info("recovery: decision driven to the end", "txid", d.TxID, "decision", d.Kind, "branches", len(d.Branches))
	}
	return nil
}

// finish applies a logged decision to one branch. A branch the resource no
// longer holds is done: it was finished by an earlier attempt (I6).
func (p *pass) finish(ctx context.Context, kind wal.Kind, b wal.Branch, age time.Duration) error {
	r, ok := p.res[b.Resource]
	if !ok {
		err := fmt.Errorf("%w: %q (branch %s)", ErrUnknownResource, b.Resource, b.GID)
		p.fail(err)
		return err
	}
	what := "commit"
	if kind != wal.KindCommit {
		what = "rollback"
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	failpoint.Hit(failpoint.RecoveryBeforeResolve)
	var err error
	if kind == wal.KindCommit {
		err = r.Commit(cctx, b.GID)
	} else {
		err = r.Rollback(cctx, b.GID)
	}
	failpoint.Hit(failpoint.RecoveryAfterResolve)
	act := Action{Resource: b.Resource, GID: b.GID.String(), TxID: b.GID.TxID, What: what, Age: age}
	switch {
	case err == nil:
		if kind == wal.KindCommit {
			p.rep.Committed++
		} else {
			p.rep.RolledBack++
		}
	case errors.Is(err, participant.ErrUnknownBranch):
		return nil
	default:
		act.Err = err
		p.fail(fmt.Errorf("recovery: %s %s at %s: %w", what, b.GID, b.Resource, err))
	}
	p.rep.Actions = append(p.rep.Actions, act)
	return act.Err
}

// scan resolves the prepared branches one resource holds.
func (p *pass) scan(ctx context.Context, r participant.Resource) {
	sctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	prepared, err := r.Prepared(sctx)
	cancel()
	if err != nil {
		p.fail(fmt.Errorf("recovery: scan %s: %w", r.Name(), err))
		return
	}
	now := p.cfg.Now()
	for _, pr := range prepared {
		if ctx.Err() != nil {
			return
		}
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
			continue
		case p.live(pr.GID.TxID):
			act.What = "skip-live"
			p.rep.SkippedLive++
			p.rep.Actions = append(p.rep.Actions, act)
			continue
		case p.cfg.Live != nil && !stale && !p.earlierRun(pr.GID):
			act.What = "skip-young"
			p.rep.SkippedYoung++
			p.rep.Actions = append(p.rep.Actions, act)
			continue
		}
		kind := wal.KindAbort // presumed abort
		d, err := p.cfg.Log.Lookup(pr.GID.TxID)
		switch {
		case err == nil:
			kind = d.Kind
			if kind == wal.KindCommit && !named(d.Branches, pr.GID) {
				// Prepared for a transaction that committed without it
				// (it joined too late and was refused): not part of the
				// decision, so presumed abort.
				kind = wal.KindAbort
			}
		case errors.Is(err, wal.ErrNotFound):
		default:
			act.What, act.Err = "unresolved", err
			p.fail(fmt.Errorf("recovery: look up %s: %w", pr.GID.TxID, err))
			p.rep.Actions = append(p.rep.Actions, act)
			if stale {
				p.rep.Stale = append(p.rep.Stale, act)
			}
			continue
		}
		if err := p.finish(ctx, kind, wal.Branch{Resource: r.Name(), GID: pr.GID}, age); err != nil && stale {
			act.What, act.Err = "unresolved", err
			p.rep.Stale = append(p.rep.Stale, act)
		}
	}
}

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
