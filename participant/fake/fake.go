// Package fake is an in-memory participant with fault hooks, for protocol
// tests only. It keeps a journal of every call so tests can check ordering
// rules such as "no commit before the decision is durable".
package fake

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// ErrInjected is the error the fault hooks return by default.
var ErrInjected = errors.New("fake: injected fault")

var _ participant.Resource = (*Resource)(nil)

// Call is one journal entry.
type Call struct {
	Op  string // begin, prepare, commit-one-phase, abort, commit, rollback
	GID string
	Err error
}

// Hooks inject faults. Each may be nil. A hook returning a non-nil error
// makes the call fail with it (after the hook, nothing else happens).
type Hooks struct {
	// Prepare may replace the vote: return (vote, err, true) to answer
	// instead of the fake.
	Prepare func(ctx context.Context, gid ids.GID) (participant.Vote, error, bool)
	// Commit runs before a phase-two commit; an error fails the attempt.
	Commit func(ctx context.Context, gid ids.GID) error
	// Rollback runs before a rollback; an error fails the attempt.
	Rollback func(ctx context.Context, gid ids.GID) error
	// OnePhase runs before a one-phase commit.
	OnePhase func(ctx context.Context, gid ids.GID) error
	// Prepared runs before a scan of the prepared branches; an error fails
	// the scan (Hang makes a resource that never answers).
	Prepared func(ctx context.Context) error
}

// Resource is a fake resource.
type Resource struct {
	name string

	mu         sync.Mutex
	hooks      Hooks
	prepared   map[string]ids.GID
	since      map[string]time.Time
	committed  map[string]bool
	rolledBack map[string]bool
	journal    []Call
}

// New returns an empty fake resource.
func New(name string) *Resource {
	return &Resource{
		name:       name,
		prepared:   map[string]ids.GID{},
		since:      map[string]time.Time{},
		committed:  map[string]bool{},
		rolledBack: map[string]bool{},
	}
}

// SetHooks replaces the fault hooks.
func (r *Resource) SetHooks(h Hooks) {
	r.mu.Lock()
	r.hooks = h
	r.mu.Unlock()
}

func (r *Resource) hooksNow() Hooks {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hooks
}

func (r *Resource) log(op string, gid ids.GID, err error) {
	r.mu.Lock()
	r.journal = append(r.journal, Call{Op: op, GID: gid.String(), Err: err})
	r.mu.Unlock()
}

// Journal returns a copy of every call so far.
func (r *Resource) Journal() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.journal...)
}

// Name implements participant.Resource.
func (r *Resource) Name() string { return r.name }

// Begin implements participant.Resource.
func (r *Resource) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	if err := gid.Validate(); err != nil {
		return nil, err
	}
	r.log("begin", gid, nil)
	return &Branch{r: r, gid: gid}, nil
}

// Commit implements participant.Resource.
func (r *Resource) Commit(ctx context.Context, gid ids.GID) error {
	return r.resolve(ctx, "commit", r.hooksNow().Commit, r.committed, gid)
}

// Rollback implements participant.Resource.
func (r *Resource) Rollback(ctx context.Context, gid ids.GID) error {
	return r.resolve(ctx, "rollback", r.hooksNow().Rollback, r.rolledBack, gid)
}

// resolve finishes a prepared branch into the set done, after the hook.
func (r *Resource) resolve(ctx context.Context, op string, hook func(context.Context, ids.GID) error, done map[string]bool, gid ids.GID) error {
	if hook != nil {
		if err := hook(ctx, gid); err != nil {
			r.log(op, gid, err)
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	if _, ok := r.prepared[gid.String()]; ok {
		delete(r.prepared, gid.String())
		done[gid.String()] = true
	} else if op != "commit" || !r.committed[gid.String()] {
		// A commit of a branch committed before is proven by its
		// tombstone (participant.Resource's contract).
		err = fmt.Errorf("fake %s: %s %s: %w", r.name, op, gid, participant.ErrUnknownBranch)
	}
	r.journal = append(r.journal, Call{Op: op, GID: gid.String(), Err: err})
	return err
}

// Prepared implements participant.Resource.
func (r *Resource) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	if h := r.hooksNow().Prepared; h != nil {
		if err := h(ctx); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]participant.Prepared, 0, len(r.prepared))
	for raw, g := range r.prepared {
		out = append(out, participant.Prepared{Raw: raw, GID: g, Since: r.since[raw]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Raw < out[j].Raw })
	return out, nil
}

// AddPrepared plants a prepared branch, as if left by an earlier run. raw
// may be a foreign identifier (gid zero).
func (r *Resource) AddPrepared(raw string) {
	g, _ := ids.ParseGID(raw)
	r.mu.Lock()
	r.prepared[raw] = g
	r.since[raw] = time.Now()
	r.mu.Unlock()
}

// IsPrepared, IsCommitted and IsRolledBack report a branch's final state.
func (r *Resource) IsPrepared(gid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.prepared[gid]
	return ok
}

// IsCommitted reports whether gid was committed (in phase two or one phase).
func (r *Resource) IsCommitted(gid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.committed[gid]
}

// IsRolledBack reports whether gid was rolled back after prepare.
func (r *Resource) IsRolledBack(gid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rolledBack[gid]
}

// Lose rolls a prepared branch back behind the coordinator's back (a
// ROLLBACK PREPARED by hand, a restore): it leaves no tombstone, so a
// later commit cannot be proven.
func (r *Resource) Lose(gid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.prepared[gid]; !ok {
		return false
	}
	delete(r.prepared, gid)
	r.rolledBack[gid] = true
	return true
}

// AddCommitted plants the tombstone of a branch committed before, as if
// by an earlier run.
func (r *Resource) AddCommitted(raw string) {
	r.mu.Lock()
	r.committed[raw] = true
	r.mu.Unlock()
}

// PreparedCount returns how many branches are prepared.
func (r *Resource) PreparedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.prepared)
}

func (r *Resource) markPrepared(g ids.GID) {
	r.mu.Lock()
	r.prepared[g.String()] = g
	r.since[g.String()] = time.Now()
	r.mu.Unlock()
}

// Branch is a fake branch.
type Branch struct {
	r    *Resource
	gid  ids.GID
	mu   sync.Mutex
	done bool
}

// GID implements participant.Branch.
func (b *Branch) GID() ids.GID { return b.gid }

// Resource implements participant.Branch.
func (b *Branch) Resource() participant.Resource { return b.r }

// Prepare implements participant.Branch.
func (b *Branch) Prepare(ctx context.Context) (participant.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return 0, participant.ErrBranchDone
	}
	b.done = true
	if h := b.r.hooksNow().Prepare; h != nil {
		if v, err, ok := h(ctx, b.gid); ok {
			if err == nil && v == participant.VoteYes {
				b.r.markPrepared(b.gid)
			}
			b.r.log("prepare", b.gid, err)
			return v, err
		}
	}
	b.r.markPrepared(b.gid)
	b.r.log("prepare", b.gid, nil)
	return participant.VoteYes, nil
}

// CommitOnePhase implements participant.Branch.
func (b *Branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return participant.ErrBranchDone
	}
	b.done = true
	if h := b.r.hooksNow().OnePhase; h != nil {
		if err := h(ctx, b.gid); err != nil {
			b.r.log("commit-one-phase", b.gid, err)
			return err
		}
	}
	b.r.mu.Lock()
	b.r.committed[b.gid.String()] = true
	b.r.mu.Unlock()
	b.r.log("commit-one-phase", b.gid, nil)
	return nil
}

// Abort implements participant.Branch.
func (b *Branch) Abort(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	b.r.log("abort", b.gid, nil)
	return nil
}

// Hang is a Prepare hook body that blocks until ctx ends, as a participant
// that never answers would.
func Hang(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}
