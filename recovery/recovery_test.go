package recovery

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

func gid(t *testing.T, coord string, branch string) ids.GID {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID(ids.DefaultPrefix, coord, id, branch)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func sameTx(t *testing.T, g ids.GID, branch string) ids.GID {
	t.Helper()
	h, err := ids.NewGID(g.Prefix, g.Coordinator, g.TxID, branch)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func commitRecord(t *testing.T, log wal.Log, bs ...wal.Branch) {
	t.Helper()
	if _, err := log.Append(context.Background(), wal.Record{Kind: wal.KindCommit, TxID: bs[0].GID.TxID, Branches: bs}); err != nil {
		t.Fatal(err)
	}
}

func TestPendingCommitIsDrivenToTheEnd(t *testing.T) {
	log := wal.NewMem()
	a, b := fake.New("a"), fake.New("b")
	g0 := gid(t, "c1", "0")
	g1 := sameTx(t, g0, "1")
	a.AddPrepared(g0.String())
	b.AddPrepared(g1.String())
	commitRecord(t, log, wal.Branch{Resource: "a", GID: g0}, wal.Branch{Resource: "b", GID: g1})
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	if !a.IsCommitted(g0.String()) || !b.IsCommitted(g1.String()) || rep.Redriven != 1 {
		t.Fatalf("report %+v", rep)
	}
	d, _ := log.Lookup(g0.TxID)
	if !d.Ended {
		t.Fatal("END not written")
	}
}

func TestI3RecoveryNeverContradictsALoggedCommit(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	g := gid(t, "c1", "0")
	a.AddPrepared(g.String())
	commitRecord(t, log, wal.Branch{Resource: "a", GID: g})
	// Old enough to be resolved by a periodic pass too.
	cfg := Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}, Live: func(ids.TxID) bool { return false }, Now: func() time.Time { return time.Now().Add(time.Hour) }, InDoubtTimeout: time.Minute}
	a.SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error { return errors.New("down") }})
	rep, _ := Pass(context.Background(), cfg)
	if a.IsRolledBack(g.String()) || !a.IsPrepared(g.String()) || len(rep.Unfinished) != 1 {
		t.Fatalf("a logged COMMIT was contradicted or dropped: %+v", rep)
	}
	a.SetHooks(fake.Hooks{})
	if _, err := Pass(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if !a.IsCommitted(g.String()) {
		t.Fatal("not committed once the resource came back")
	}
}

func TestI4PresumedAbortRollsBackOrphansAndReportsStaleOnes(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	orphan := gid(t, "c1", "0")
	a.AddPrepared(orphan.String())
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}})
	if err != nil {
		t.Fatal(err)
	}
	if !a.IsRolledBack(orphan.String()) || rep.RolledBack != 1 || a.PreparedCount() != 0 {
		t.Fatalf("orphan not rolled back: %+v", rep)
	}
}

func TestI7ForeignBranchesAreNeverTouched(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	other := gid(t, "someone-else", "0")
	a.AddPrepared(other.String())
	a.AddPrepared("my_app_prepared_xact")
	otherPrefix, _ := ids.NewGID("xyz", "c1", other.TxID, "0")
	a.AddPrepared(otherPrefix.String())
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}, InDoubtTimeout: time.Nanosecond, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if a.PreparedCount() != 3 || rep.Foreign != 3 {
		t.Fatalf("foreign branches touched: %+v", rep)
	}
	for _, c := range a.Journal() {
		if c.Op == "commit" || c.Op == "rollback" {
			t.Fatalf("call on a foreign branch: %+v", c)
		}
	}
	// All three are older than the in-doubt timeout: reported, not touched.
	if len(rep.Stale) != 3 {
		t.Fatalf("stale %+v", rep.Stale)
	}
}

func TestLiveAndYoungBranchesAreLeftAlone(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	live := gid(t, "c1", "0")
	young := gid(t, "c1", "0")
	a.AddPrepared(live.String())
	a.AddPrepared(young.String())
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a},
		Live: func(id ids.TxID) bool { return id == live.TxID }, InDoubtTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if a.PreparedCount() != 2 || rep.SkippedLive != 1 || rep.SkippedYoung != 1 {
		t.Fatalf("report %+v", rep)
	}
}

func TestI6CommitOfAProvenCommittedBranchIsDone(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	g := gid(t, "c1", "0")
	commitRecord(t, log, wal.Branch{Resource: "a", GID: g})
	a.AddCommitted(g.String()) // committed before: the resource proves it
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}})
	if err != nil || rep.Redriven != 1 || len(rep.Errors) != 0 || len(rep.Hazards) != 0 {
		t.Fatalf("report %+v err %v", rep, err)
	}
}

// F2: a branch the resource neither holds prepared nor can prove
// committed is a hazard: never counted as committed, never ended.
func TestUnprovenCommitIsAHazardAndTheDecisionStays(t *testing.T) {
	log := wal.NewMem()
	a, b := fake.New("a"), fake.New("b")
	ga, gb := gid(t, "c1", "0"), gid(t, "c1", "1")
	gb.TxID = ga.TxID
	b.AddPrepared(gb.String())
	commitRecord(t, log, wal.Branch{Resource: "a", GID: ga}, wal.Branch{Resource: "b", GID: gb}) // a's branch was lost
	cfg := Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a, b}}
	for pass := 1; pass <= 2; pass++ {
		rep, err := Pass(context.Background(), cfg)
		if err != nil || rep.Redriven != 0 || len(rep.Hazards) != 1 || len(rep.Errors) != 0 {
			t.Fatalf("pass %d: report %+v err %v", pass, rep, err)
		}
		h := rep.Hazards[0]
		if h.What != "hazard" || h.Resource != "a" || h.GID != ga.String() || !errors.Is(h.Err, ErrHazard) {
			t.Fatalf("pass %d: hazard %+v", pass, h)
		}
		if len(rep.Unfinished) != 1 || rep.Unfinished[0] != ga.TxID {
			t.Fatalf("pass %d: unfinished %v", pass, rep.Unfinished)
		}
	}
	if !b.IsCommitted(gb.String()) {
		t.Fatal("the branch still prepared was not committed")
	}
	if d, err := log.Lookup(ga.TxID); err != nil || d.Ended {
		t.Fatalf("decision %+v, %v: want COMMIT without END", d, err)
	}
}

func TestUnregisteredResourceKeepsTheDecisionPending(t *testing.T) {
	log := wal.NewMem()
	g := gid(t, "c1", "0")
	commitRecord(t, log, wal.Branch{Resource: "gone", GID: g})
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unfinished) != 1 || !errors.Is(rep.Err(), ErrUnknownResource) {
		t.Fatalf("report %+v", rep)
	}
	if p, _ := log.Pending(); len(p) != 1 {
		t.Fatal("decision dropped")
	}
}

func TestBranchesOfAnEarlierRunAreResolvedWithoutWaiting(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	old := gid(t, "c1", "0")
	a.AddPrepared(old.String())
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a},
		Live: func(ids.TxID) bool { return false }, InDoubtTimeout: time.Hour, RunStart: time.Now().Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if !a.IsRolledBack(old.String()) || rep.SkippedYoung != 0 {
		t.Fatalf("a branch from an earlier run waited for the in-doubt timeout: %+v", rep)
	}
}

// A branch prepared for a transaction whose COMMIT record does not name it
// (it registered after the commit began and was refused) is not part of
// the decision: it is rolled back, while the named one commits.
func TestBranchNotNamedInTheCommitIsRolledBack(t *testing.T) {
	log := wal.NewMem()
	a := fake.New("a")
	named := gid(t, "c1", "a-1")
	late := sameTx(t, named, "a-2")
	a.AddPrepared(named.String())
	a.AddPrepared(late.String())
	commitRecord(t, log, wal.Branch{Resource: "a", GID: named})
	if _, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}}); err != nil {
		t.Fatal(err)
	}
	if !a.IsCommitted(named.String()) {
		t.Fatal("the branch the COMMIT record names is not committed")
	}
	if !a.IsRolledBack(late.String()) {
		t.Fatal("a branch the COMMIT record does not name was committed or left prepared, want rolled back")
	}
}

// heldTx returns the gids of a transaction whose decision holder is h:
// the holder's own branch (0) and one other (1).
func heldTx(t *testing.T, coord, h string) (ids.GID, ids.GID) {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(n int) ids.GID {
		b, err := ids.HolderBranch(n, h)
		if err != nil {
			t.Fatal(err)
		}
		g, err := ids.NewGID(ids.DefaultPrefix, coord, id, b)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	return mk(0), mk(1)
}

func TestHolderCommitRowIsDrivenToTheEndAndForgotten(t *testing.T) {
	log := wal.NewMem()
	h, b := fake.NewHolder("h"), fake.New("b")
	_, g1 := heldTx(t, "c1", "h")
	b.AddPrepared(g1.String())
	h.PutRow(participant.Decision{TxID: g1.TxID, Owner: "txc.c1", Outcome: participant.OutcomeCommit, Epoch: 1, Time: time.Now(),
		Branches: []participant.BranchRef{{Resource: "b", GID: g1}}})
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{h, b}})
	if err != nil {
		t.Fatal(err)
	}
	if !b.IsCommitted(g1.String()) || rep.Held != 1 || rep.Forgotten != 1 || h.Rows() != 0 {
		t.Fatalf("committed %v, report %+v, rows %d", b.IsCommitted(g1.String()), rep, h.Rows())
	}
	d, err := log.Lookup(g1.TxID)
	if err != nil || d.Kind != wal.KindCommit || d.Holder != "h" || !d.Ended {
		t.Fatalf("the log's note: %+v %v", d, err)
	}
}

func TestNoCommitRowAtTheHolderAfterAFenceMeansAbort(t *testing.T) {
	log := wal.NewMem()
	h, b := fake.NewHolder("h"), fake.New("b")
	_, g1 := heldTx(t, "c1", "h")
	b.AddPrepared(g1.String())
	rep, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{h, b}})
	if err != nil {
		t.Fatal(err)
	}
	if !b.IsRolledBack(g1.String()) || rep.Fenced != 1 || rep.RolledBack != 1 {
		t.Fatalf("report %+v", rep)
	}
	if h.Rows() != 0 || rep.Forgotten != 1 {
		t.Fatalf("the fence's abort row was not forgotten once the branch rolled back: %d rows, %+v", h.Rows(), rep)
	}
	if _, err := log.Lookup(g1.TxID); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("an abort was logged: %v", err)
	}
}

func TestUnreachableHolderDecidesNothing(t *testing.T) {
	log := wal.NewMem()
	h, b := fake.NewHolder("h"), fake.New("b")
	_, g1 := heldTx(t, "c1", "h")
	b.AddPrepared(g1.String())
	h.SetHolderHooks(fake.HolderHooks{Fence: func(context.Context, []ids.TxID) error { return errors.New("holder down") }})
	cfg := Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{h, b}, InDoubtTimeout: time.Minute,
		Live: func(ids.TxID) bool { return false }, Now: func() time.Time { return time.Now().Add(time.Hour) }}
	rep, _ := Pass(context.Background(), cfg)
	if !b.IsPrepared(g1.String()) || len(rep.Errors) == 0 || len(rep.Stale) != 1 || rep.Stale[0].What != "unresolved" {
		t.Fatalf("prepared %v, report %+v", b.IsPrepared(g1.String()), rep)
	}
	// Unregistered holder: the same.
	rep, _ = Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{b}})
	if !b.IsPrepared(g1.String()) || len(rep.Errors) == 0 {
		t.Fatalf("an unregistered holder: prepared %v, report %+v", b.IsPrepared(g1.String()), rep)
	}
}

func TestLoggedCommitOfAHolderMarkedBranchNeedsNoFence(t *testing.T) {
	log := wal.NewMem()
	h, b := fake.NewHolder("h"), fake.New("b")
	g0, g1 := heldTx(t, "c1", "h")
	b.AddPrepared(g1.String())
	// The transaction named a holder but took the logged path.
	commitRecord(t, log, wal.Branch{Resource: "h", GID: g0}, wal.Branch{Resource: "b", GID: g1})
	h.SetHolderHooks(fake.HolderHooks{Fence: func(context.Context, []ids.TxID) error { t.Error("fenced"); return nil }})
	if _, err := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{h, b}}); err != nil {
		t.Fatal(err)
	}
	if !b.IsCommitted(g1.String()) {
		t.Fatal("the logged commit was not applied")
	}
}

func TestYoungHolderRowsOfThisRunAndLiveOnesAreLeftAlone(t *testing.T) {
	log := wal.NewMem()
	h, b := fake.NewHolder("h"), fake.New("b")
	_, g1 := heldTx(t, "c1", "h")
	_, g2 := heldTx(t, "c1", "h")
	b.AddPrepared(g1.String())
	b.AddPrepared(g2.String())
	for _, g := range []ids.GID{g1, g2} {
		h.PutRow(participant.Decision{TxID: g.TxID, Owner: "txc.c1", Outcome: participant.OutcomeCommit, Epoch: log.Epoch(), Time: time.Now(),
			Branches: []participant.BranchRef{{Resource: "b", GID: g}}})
	}
	cfg := Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{h, b}, InDoubtTimeout: time.Minute,
		Live: func(id ids.TxID) bool { return id == g2.TxID }}
	if _, err := Pass(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if b.IsCommitted(g1.String()) || b.IsCommitted(g2.String()) || h.Rows() != 2 {
		t.Fatalf("a young or live holder decision was touched: rows %d", h.Rows())
	}
}

func TestBranchBegunBeforeTheLogIsNeverPresumedAborted(t *testing.T) {
	a := fake.New("a")
	g := gid(t, "c1", "0")
	a.AddPrepared(g.String())
	time.Sleep(2 * time.Millisecond)
	log := wal.NewMem()
	rep, _ := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: []participant.Resource{a}, LogCreated: log.Created()})
	if !a.IsPrepared(g.String()) || !errors.Is(rep.Err(), ErrBeforeLog) {
		t.Fatalf("prepared %v, report %+v", a.IsPrepared(g.String()), rep)
	}
}

// F7: resources that never answer cost a pass one call timeout, asked in
// parallel with the others, which are resolved all the same.
func TestAHungResourceDoesNotDelayRecoveryAtTheOthers(t *testing.T) {
	log := wal.NewMem()
	var rs []participant.Resource
	var orphans []ids.GID
	for _, n := range []string{"a", "b", "c"} {
		f := fake.New(n)
		g := gid(t, "c1", "0")
		f.AddPrepared(g.String())
		orphans = append(orphans, g)
		rs = append(rs, f)
	}
	// Six that never answer: asked one after the other they would cost
	// the pass six call timeouts.
	for i := 0; i < 6; i++ {
		hung := fake.New("hung" + strconv.Itoa(i))
		hung.SetHooks(fake.Hooks{Prepared: fake.Hang})
		rs = append(rs, hung)
	}
	start := time.Now()
	rep, _ := Pass(context.Background(), Config{CoordinatorID: "c1", Log: log, Resources: rs, CallTimeout: 300 * time.Millisecond})
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the pass took %v with six resources hung", took)
	}
	for i, g := range orphans {
		if !rs[i].(*fake.Resource).IsRolledBack(g.String()) {
			t.Fatalf("%s was not resolved while another resource hung", g)
		}
	}
	if rep.RolledBack != 3 || len(rep.Errors) != 6 {
		t.Fatalf("report %+v", rep)
	}
}
