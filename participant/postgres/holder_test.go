package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
)

const testOwner = "txc.test"

var holderTableSeq atomic.Int64

// openHolder opens a resource on appDB with a decision table of its own.
func openHolder(t *testing.T, driver string) *Resource {
	t.Helper()
	ctx := testCtx(t)
	name := fmt.Sprintf("holder-%d", resourceSeq.Add(1))
	r, err := Open(ctx, name, driver, srv.DSN(appDB), Options{DecisionTable: fmt.Sprintf("decisions_%d", holderTableSeq.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	if err := r.HolderReady(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func beginHolder(t *testing.T, r *Resource, g ids.GID) *Branch {
	t.Helper()
	hb, err := r.BeginHolder(testCtx(t), g)
	if err != nil {
		t.Fatal(err)
	}
	return hb.(*Branch)
}

// holderGIDs returns the holder's gid and one other branch's, of one new
// transaction.
func holderGIDs(t *testing.T, holder string) (ids.GID, ids.GID) {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(n int) ids.GID {
		b, err := ids.HolderBranch(n, holder)
		if err != nil {
			t.Fatal(err)
		}
		g, err := ids.NewGID("txc", "test", id, b)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	return mk(0), mk(1)
}

func commitDecision(g, other ids.GID) participant.Decision {
	return participant.Decision{TxID: g.TxID, Owner: testOwner, Outcome: participant.OutcomeCommit, Epoch: 3,
		Branches: []participant.BranchRef{{Resource: "other", GID: other}}}
}

func rowCount(t *testing.T, r *Resource, table string, key string) int {
	t.Helper()
	var n int
	if err := r.DB().QueryRowContext(testCtx(t), "SELECT count(*) FROM "+table+" WHERE k = $1", key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestHolderCommitsItsWorkAndTheDecisionTogether(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		r := openHolder(t, driver)
		tbl := newTable(t, r.DB())
		g, other := holderGIDs(t, r.Name())
		b := beginHolder(t, r, g)
		mustExec(t, b, "INSERT INTO "+tbl+" VALUES ('x')")
		if err := b.CommitDecision(ctx, commitDecision(g, other)); err != nil {
			t.Fatal(err)
		}
		if rowCount(t, r, tbl, "x") != 1 {
			t.Fatal("the holder's work is not committed")
		}
		d, err := r.HeldDecision(ctx, g.TxID)
		if err != nil {
			t.Fatal(err)
		}
		if d.Outcome != participant.OutcomeCommit || d.Owner != testOwner || d.Epoch != 3 || len(d.Branches) != 1 ||
			d.Branches[0] != (participant.BranchRef{Resource: "other", GID: other}) || d.Time.IsZero() {
			t.Fatalf("decision %+v", d)
		}
		all, err := r.Decisions(ctx, testOwner)
		if err != nil || len(all) != 1 || all[0].TxID != g.TxID {
			t.Fatalf("Decisions = %+v, %v", all, err)
		}
		// A fence after the commit finds it and changes nothing.
		got, err := r.Fence(ctx, testOwner, []ids.TxID{g.TxID})
		if err != nil || got[g.TxID].Outcome != participant.OutcomeCommit {
			t.Fatalf("fence after commit: %+v %v", got, err)
		}
		if err := r.Forget(ctx, []ids.TxID{g.TxID}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.HeldDecision(ctx, g.TxID); !errors.Is(err, participant.ErrNoDecision) {
			t.Fatalf("after Forget: %v", err)
		}
		if err := b.CommitDecision(ctx, commitDecision(g, other)); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("a second CommitDecision: %v", err)
		}
	})
}

func TestFenceEndsAnOpenHolderAndItsCommitIsNeverRecorded(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		r := openHolder(t, driver)
		tbl := newTable(t, r.DB())
		g, other := holderGIDs(t, r.Name())
		b := beginHolder(t, r, g)
		mustExec(t, b, "INSERT INTO "+tbl+" VALUES ('x')")
		got, err := r.Fence(ctx, testOwner, []ids.TxID{g.TxID})
		if err != nil {
			t.Fatal(err)
		}
		if got[g.TxID].Outcome != participant.OutcomeAbort {
			t.Fatalf("fence of an open holder: %+v", got)
		}
		err = b.CommitDecision(ctx, commitDecision(g, other))
		if err == nil {
			t.Fatal("a holder committed after the fence")
		}
		if rowCount(t, r, tbl, "x") != 0 {
			t.Fatal("the fenced holder's work is visible")
		}
		if d, err := r.HeldDecision(ctx, g.TxID); err != nil || d.Outcome != participant.OutcomeAbort {
			t.Fatalf("after the fence: %+v %v", d, err)
		}
	})
}

func TestFenceFirstRefusesALaterHolderCommit(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		r := openHolder(t, driver)
		tbl := newTable(t, r.DB())
		g, other := holderGIDs(t, r.Name())
		if _, err := r.Fence(ctx, testOwner, []ids.TxID{g.TxID}); err != nil {
			t.Fatal(err)
		}
		// A coordinator presumed dead begins and commits only now.
		b := beginHolder(t, r, g)
		mustExec(t, b, "INSERT INTO "+tbl+" VALUES ('late')")
		err := b.CommitDecision(ctx, commitDecision(g, other))
		if !errors.Is(err, participant.ErrDecisionRefused) || !errors.Is(err, ErrRolledBack) || SQLState(err) != "23505" {
			t.Fatalf("late holder commit: %v", err)
		}
		if rowCount(t, r, tbl, "late") != 0 {
			t.Fatal("the refused holder's work is visible")
		}
		// The session went back to the pool clean.
		if _, err := r.DB().ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ('after')"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestHolderBranchThatSawAnErrorRefusesTheDecision(t *testing.T) {
	ctx := testCtx(t)
	r := openHolder(t, DriverPQ)
	g, other := holderGIDs(t, r.Name())
	b := beginHolder(t, r, g)
	if _, err := b.ExecContext(ctx, "SELECT * FROM no_such_table"); err == nil {
		t.Fatal("expected an error")
	}
	err := b.CommitDecision(ctx, commitDecision(g, other))
	if !errors.Is(err, participant.ErrDecisionRefused) {
		t.Fatalf("CommitDecision after an error: %v", err)
	}
	if _, err := r.HeldDecision(ctx, g.TxID); !errors.Is(err, participant.ErrNoDecision) {
		t.Fatalf("a refused decision was recorded: %v", err)
	}
}

func TestLostHolderCommitReplyIsSettledByTheFence(t *testing.T) {
	ctx := testCtx(t)
	r := openHolder(t, DriverPQ)
	g, other := holderGIDs(t, r.Name())
	// Another session holds an uncommitted row under the same key, so the
	// holder's INSERT waits; cancelling it loses the reply.
	blocker, err := r.DB().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer discard(blocker)
	if _, err := blocker.ExecContext(ctx, "BEGIN; INSERT INTO "+r.DecisionTable()+" (txid, coordinator, outcome, epoch) VALUES ('"+g.TxID.String()+"', 'x', 'A', 0)"); err != nil {
		t.Fatal(err)
	}
	b := beginHolder(t, r, g)
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = b.CommitDecision(cctx, commitDecision(g, other))
	if !errors.Is(err, participant.ErrOutcomeUnknown) {
		t.Fatalf("a holder commit whose reply is lost: %v", err)
	}
	if _, err := blocker.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	got, err := r.Fence(ctx, testOwner, []ids.TxID{g.TxID})
	if err != nil {
		t.Fatal(err)
	}
	if got[g.TxID].Outcome != participant.OutcomeAbort {
		t.Fatalf("the fence after a cancelled holder commit: %+v", got[g.TxID])
	}
}

func TestFenceSettlesManyTransactionsAtOnce(t *testing.T) {
	ctx := testCtx(t)
	r := openHolder(t, DriverPQ)
	var txids []ids.TxID
	committed := map[ids.TxID]bool{}
	for i := 0; i < fenceChunk+10; i++ {
		g, other := holderGIDs(t, r.Name())
		txids = append(txids, g.TxID)
		if i%3 == 0 {
			b := beginHolder(t, r, g)
			if err := b.CommitDecision(ctx, commitDecision(g, other)); err != nil {
				t.Fatal(err)
			}
			committed[g.TxID] = true
		}
	}
	got, err := r.Fence(ctx, testOwner, txids)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range txids {
		want := participant.OutcomeAbort
		if committed[id] {
			want = participant.OutcomeCommit
		}
		if got[id].Outcome != want {
			t.Fatalf("%s: %v, want %v", id, got[id].Outcome, want)
		}
	}
	all, err := r.Decisions(ctx, testOwner)
	if err != nil || len(all) != len(txids) {
		t.Fatalf("Decisions: %d rows, %v", len(all), err)
	}
	if err := r.Forget(ctx, txids); err != nil {
		t.Fatal(err)
	}
	if all, _ := r.Decisions(ctx, testOwner); len(all) != 0 {
		t.Fatalf("%d rows after Forget", len(all))
	}
}

func TestMalformedDecisionRowIsAClearError(t *testing.T) {
	ctx := testCtx(t)
	r := openHolder(t, DriverPQ)
	id, _ := ids.NewTxID()
	if _, err := r.DB().ExecContext(ctx, "INSERT INTO "+r.DecisionTable()+" (txid, coordinator, outcome, epoch, branches) VALUES ($1, $2, 'C', 1, '{junk}')", id.String(), testOwner); err != nil {
		t.Fatal(err)
	}
	_, err := r.HeldDecision(ctx, id)
	if !errors.Is(err, ErrBadDecisionRow) || !strings.Contains(err.Error(), "junk") {
		t.Fatalf("a row with a malformed branch: %v", err)
	}
	if _, err := r.Decisions(ctx, testOwner); !errors.Is(err, ErrBadDecisionRow) {
		t.Fatalf("Decisions over a malformed row: %v", err)
	}
}

func TestHolderReadyNamesTheMissingPrivilege(t *testing.T) {
	ctx := testCtx(t)
	admin := rawDB(t, srv, appDB)
	role := fmt.Sprintf("weak%d", holderTableSeq.Add(1))
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN",
		"GRANT CONNECT ON DATABASE " + appDB + " TO " + role,
		"GRANT USAGE ON SCHEMA public TO " + role,
	} {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	dsn := strings.Replace(srv.DSN(appDB), "postgres://postgres@", "postgres://"+role+"@", 1)
	if dsn == srv.DSN(appDB) {
		t.Skipf("cannot derive a DSN for another role from %q", dsn)
	}
	// Markers are made in Open: without CREATE it names the table.
	_, err := Open(ctx, "weak", DriverPQ, dsn, Options{MarkerTable: role + "_markers"})
	if !errors.Is(err, ErrHolderPrivilege) || !strings.Contains(err.Error(), "marker table") || !strings.Contains(err.Error(), "GRANT SELECT, INSERT, DELETE") {
		t.Fatalf("Open without CREATE for the marker table: %v", err)
	}
	r, err := Open(ctx, "weak", DriverPQ, dsn, Options{DecisionTable: role + "_decisions", NoMarkers: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = r.HolderReady(ctx)
	if !errors.Is(err, ErrHolderPrivilege) || !strings.Contains(err.Error(), "CREATE") || !strings.Contains(err.Error(), "GRANT SELECT, INSERT, DELETE") {
		t.Fatalf("no CREATE privilege: %v", err)
	}
	if _, err := admin.ExecContext(ctx, strings.Replace(r.decisionDDL(), "IF NOT EXISTS ", "", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecContext(ctx, "GRANT SELECT, INSERT ON "+r.DecisionTable()+" TO "+role); err != nil {
		t.Fatal(err)
	}
	err = r.HolderReady(ctx)
	if !errors.Is(err, ErrHolderPrivilege) || !strings.Contains(err.Error(), "lacks DELETE") {
		t.Fatalf("no DELETE privilege: %v", err)
	}
	if _, err := admin.ExecContext(ctx, "GRANT DELETE ON "+r.DecisionTable()+" TO "+role); err != nil {
		t.Fatal(err)
	}
	if err := r.HolderReady(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestOpenWaitWaitsForAServerThatIsStarting(t *testing.T) {
	ctx := testCtx(t)
	s := pgtest.StartT(t, pgtest.Options{NoFsync: true})
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = s.Restart(context.Background())
	}()
	waits := 0
	r, err := OpenWait(ctx, "late", DriverPQ, s.DSN("postgres"), Options{}, 20*time.Second, func(error, time.Duration) { waits++ })
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if waits == 0 {
		t.Fatal("the server was down, yet OpenWait never waited")
	}
	// Not waited for: an error that waiting cannot cure.
	start := time.Now()
	if _, err := OpenWait(ctx, "wrong", DriverPQ, s.DSN("no_such_db"), Options{}, 20*time.Second, nil); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a missing database: %v after %v", err, time.Since(start))
	}
}

// FuzzParseDecision feeds decision rows as a database could answer them: a
// row is either read whole and consistent, or refused with an error.
func FuzzParseDecision(f *testing.F) {
	id, _ := ids.NewTxID()
	b, _ := ids.HolderBranch(1, "bank_a")
	g, _ := ids.NewGID("txc", "c1", id, b)
	f.Add(id.String(), "txc.c1", "C", int64(3), "bank_b/"+g.String())
	f.Add(id.String(), "txc.c1", "A", int64(0), "")
	f.Add("junk", "x", "Z", int64(-1), "a/b c")
	f.Fuzz(func(t *testing.T, txid, owner, outcome string, epoch int64, branches string) {
		d, err := parseDecision(txid, owner, outcome, epoch, time.Unix(0, 0), branches)
		if err != nil {
			return
		}
		if d.TxID.String() != strings.ToLower(txid) || (d.Outcome != participant.OutcomeCommit && d.Outcome != participant.OutcomeAbort) {
			t.Fatalf("accepted %q %q as %+v", txid, outcome, d)
		}
		for _, br := range d.Branches {
			if br.GID.TxID != d.TxID || br.GID.Validate() != nil {
				t.Fatalf("accepted branch %+v of %s", br, d.TxID)
			}
		}
	})
}
