package faulttest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
)

// BeginHolder wraps the holder branch so that tests can act around its
// commit.
func (r *resource) BeginHolder(ctx context.Context, gid ids.GID) (participant.HolderBranch, error) {
	b, err := r.Resource.BeginHolder(ctx, gid)
	if err != nil {
		return nil, err
	}
	return &holderBranch{branch: branch{Branch: b.(*postgres.Branch), r: r}}, nil
}

type holderBranch struct{ branch }

func (b *holderBranch) CommitDecision(ctx context.Context, d participant.Decision) error {
	h := b.r.h.get()
	if h.beforeHold != nil {
		h.beforeHold(nil)
	}
	err := b.Branch.CommitDecision(ctx, d)
	if h.afterHold != nil {
		h.afterHold(err)
	}
	return err
}

// newHolderRig is newRig with bank0 holding every transfer's decision.
func newHolderRig(t *testing.T) *rig {
	return newRigWith(t, func(c *coordinator.Config) { c.Holder = "bank0" })
}

// The holder's server is killed -9 before, during and after its COMMIT
// (the commit point), and restarted: the caller hears what the databases
// end up holding, or outcome unknown, never the opposite.
func TestHolderServerKilledAroundItsCommit(t *testing.T) {
	for _, when := range []string{"before", "during", "after"} {
		t.Run(when, func(t *testing.T) {
			r := newHolderRig(t)
			var once sync.Once
			restarted := make(chan struct{})
			kill := func() {
				once.Do(func() {
					if err := r.pg[0].Kill(); err != nil {
						t.Error(err)
					}
					go func() {
						defer close(restarted)
						time.Sleep(500 * time.Millisecond)
						if err := r.pg[0].Restart(context.Background()); err != nil {
							t.Error(err)
						}
					}()
				})
			}
			r.h[0].set(func(h *hooks) {
				switch when {
				case "before":
					h.beforeHold = func(error) { kill() }
				case "during":
					h.beforeHold = func(error) { go func() { time.Sleep(time.Millisecond); kill() }() }
				case "after":
					h.afterHold = func(error) { kill() }
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := r.transfer(ctx)
			cancel()
			once.Do(func() { close(restarted) })
			<-restarted
			if s := r.c.Stats(); s.Log.Appends != 0 {
				t.Fatalf("a holder transaction forced a log write: %+v", s.Log)
			}
			r.settle(err)
		})
	}
}

// The link to the holder is cut while its COMMIT is on the way (the
// COMMIT never arrives), or the reply is lost on the way back (the COMMIT
// happened): a fence settles which, and the caller is told that.
func TestHolderCommitCutThroughTheProxy(t *testing.T) {
	t.Run("request-cut", func(t *testing.T) {
		r := newHolderRig(t)
		r.h[0].set(func(h *hooks) {
			h.beforeHold = func(error) { r.toxic(0, "cut", "reset_peer", "upstream", `"timeout": 0`) }
			h.afterHold = func(error) { r.clear(0, "cut") }
		})
		err := r.transfer(context.Background())
		if coordinator.OutcomeOf(err) == coordinator.Committed {
			t.Fatalf("committed though the holder's COMMIT never arrived: %v", err)
		}
		r.settle(err)
	})
	t.Run("reply-lost", func(t *testing.T) {
		r := newHolderRig(t)
		r.h[0].set(func(h *hooks) {
			h.beforeHold = func(error) { r.toxic(0, "drop-reply", "limit_data", "downstream", `"bytes": 0`) }
			h.afterHold = func(error) { r.clear(0, "drop-reply") }
		})
		err := r.transfer(context.Background())
		if coordinator.OutcomeOf(err) != coordinator.Committed {
			t.Fatalf("the holder committed; a fence must find it, got %v", err)
		}
		if r.c.Stats().Fenced != 1 {
			t.Fatalf("stats %+v: want one fence", r.c.Stats())
		}
		r.settle(err)
	})
}
