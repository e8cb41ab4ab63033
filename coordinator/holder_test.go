package coordinator

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

// holderRig is a coordinator with a fake decision holder "h" (its default
// holder) and two fake resources.
type holderRig struct {
	c    *Coordinator
	log  *wal.Mem
	h    *fake.Holder
	a, b *fake.Resource
}

func newHolderRig(t *testing.T, mod func(*Config)) *holderRig {
	t.Helper()
	r := &holderRig{log: wal.NewMem(), h: fake.NewHolder("h"), a: fake.New("a"), b: fake.New("b")}
	cfg := Config{ID: "test", Log: r.log, Resources: []participant.Resource{r.h, r.a, r.b}, Holder: "h",
		RetryBase: time.Millisecond, RetryMax: 4 * time.Millisecond, RecoveryInterval: -1, ForgetInterval: 5 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.c = c
	t.Cleanup(func() { c.Close() })
	return r
}

// run enlists the holder and resource a, then commits.
func (r *holderRig) run(t *testing.T, opts ...TxOption) (*Tx, participant.Branch, participant.Branch, error) {
	t.Helper()
	ctx := context.Background()
	tx, err := r.c.Begin(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	hb, err := tx.Enlist(ctx, r.h)
	if err != nil {
		t.Fatal(err)
	}
	ab, err := tx.Enlist(ctx, r.a)
	if err != nil {
		t.Fatal(err)
	}
	return tx, hb, ab, tx.Commit(ctx)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestHolderCommitIsTheCommitPointAndNothingIsForced(t *testing.T) {
	r := newHolderRig(t, nil)
	tx, hb, ab, err := r.run(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []participant.Branch{hb, ab} {
		if h, ok := b.GID().Holder(); !ok || h != "h" {
			t.Fatalf("gid %s does not name the holder", b.GID())
		}
	}
	if _, ok := hb.(participant.HolderBranch); !ok {
		t.Fatalf("the branch at the holder is a %T", hb)
	}
	if !r.a.IsCommitted(ab.GID().String()) || !r.h.IsCommitted(hb.GID().String()) {
		t.Fatal("not every branch committed")
	}
	if s := r.log.Stats(); s.Appends != 0 || s.Notes != 1 {
		t.Fatalf("log stats %+v: want no forced append and one note", s)
	}
	// I2: the holder committed before any COMMIT PREPARED.
	var order []string
	for _, c := range r.h.Journal() {
		order = append(order, c.Op)
	}
	for _, c := range r.a.Journal() {
		order = append(order, "a:"+c.Op)
	}
	if fmt.Sprint(order) != "[begin-holder commit-decision a:begin a:prepare a:commit]" {
		t.Fatalf("calls %v", order)
	}
	waitFor(t, "the row to be forgotten", func() bool { return r.h.Rows() == 0 })
	if s := r.c.Stats(); s.Held != 1 || s.Forgotten != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Once the row is gone, the log's note answers.
	if res, err := r.c.ResolveTx(context.Background(), tx.ID()); err != nil || res != CommitBranch {
		t.Fatalf("ResolveTx after the row is gone: %v %v", res, err)
	}
}

func TestI5LostHolderReplyThatCommittedIsReportedCommitted(t *testing.T) {
	r := newHolderRig(t, nil)
	r.h.SetHolderHooks(fake.HolderHooks{CommitDecision: func(context.Context, participant.Decision) (error, bool) {
		return fmt.Errorf("connection reset: %w", participant.ErrOutcomeUnknown), true
	}})
	_, _, ab, err := r.run(t)
	if err != nil {
		t.Fatalf("a holder commit whose reply was lost: %v", err)
	}
	if !r.a.IsCommitted(ab.GID().String()) || r.c.Stats().Fenced != 1 {
		t.Fatalf("committed %v, stats %+v", r.a.IsCommitted(ab.GID().String()), r.c.Stats())
	}
}

func TestI5LostHolderReplyThatDidNotCommitIsAbortedAfterTheFence(t *testing.T) {
	r := newHolderRig(t, nil)
	r.h.SetHolderHooks(fake.HolderHooks{CommitDecision: func(context.Context, participant.Decision) (error, bool) {
		return fmt.Errorf("connection reset: %w", participant.ErrOutcomeUnknown), false
	}})
	_, _, ab, err := r.run(t)
	if OutcomeOf(err) != Aborted || !errors.Is(err, protocol.ErrFenced) {
		t.Fatalf("err %v", err)
	}
	if !r.a.IsRolledBack(ab.GID().String()) {
		t.Fatal("the prepared branch was not rolled back")
	}
	waitFor(t, "the abort row to be forgotten", func() bool { return r.h.Rows() == 0 })
}

func TestI5UnreachableHolderIsUnknownAndRecoveryFencesLater(t *testing.T) {
	r := newHolderRig(t, nil)
	r.h.SetHolderHooks(fake.HolderHooks{
		CommitDecision: func(context.Context, participant.Decision) (error, bool) {
			return fmt.Errorf("connection reset: %w", participant.ErrOutcomeUnknown), false
		},
		Fence: func(context.Context, []ids.TxID) error { return errors.New("holder down") },
	})
	_, _, ab, err := r.run(t)
	if OutcomeOf(err) != Unknown {
		t.Fatalf("err %v, want outcome unknown", err)
	}
	if !r.a.IsPrepared(ab.GID().String()) {
		t.Fatal("a branch was resolved without knowing the decision")
	}
	r.h.SetHolderHooks(fake.HolderHooks{})
	r.c.cfg.InDoubtTimeout = time.Nanosecond
	if _, err := r.c.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !r.a.IsRolledBack(ab.GID().String()) {
		t.Fatal("recovery did not settle the branch at the holder")
	}
}

func TestHolderThatRefusesTheDecisionAborts(t *testing.T) {
	r := newHolderRig(t, nil)
	r.h.SetHolderHooks(fake.HolderHooks{CommitDecision: func(context.Context, participant.Decision) (error, bool) {
		return fmt.Errorf("%w: duplicate key", participant.ErrDecisionRefused), false
	}})
	_, _, ab, err := r.run(t)
	if OutcomeOf(err) != Aborted || !errors.Is(err, participant.ErrDecisionRefused) {
		t.Fatalf("err %v", err)
	}
	if !r.a.IsRolledBack(ab.GID().String()) || r.c.Stats().Fenced != 0 {
		t.Fatal("a refused holder commit must roll back without a fence")
	}
}

func TestTransactionsWithoutABranchAtTheHolderLogTheirDecision(t *testing.T) {
	r := newHolderRig(t, nil)
	ctx := context.Background()
	tx, err := r.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []*fake.Resource{r.a, r.b} {
		if _, err := tx.Enlist(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if s := r.log.Stats(); s.Appends != 1 {
		t.Fatalf("log stats %+v: want the COMMIT logged", s)
	}
}

func TestJoinedBranchKeepsTheTransactionOnTheLog(t *testing.T) {
	r := newHolderRig(t, nil)
	ctx := context.Background()
	tx, err := r.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Enlist(ctx, r.h); err != nil {
		t.Fatal(err)
	}
	g, _ := ids.NewGID(ids.DefaultPrefix, "test", tx.ID(), "svc-1")
	r.b.AddPrepared(g.String())
	if err := tx.Join(r.b, g); err != nil {
		t.Fatal(err)
	}
	bad, _ := ids.NewGID(ids.DefaultPrefix, "test", tx.ID(), "svc-2-h-a")
	if err := tx.Join(r.b, bad); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("a joined branch naming another holder than the transaction's: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if s := r.log.Stats(); s.Appends != 1 || r.h.Rows() != 0 {
		t.Fatalf("log stats %+v, holder rows %d", s, r.h.Rows())
	}
}

func TestPerTransactionHolderChoice(t *testing.T) {
	r := newHolderRig(t, func(c *Config) { c.Holder = "" })
	if _, _, _, err := r.run(t); err != nil || r.log.Stats().Appends != 1 {
		t.Fatalf("no holder configured: %v, %+v", err, r.log.Stats())
	}
	if _, hb, _, err := r.run(t, WithHolder("h")); err != nil || r.log.Stats().Appends != 1 || r.log.Stats().Notes != 1 {
		t.Fatalf("WithHolder: %v, %+v", err, r.log.Stats())
	} else if h, ok := hb.GID().Holder(); !ok || h != "h" {
		t.Fatalf("gid %s", hb.GID())
	}
	if _, err := r.c.Begin(context.Background(), WithHolder("a")); !errors.Is(err, ErrConfig) {
		t.Fatalf("a fake resource that cannot hold decisions: %v", err)
	}
	if _, err := r.c.Begin(context.Background(), WithHolder("nope")); !errors.Is(err, ErrUnknownResource) {
		t.Fatalf("an unregistered holder: %v", err)
	}
	r2 := newHolderRig(t, nil)
	if _, hb, _, err := r2.run(t, WithoutHolder()); err != nil || r2.log.Stats().Appends != 1 {
		t.Fatalf("WithoutHolder: %v, %+v", err, r2.log.Stats())
	} else if _, ok := hb.GID().Holder(); ok {
		t.Fatalf("gid %s names a holder", hb.GID())
	}
}

func TestHolderConfigIsChecked(t *testing.T) {
	for _, holder := range []string{"a", "nope"} {
		_, err := New(context.Background(), Config{ID: "test", Log: wal.NewMem(), Resources: []participant.Resource{fake.New("a")}, Holder: holder, RecoveryInterval: -1})
		if err == nil {
			t.Fatalf("holder %q accepted", holder)
		}
	}
}

func TestCallerThatLeavesDuringTheHolderCommitHearsUnknown(t *testing.T) {
	r := newHolderRig(t, nil)
	release := make(chan struct{})
	r.h.SetHolderHooks(fake.HolderHooks{CommitDecision: func(ctx context.Context, _ participant.Decision) (error, bool) {
		<-release
		return nil, true
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tx, _ := r.c.Begin(ctx)
	if _, err := tx.Enlist(ctx, r.h); err != nil {
		t.Fatal(err)
	}
	ab, _ := tx.Enlist(ctx, r.a)
	err := tx.Commit(ctx)
	if OutcomeOf(err) != Unknown {
		t.Fatalf("err %v, want unknown", err)
	}
	close(release)
	waitFor(t, "phase two", func() bool { return r.a.IsCommitted(ab.GID().String()) })
	<-tx.Done()
}

func TestI3OperatorsOrderNeverContradictsTheHoldersRow(t *testing.T) {
	ctx := context.Background()
	r := newHolderRig(t, nil)
	mk := func() (ids.TxID, ids.GID) {
		id, _ := ids.NewTxID()
		b, _ := ids.HolderBranch(1, "h")
		g, _ := ids.NewGID(ids.DefaultPrefix, "test", id, b)
		r.a.AddPrepared(g.String())
		return id, g
	}
	// A commit row: an abort is refused, a commit is carried out.
	id, g := mk()
	r.h.PutRow(participant.Decision{TxID: id, Owner: "txc.test", Outcome: participant.OutcomeCommit, Epoch: 1, Time: time.Now(),
		Branches: []participant.BranchRef{{Resource: "a", GID: g}}})
	if _, err := r.c.ResolveHeuristic(ctx, id, false, "op", "stuck"); !errors.Is(err, wal.ErrConflict) {
		t.Fatalf("abort against a commit row: %v", err)
	}
	rep, err := r.c.ResolveHeuristic(ctx, id, true, "op", "stuck")
	if err != nil || rep.Holder != "h" || rep.Heuristic || !rep.Ended || !r.a.IsCommitted(g.String()) {
		t.Fatalf("commit as the row says: %+v %v", rep, err)
	}
	if _, ok := r.h.Row(id); ok {
		t.Fatal("the row outlived its resolution")
	}
	if d, err := r.log.Lookup(id); err != nil || d.Holder != "h" {
		t.Fatalf("the log's note: %+v %v", d, err)
	}
	// No row: the fence records the abort; a commit is refused.
	id, g = mk()
	if _, err := r.c.ResolveHeuristic(ctx, id, true, "op", "stuck"); !errors.Is(err, wal.ErrConflict) {
		t.Fatalf("commit of a transaction its holder never committed: %v", err)
	}
	if r.a.IsCommitted(g.String()) {
		t.Fatal("committed")
	}
	rep, err = r.c.ResolveHeuristic(ctx, id, false, "op", "stuck")
	if err != nil || !r.a.IsRolledBack(g.String()) || rep.Holder != "h" {
		t.Fatalf("abort: %+v %v", rep, err)
	}
	if _, err := r.log.Lookup(id); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("an abort decided by the holder was logged: %v", err)
	}
}

func TestJoinedBranchesNamingTheHolderKeepTheHolderPath(t *testing.T) {
	r := newHolderRig(t, nil)
	ctx := context.Background()
	tx, err := r.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Enlist(ctx, r.h); err != nil {
		t.Fatal(err)
	}
	b, _ := ids.MarkHolder("svc-0a1b2c", "h")
	g, _ := ids.NewGID(ids.DefaultPrefix, "test", tx.ID(), b)
	r.b.AddPrepared(g.String())
	if err := tx.Join(r.b, g); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if s := r.log.Stats(); s.Appends != 0 || !r.b.IsCommitted(g.String()) || r.c.Stats().Held != 1 {
		t.Fatalf("log %+v, committed %v, stats %+v", s, r.b.IsCommitted(g.String()), r.c.Stats())
	}
}

// I5: asked by transaction id alone about a transaction no run is driving
// and no holder keeps a row for, the coordinator fences its holders before
// it answers "aborted": a holder session still on its way to COMMIT (its
// coordinator died, or lost the reply) can no longer commit after that.
func TestI5OutcomeByIDFencesBeforeAnsweringAborted(t *testing.T) {
	ctx := context.Background()
	r := newHolderRig(t, nil)
	// A transaction of a run that died with its holder's COMMIT on the way.
	id, _ := ids.NewTxID()
	b, _ := ids.HolderBranch(0, "h")
	g, _ := ids.NewGID(ids.DefaultPrefix, "test", id, b)
	late, err := r.h.BeginHolder(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.c.ResolveTx(ctx, id)
	if err != nil || res != RollbackBranch {
		t.Fatalf("ResolveTx = %v, %v; want rollback after a fence", res, err)
	}
	if err := late.CommitDecision(ctx, participant.Decision{TxID: id, Owner: "txc.test", Outcome: participant.OutcomeCommit}); err == nil {
		t.Fatal("the holder committed after the coordinator answered aborted")
	}
	if d, ok := r.h.Row(id); !ok || d.Outcome != participant.OutcomeAbort {
		t.Fatalf("row %+v %v: want the fence's abort", d, ok)
	}
	// A holder that cannot be fenced: no answer.
	r.h.SetHolderHooks(fake.HolderHooks{Fence: func(context.Context, []ids.TxID) error { return errors.New("down") }})
	other, _ := ids.NewTxID()
	if res, err := r.c.ResolveTx(ctx, other); res != Wait || err == nil {
		t.Fatalf("ResolveTx with the holder down = %v, %v; want wait and an error", res, err)
	}
}
