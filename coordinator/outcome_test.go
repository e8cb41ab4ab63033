package coordinator

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

// F9: a commit compacted out of the log with a keep period shorter than
// this run's (txctl wal compact --keep 0) reads as forgotten (wait), never
// as aborted: the log keeps its compaction horizon.
func TestCompactedCommitIsNeverAnsweredAborted(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, nil)
	tx, _ := r.begin(t)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.c.ResolveTx(ctx, tx.ID()); res != CommitBranch {
		t.Fatalf("before compaction: %v", res)
	}
	if n, err := r.log.Compact(ctx, time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("compact: %d %v", n, err)
	}
	if res, err := r.c.ResolveTx(ctx, tx.ID()); res != Wait || err != nil {
		t.Fatalf("a compacted commit answered %v (%v); want wait (forgotten)", res, err)
	}
	if !r.c.Forgotten(tx.ID()) {
		t.Fatal("not forgotten")
	}
	// A transaction begun after the horizon is still presumed aborted
	// (transaction ids carry milliseconds).
	time.Sleep(2 * time.Millisecond)
	later, _ := r.c.Begin(ctx)
	if err := later.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if res, _ := r.c.ResolveTx(ctx, later.ID()); res != RollbackBranch {
		t.Fatalf("a transaction begun after the horizon: %v", res)
	}
}

// F8: a log newer than a prepared branch it should know (the old log was
// deleted and a new one made) refuses to start; a branch whose holder keeps
// its decision does not need the log.
func TestLogNewerThanAPreparedBranchRefusesToStart(t *testing.T) {
	ctx := context.Background()
	a := fake.New("a")
	id, _ := ids.NewTxID()
	g, _ := ids.NewGID(ids.DefaultPrefix, "test", id, "0")
	a.AddPrepared(g.String())
	time.Sleep(2 * time.Millisecond)
	_, err := New(ctx, Config{ID: "test", Log: wal.NewMem(), Resources: []participant.Resource{a}, RecoveryInterval: -1})
	if !errors.Is(err, ErrLogTooNew) || !strings.Contains(err.Error(), g.String()) {
		t.Fatalf("New with a log newer than a prepared branch: %v", err)
	}
	if !a.IsPrepared(g.String()) {
		t.Fatal("the branch was resolved")
	}

	h := fake.NewHolder("h")
	b, _ := ids.HolderBranch(1, "h")
	hg, _ := ids.NewGID(ids.DefaultPrefix, "test", id, b)
	h.AddPrepared(hg.String())
	time.Sleep(2 * time.Millisecond)
	c, err := New(ctx, Config{ID: "test", Log: wal.NewMem(), Resources: []participant.Resource{h}, RecoveryInterval: -1})
	if err != nil {
		t.Fatalf("a branch whose holder decides refused the start: %v", err)
	}
	c.Close()
	if !h.IsRolledBack(hg.String()) {
		t.Fatal("the holder's fence should have settled the branch at start-up")
	}
}

// F5: a forced COMMIT of a transaction presumed abort decided (no COMMIT
// record in a log that was there when it began) is refused; one begun
// before the log was created may be committed by hand, and is logged as a
// heuristic decision.
func TestForcedCommitAfterPresumedAbortIsRefused(t *testing.T) {
	ctx := context.Background()
	old, _ := ids.NewTxID()
	oldGID, _ := ids.NewGID(ids.DefaultPrefix, "test", old, "0")
	time.Sleep(2 * time.Millisecond)
	r := newRig(t, 1, nil)
	young, _ := ids.NewTxID()
	youngGID, _ := ids.NewGID(ids.DefaultPrefix, "test", young, "0")
	r.rs[0].AddPrepared(youngGID.String())
	if _, err := r.c.ResolveHeuristic(ctx, young, true, "op", "the client was sure"); !errors.Is(err, ErrPresumedAborted) {
		t.Fatalf("forced commit after presumed abort: %v", err)
	}
	if !r.rs[0].IsPrepared(youngGID.String()) {
		t.Fatal("the branch was touched")
	}
	if rep, err := r.c.ResolveHeuristic(ctx, young, false, "op", "presumed abort"); err != nil || !r.rs[0].IsRolledBack(youngGID.String()) {
		t.Fatalf("abort: %+v %v", rep, err)
	}
	r.rs[0].AddPrepared(oldGID.String())
	rep, err := r.c.ResolveHeuristic(ctx, old, true, "op", "the lost log said commit")
	if err != nil || !rep.Heuristic || !r.rs[0].IsCommitted(oldGID.String()) {
		t.Fatalf("commit of a transaction older than the log: %+v %v", rep, err)
	}
}

// F7: a recovery pass held up by a resource that never answers ends within
// its budget and does not hold an operator's call past the call's own
// deadline.
func TestAHungResourceHoldsNoAdminCall(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, func(c *Config) { c.CallTimeout = time.Second; c.RecoveryBudget = 1500 * time.Millisecond })
	entered := make(chan struct{})
	var once sync.Once
	r.rs[1].SetHooks(fake.Hooks{Prepared: func(ctx context.Context) error {
		once.Do(func() { close(entered) })
		return fake.Hang(ctx)
	}})
	passed := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := r.c.Recover(ctx)
		passed <- err
	}()
	<-entered // the pass holds the lock and waits on the hung resource
	id, _ := ids.NewTxID()
	actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := r.c.ResolveHeuristic(actx, id, false, "op", "stuck"); err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("an admin call during a hung pass: %v after %v", err, time.Since(start))
	}
	<-passed
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the pass took %v, past its budget", took)
	}
}

// A start-up pass that runs out of its budget (a resource that never
// answers) does not keep the coordinator from starting: the recovery loop
// goes on.
func TestStartUpPassOutOfBudgetStillStarts(t *testing.T) {
	hung := fake.New("hung")
	hung.SetHooks(fake.Hooks{Prepared: fake.Hang})
	start := time.Now()
	c, err := New(context.Background(), Config{ID: "test", Log: wal.NewMem(), Resources: []participant.Resource{hung},
		CallTimeout: time.Second, RecoveryBudget: 300 * time.Millisecond, RecoveryInterval: -1})
	if err != nil {
		t.Fatalf("New with a resource that never answers: %v", err)
	}
	defer c.Close()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("New took %v", took)
	}
}

// F2: a branch rolled back behind the coordinator's back between its
// prepare and its commit is not reported as committed: the caller hears a
// heuristic hazard, the log keeps COMMIT without END (recovery finds it
// again), and only an operator who accepts the hazard ends it.
func TestABranchLostBehindOurBackIsAHazardUntilAccepted(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, nil)
	tx, bs := r.begin(t)
	lost := bs[0].GID().String()
	r.rs[0].SetHooks(fake.Hooks{Commit: func(_ context.Context, g ids.GID) error {
		r.rs[0].Lose(g.String()) // a ROLLBACK PREPARED by hand
		return nil
	}})
	err := tx.Commit(ctx)
	if !errors.Is(err, ErrHeuristicHazard) || OutcomeOf(err) != Hazard {
		t.Fatalf("Commit = %v; want a heuristic hazard", err)
	}
	if r.rs[0].IsCommitted(lost) || !r.rs[1].IsCommitted(bs[1].GID().String()) {
		t.Fatal("want the lost branch not committed and the other committed")
	}
	if d, err := r.log.Lookup(tx.ID()); err != nil || d.Ended {
		t.Fatalf("decision %+v, %v: want COMMIT without END", d, err)
	}
	if st := r.c.Stats(); st.Hazards != 1 || st.OpenHazards != 1 || st.Committed != 0 {
		t.Fatalf("stats %+v", st)
	}
	r.rs[0].SetHooks(fake.Hooks{})
	rep, err := r.c.Recover(ctx)
	if err != nil || len(rep.Hazards) != 1 || rep.Redriven != 0 {
		t.Fatalf("recovery: %+v, %v", rep, err)
	}
	if st := r.c.Stats(); st.Hazards != 1 {
		t.Fatalf("a hazard found again is counted once: %+v", st)
	}
	// An order to commit does not end it by itself.
	hr, err := r.c.ResolveHeuristic(ctx, tx.ID(), true, "op", "checked")
	if err != nil || hr.Ended || len(hr.Branches) != 2 || !hr.Branches[0].Hazard || !errors.Is(hr.Branches[0].Err, ErrHeuristicHazard) {
		t.Fatalf("resolve without accepting: %+v, %v", hr, err)
	}
	hr, err = r.c.ResolveHeuristic(ctx, tx.ID(), true, "op", "row re-entered by hand", AcceptHazard())
	if err != nil || !hr.Ended {
		t.Fatalf("resolve accepting the hazard: %+v, %v", hr, err)
	}
	if d, err := r.log.Lookup(tx.ID()); err != nil || !d.Ended {
		t.Fatalf("decision %+v, %v: want ended", d, err)
	}
	if r.c.Hazard(tx.ID()) != nil || r.c.Stats().OpenHazards != 0 {
		t.Fatal("the accepted hazard is still open")
	}
}

// A lost reply to a branch's commit, retried, meets a resource that proves
// the commit: committed, not a hazard.
func TestARetriedCommitThatTheResourceProvesIsCommitted(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, nil)
	tx, _ := r.begin(t)
	var first atomic.Bool
	r.rs[0].SetHooks(fake.Hooks{Commit: func(_ context.Context, g ids.GID) error {
		if first.CompareAndSwap(false, true) {
			// Commit, then lose the reply.
			if err := r.rs[0].Commit(ctx, g); err != nil {
				return err
			}
			return participant.ErrOutcomeUnknown
		}
		return nil
	}})
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("Commit = %v", err)
	}
	if st := r.c.Stats(); st.Hazards != 0 || st.Committed != 1 {
		t.Fatalf("stats %+v", st)
	}
}
