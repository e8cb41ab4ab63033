package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

// joinPrepared plants a prepared branch at f, as a remote participant does
// before it registers, and joins it to tx.
func joinPrepared(t *testing.T, tx *Tx, f *fake.Resource, branch string) ids.GID {
	t.Helper()
	g, err := ids.NewGID(tx.c.cfg.Prefix, tx.c.cfg.ID, tx.ID(), branch)
	if err != nil {
		t.Fatal(err)
	}
	f.AddPrepared(g.String())
	if err := tx.Join(f, g); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestJoinedBranchesCommitAndRollBack(t *testing.T) {
	r := newRig(t, 0, nil)
	ctx := context.Background()
	pay, inv := fake.New("pay"), fake.New("inv")
	for _, f := range []*fake.Resource{pay, inv} {
		if err := r.c.AddResource(f); err != nil {
			t.Fatal(err)
		}
	}
	tx, _ := r.c.Begin(ctx)
	g1, g2 := joinPrepared(t, tx, pay, "pay-1"), joinPrepared(t, tx, inv, "inv-1")
	if res, _ := r.c.ResolveBranch(context.Background(), g1); res != Wait {
		t.Fatalf("an active transaction's branch: %v, want wait", res)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !pay.IsCommitted(g1.String()) || !inv.IsCommitted(g2.String()) {
		t.Fatal("joined branches not committed")
	}
	if res, _ := r.c.ResolveBranch(context.Background(), g1); res != CommitBranch {
		t.Fatalf("after COMMIT: %v", res)
	}
	stranger := g1
	stranger.Branch = "pay-2" // prepared, never joined
	if res, _ := r.c.ResolveBranch(context.Background(), stranger); res != RollbackBranch {
		t.Fatalf("a branch not named in the COMMIT record: %v, want rollback", res)
	}

	tx2, _ := r.c.Begin(ctx)
	g3 := joinPrepared(t, tx2, pay, "pay-3")
	if err := tx2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !pay.IsRolledBack(g3.String()) {
		t.Fatal("joined branch not rolled back")
	}
	if res, _ := r.c.ResolveBranch(context.Background(), g3); res != RollbackBranch {
		t.Fatalf("after rollback: %v", res)
	}
}

func TestJoinRefusals(t *testing.T) {
	r := newRig(t, 0, nil)
	ctx := context.Background()
	pay := fake.New("pay")
	tx, _ := r.c.Begin(ctx)
	g, _ := ids.NewGID(r.c.cfg.Prefix, r.c.cfg.ID, tx.ID(), "pay-1")
	if err := tx.Join(pay, g); !errors.Is(err, ErrUnknownResource) {
		t.Fatalf("unregistered resource: %v", err)
	}
	if err := r.c.AddResource(pay); err != nil {
		t.Fatal(err)
	}
	if err := r.c.AddResource(pay); err != nil {
		t.Fatalf("adding the same resource again: %v", err)
	}
	if err := r.c.AddResource(fake.New("pay")); !errors.Is(err, ErrConfig) {
		t.Fatalf("another resource under a taken name: %v", err)
	}
	other, _ := ids.NewTxID()
	for _, bad := range []ids.GID{
		{Prefix: r.c.cfg.Prefix, Coordinator: r.c.cfg.ID, TxID: other, Branch: "pay-1"},
		{Prefix: r.c.cfg.Prefix, Coordinator: "someone-else", TxID: tx.ID(), Branch: "pay-1"},
		{Prefix: r.c.cfg.Prefix, Coordinator: r.c.cfg.ID, TxID: tx.ID(), Branch: "pay 1"},
	} {
		if err := tx.Join(pay, bad); !errors.Is(err, ids.ErrBadGID) {
			t.Fatalf("join %v: %v", bad, err)
		}
	}
	if err := tx.Join(pay, g); err != nil {
		t.Fatal(err)
	}
	if err := tx.Join(pay, g); err != nil {
		t.Fatalf("the same registration delivered twice: %v, want success (I6)", err)
	}
	if n := len(tx.Status().Branches); n != 1 {
		t.Fatalf("a registration delivered twice made %d branches, want 1", n)
	}
	elsewhere := fake.New("elsewhere")
	if err := r.c.AddResource(elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := tx.Join(elsewhere, g); !errors.Is(err, ErrDuplicateBranch) {
		t.Fatalf("the same gid through another resource: %v, want ErrDuplicateBranch", err)
	}
	if _, err := r.c.ResolveBranch(context.Background(), ids.GID{Prefix: "x", Coordinator: "y", TxID: tx.ID(), Branch: "b"}); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("resolving another coordinator's gid: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	late := g
	late.Branch = "pay-late"
	if err := tx.Join(pay, late); !errors.Is(err, ErrTxDone) {
		t.Fatalf("a new branch joining after rollback: %v, want ErrTxDone", err)
	}
}

// A transaction forgotten by a restart has no decision: its branches are
// told to roll back (presumed abort); after a failed decision write the
// answer is wait.
func TestResolveAfterRestart(t *testing.T) {
	log := newRig(t, 0, nil).log
	ctx := context.Background()
	c, err := New(ctx, Config{ID: "test", Log: log, RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id, _ := ids.NewTxID()
	if res, err := c.ResolveTx(context.Background(), id); err != nil || res != RollbackBranch {
		t.Fatalf("unknown transaction: %v %v", res, err)
	}
	c.fail(errors.New("disk gone"))
	if res, err := c.ResolveTx(context.Background(), id); err != nil || res != Wait {
		t.Fatalf("after a failed decision write: %v %v, want wait", res, err)
	}
}

func TestPhasesObservedAndTraced(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	var mu sync.Mutex
	seen := map[Phase]int{}
	r := newRig(t, 2, func(c *Config) {
		c.Tracer = tp.Tracer("test")
		c.Observe = func(p Phase, d time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err == nil && d > 0 {
				seen[p]++
			}
		}
	})
	tx, _ := r.begin(t)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := seen[PhaseCommit]
		mu.Unlock()
		if n == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[PhasePrepare] != 1 || seen[PhaseDecision] != 1 || seen[PhaseCommit] != 1 {
		t.Fatalf("phases observed: %v", seen)
	}
	names := map[string]bool{}
	for _, s := range rec.Ended() {
		names[s.Name()] = true
	}
	for _, want := range []string{"txcoord.prepare", "txcoord.decision", "txcoord.commit"} {
		if !names[want] {
			t.Errorf("no %s span (got %v)", want, names)
		}
	}
}

// A committed transaction whose decision was compacted away is reported
// as forgotten (wait), never as aborted; a young transaction with no
// decision is aborted.
func TestCompactedCommitIsNotReportedAborted(t *testing.T) {
	r := newRig(t, 2, func(c *Config) { c.KeepEnded = 50 * time.Millisecond })
	ctx := context.Background()
	tx, _ := r.begin(t)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if d, err := r.log.Lookup(tx.ID()); err == nil && d.Ended {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no END")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if res, _ := r.c.ResolveTx(context.Background(), tx.ID()); res != CommitBranch {
		t.Fatalf("before compaction: %v", res)
	}
	time.Sleep(100 * time.Millisecond)
	if n, err := r.log.Compact(ctx, time.Now().Add(-r.c.cfg.KeepEnded)); n != 1 || err != nil {
		t.Fatalf("compact: %d %v", n, err)
	}
	if res, _ := r.c.ResolveTx(context.Background(), tx.ID()); res != Wait {
		t.Fatalf("after compaction: %v; want wait (forgotten), never rollback", res)
	}
	young, _ := ids.NewTxID()
	if res, _ := r.c.ResolveTx(context.Background(), young); res != RollbackBranch {
		t.Fatalf("a young transaction with no decision: %v", res)
	}
}

// A single joined branch is not committed in one phase: its participant
// prepared it elsewhere, so a lost commit reply could not be told from
// "not committed"; its COMMIT is logged, and anyone asking later (the
// client, the participant) hears committed.
func TestSingleJoinedBranchIsLogged(t *testing.T) {
	r := newRig(t, 0, nil)
	ctx := context.Background()
	pay := fake.New("pay")
	if err := r.c.AddResource(pay); err != nil {
		t.Fatal(err)
	}
	tx, _ := r.c.Begin(ctx)
	g := joinPrepared(t, tx, pay, "pay-1")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !pay.IsCommitted(g.String()) {
		t.Fatal("the joined branch is not committed")
	}
	if d, err := r.log.Lookup(tx.ID()); err != nil || d.Kind != wal.KindCommit {
		t.Fatalf("log after committing one joined branch: %+v, %v; want its COMMIT record", d, err)
	}
	if res, _ := r.c.ResolveTx(context.Background(), tx.ID()); res != CommitBranch {
		t.Fatalf("asked afterwards: %v, want commit", res)
	}
	if st := r.c.Stats(); st.OnePhase != 0 {
		t.Fatalf("%d one-phase commits, want 0", st.OnePhase)
	}
}

// A transaction refused because the coordinator closed has an outcome
// like any other: Done is closed and Result answers (a server waiting on
// them would otherwise hang).
func TestRefusedTransactionIsDone(t *testing.T) {
	r := newRig(t, 1, nil)
	ctx := context.Background()
	tx, err := r.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Enlist(ctx, r.rs[0]); err != nil {
		t.Fatal(err)
	}
	r.c.Close()
	err = tx.Commit(ctx)
	if !errors.Is(err, ErrAborted) || !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after Close: %v, want aborted (closed)", err)
	}
	select {
	case <-tx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed for a refused transaction")
	}
	if got := tx.Result(); got == nil || got.Error() != err.Error() {
		t.Fatalf("Result = %v, want what Commit returned (%v)", got, err)
	}
}

// A rollback that hangs past the call timeout, ignoring its context (a
// database that swallows packets), does not keep the caller from hearing
// "aborted": it is answered after CallTimeout and a second, whichever
// branch hangs.
func TestHungRollbackDoesNotHoldTheCaller(t *testing.T) {
	for hang := range 2 {
		r := newRig(t, 2, func(c *Config) { c.CallTimeout = 100 * time.Millisecond })
		ctx := context.Background()
		release := make(chan struct{})
		stop := time.AfterFunc(5*time.Second, func() { close(release) }) // the hang ends at last
		r.rs[1-hang].SetHooks(fake.Hooks{Prepare: func(context.Context, ids.GID) (participant.Vote, error, bool) {
			return participant.VoteNo, errors.New("no, on purpose"), true
		}})
		r.rs[hang].SetHooks(fake.Hooks{Rollback: func(context.Context, ids.GID) error {
			<-release // ignores its context
			return nil
		}})
		tx, err := r.c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range r.rs {
			if _, err := tx.Enlist(ctx, f); err != nil {
				t.Fatal(err)
			}
		}
		began := time.Now()
		err = tx.Commit(ctx)
		took := time.Since(began)
		if stop.Stop() {
			close(release)
		}
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("branch %d hanging: commit = %v, want aborted", hang, err)
		}
		if took > 3*time.Second {
			t.Fatalf("branch %d hanging: the caller waited %v for a rollback that hung", hang, took)
		}
	}
}

// After Close the coordinator no longer holds its id: it runs no recovery
// pass and logs no heuristic decision.
func TestNoRecoveryAfterClose(t *testing.T) {
	r := newRig(t, 1, nil)
	r.c.Close()
	if _, err := r.c.Recover(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Recover after Close: %v, want ErrClosed", err)
	}
}

// Only an error that may hide a written record stops the coordinator
// from deciding; a record refused or withdrawn before it was written does
// not.
func TestLogFailureKinds(t *testing.T) {
	for _, c := range []struct {
		err  error
		fail bool
	}{
		{fmt.Errorf("append: %w", context.Canceled), false},
		{context.DeadlineExceeded, false},
		{wal.ErrClosed, false},
		{wal.ErrConflict, false},
		{wal.ErrBadRecord, false},
		{errors.New("fsync: input/output error"), true},
	} {
		if got := logFailure(c.err); got != c.fail {
			t.Errorf("logFailure(%v) = %v, want %v", c.err, got, c.fail)
		}
	}
}
