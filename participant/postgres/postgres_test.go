package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
)

func TestPrepareThenCommitMakesTheWorkVisible(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ($1)", "x")
		if n := count(t, db, table); n != 0 {
			t.Fatalf("uncommitted row visible: %d", n)
		}
		vote, err := b.Prepare(ctx)
		if err != nil || vote != participant.VoteYes {
			t.Fatalf("Prepare = %v, %v; want yes", vote, err)
		}
		if !isPrepared(t, db, b.GID()) {
			t.Fatalf("%s not in pg_prepared_xacts after a yes vote", b.GID())
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("prepared row visible before commit: %d", n)
		}
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows after commit = %d, want 1", n)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatalf("%s still prepared after commit", b.GID())
		}
	})
}

func TestPrepareThenRollbackDiscardsTheWork(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("Prepare = %v, %v; want yes", vote, err)
		}
		if err := r.Rollback(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows after rollback = %d, want 0", n)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatalf("%s still prepared after rollback", b.GID())
		}
	})
}

func TestSecondCommitIsProvenAndSecondRollbackIsUnknownBranch42704(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		for _, finish := range []struct {
			name string
			f    func(context.Context, ids.GID) error
		}{{"commit", r.Commit}, {"rollback", r.Rollback}} {
			b := begin(t, r, "b1")
			mustExec(t, b, "INSERT INTO "+table+" VALUES ($1)", finish.name)
			if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
				t.Fatalf("Prepare = %v, %v; want yes", vote, err)
			}
			if err := finish.f(ctx, b.GID()); err != nil {
				t.Fatalf("first %s: %v", finish.name, err)
			}
			err := finish.f(ctx, b.GID())
			if finish.name == "commit" {
				// The marker, committed with the branch, proves it.
				if err != nil {
					t.Fatalf("second commit = %v, want nil (proven)", err)
				}
				continue
			}
			if !errors.Is(err, participant.ErrUnknownBranch) {
				t.Fatalf("second %s = %v, want ErrUnknownBranch", finish.name, err)
			}
			if SQLState(err) != "42704" {
				t.Errorf("second %s: driver error not kept: SQLSTATE %q in %v", finish.name, SQLState(err), err)
			}
			if errors.Is(err, participant.ErrOutcomeUnknown) || errors.Is(err, participant.ErrBusy) {
				t.Errorf("second %s: %v also claims another outcome", finish.name, err)
			}
		}
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want the committed one only", n)
		}
		// A gid that was never prepared has no proof.
		if err := r.Commit(ctx, newGID(t, "never")); !errors.Is(err, participant.ErrUnknownBranch) {
			t.Fatalf("commit of a never-prepared gid = %v, want ErrUnknownBranch", err)
		}
	})
}

// A branch rolled back behind the coordinator's back (a DBA's ROLLBACK
// PREPARED) is never taken for committed: its marker went with it.
func TestCommitOfABranchRolledBackBehindOurBackIsUnproven(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, DriverPQ, appDB)
	b := preparedBranch(t, r, table)
	if _, err := db.ExecContext(ctx, "ROLLBACK PREPARED "+ids.QuoteLiteral(b.GID().String())); err != nil {
		t.Fatal(err)
	}
	err := r.Commit(ctx, b.GID())
	if !errors.Is(err, participant.ErrUnknownBranch) || !strings.Contains(err.Error(), "no marker") {
		t.Fatalf("commit after a ROLLBACK PREPARED by hand = %v, want ErrUnknownBranch without a marker", err)
	}
	if n := count(t, db, table); n != 0 {
		t.Fatalf("rows = %d, want 0", n)
	}
}

// Markers of committed branches are listed by owner and deleted by
// ForgetProofs; a read-only branch and a rolled-back one leave none.
func TestMarkersAreKeptForCommittedBranchesOnlyAndForgotten(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, DriverPQ, appDB)
	owner := newGID(t, "x").Prefix + "." + newGID(t, "x").Coordinator
	committed := preparedBranch(t, r, table)
	if err := r.Commit(ctx, committed.GID()); err != nil {
		t.Fatal(err)
	}
	rolled := preparedBranch(t, r, newTable(t, db))
	if err := r.Rollback(ctx, rolled.GID()); err != nil {
		t.Fatal(err)
	}
	ro := begin(t, r, "ro")
	if vote, err := ro.Prepare(ctx); err != nil || vote != participant.VoteReadOnly {
		t.Fatalf("read-only Prepare = %v, %v", vote, err)
	}
	after, err := r.Proofs(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(after, committed.GID()) || slices.Contains(after, rolled.GID()) || slices.Contains(after, ro.GID()) {
		t.Fatalf("markers %v: want %s and neither %s nor %s", after, committed.GID(), rolled.GID(), ro.GID())
	}
	if other, err := r.Proofs(ctx, owner+"x"); err != nil || slices.Contains(other, committed.GID()) {
		t.Fatalf("markers of another owner: %v, %v", other, err)
	}
	if err := r.ForgetProofs(ctx, []ids.GID{committed.GID(), rolled.GID()}); err != nil {
		t.Fatal(err)
	}
	if gone, err := r.Proofs(ctx, owner); err != nil || slices.Contains(gone, committed.GID()) {
		t.Fatalf("markers after ForgetProofs: %v, %v", gone, err)
	}
	// Without its marker, the committed branch can no longer be proven.
	if err := r.Commit(ctx, committed.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit after its marker was forgotten = %v, want ErrUnknownBranch", err)
	}
}

// Without markers, a branch committed before cannot be told from one lost.
func TestWithoutMarkersASecondCommitIsUnproven(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r, err := Open(ctx, "nomarkers", DriverPQ, srv.DSN(appDB), Options{NoMarkers: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := preparedBranch(t, r, table)
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) || !strings.Contains(err.Error(), "keeps no markers") {
		t.Fatalf("second commit without markers = %v, want ErrUnknownBranch", err)
	}
	if r.MarkerTable() != "" {
		t.Fatalf("MarkerTable = %q without markers", r.MarkerTable())
	}
}

// The trap itself, without the adapter: PostgreSQL answers PREPARE
// TRANSACTION of a failed transaction with the tag ROLLBACK and no error.
func TestRawPrepareOfFailedTransactionGivesNoError(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero did not fail")
	}
	if _, err := conn.ExecContext(ctx, "PREPARE TRANSACTION 'raw-failed'"); err != nil {
		t.Fatalf("PREPARE TRANSACTION of a failed transaction returned %v; the trap is gone", err)
	}
	for _, g := range preparedGIDs(t, db) {
		if g == "raw-failed" {
			t.Fatal("the failed transaction was prepared")
		}
	}
}

func TestBranchThatSawAnErrorVotesNo(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if _, err := b.ExecContext(ctx, "SELECT 1/0"); err == nil {
			t.Fatal("division by zero did not fail")
		}
		vote, err := b.Prepare(ctx)
		if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
			t.Fatalf("Prepare = %v, %v; want no, ErrRolledBack", vote, err)
		}
		if SQLState(err) != "22012" {
			t.Errorf("cause not kept: SQLSTATE %q in %v", SQLState(err), err)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatal("branch that voted no is prepared")
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d after a no vote", n)
		}
	})
}

// The application swallowed the error by using Conn directly; PostgreSQL
// has aborted the transaction and the adapter must notice.
func TestErrorSwallowedThroughConnStillVotesNo(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if _, err := b.Conn().ExecContext(ctx, "INSERT INTO "+table+" VALUES ('x')"); err == nil {
			t.Fatal("duplicate key did not fail")
		}
		if b.Err() != nil {
			t.Fatalf("branch recorded an error made on Conn: %v", b.Err())
		}
		vote, err := b.Prepare(ctx)
		if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
			t.Fatalf("Prepare = %v, %v; want no, ErrRolledBack", vote, err)
		}
		if SQLState(err) != "25P02" {
			t.Errorf("want in_failed_sql_transaction (25P02) in %v", err)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatal("aborted transaction is prepared")
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d after a no vote", n)
		}
	})
}

func TestReadOnlyBranchVotesReadOnlyAndLeavesNothingPrepared(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		var n int
		if err := b.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		vote, err := b.Prepare(ctx)
		if err != nil || vote != participant.VoteReadOnly {
			t.Fatalf("Prepare = %v, %v; want read-only", vote, err)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatal("read-only branch is prepared")
		}
		if err := r.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
			t.Fatalf("commit of a read-only branch's gid = %v, want ErrUnknownBranch", err)
		}
		if err := b.Abort(ctx); err != nil {
			t.Fatalf("Abort after read-only = %v", err)
		}
	})
}

func TestTempTableMakesPrepareFailWithPostgresError(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "CREATE TEMP TABLE scratch (v int)")
		mustExec(t, b, "INSERT INTO scratch VALUES (1)")
		vote, err := b.Prepare(ctx)
		if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
			t.Fatalf("Prepare = %v, %v; want no, ErrRolledBack", vote, err)
		}
		if SQLState(err) != "0A000" || !strings.Contains(err.Error(), "temporary") {
			t.Errorf("PostgreSQL's error not surfaced: SQLSTATE %q, %v", SQLState(err), err)
		}
		if isPrepared(t, db, b.GID()) {
			t.Fatal("branch with a temp table is prepared")
		}
	})
}

func TestOnePhaseCommit(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if err := b.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
		if err := b.Abort(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Abort after commit = %v, want ErrBranchDone", err)
		}
		if _, err := b.Prepare(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Prepare after commit = %v, want ErrBranchDone", err)
		}
	})
}

// PostgreSQL answers COMMIT of a failed transaction with ROLLBACK and no
// error; the one-phase commit must report an abort, never success and
// never "outcome unknown".
func TestOnePhaseCommitOfFailedTransactionIsAnAbort(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		for _, viaConn := range []bool{false, true} {
			b := begin(t, r, "b1")
			mustExec(t, b, "INSERT INTO "+table+" VALUES ('y')")
			if viaConn {
				_, _ = b.Conn().ExecContext(ctx, "SELECT 1/0")
			} else {
				_, _ = b.ExecContext(ctx, "SELECT 1/0")
			}
			err := b.CommitOnePhase(ctx)
			if !errors.Is(err, ErrRolledBack) || errors.Is(err, participant.ErrOutcomeUnknown) {
				t.Fatalf("CommitOnePhase (error via Conn: %v) = %v, want ErrRolledBack", viaConn, err)
			}
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d, want 0", n)
		}
	})
}

func TestOnePhaseCommitFailureIsAnAbort(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		if _, err := db.ExecContext(ctx, "ALTER TABLE "+table+" ADD CONSTRAINT "+table+"_u UNIQUE (k) DEFERRABLE INITIALLY DEFERRED, ADD COLUMN v int"); err != nil {
			t.Fatal(err)
		}
		r := openResource(t, srv, driver, appDB)
		b := begin(t, r, "b1")
		// The primary key is checked at once; make the deferred check fail
		// at COMMIT with an update that passes the primary key check.
		if _, err := db.ExecContext(ctx, "ALTER TABLE "+table+" DROP CONSTRAINT "+table+"_pkey"); err != nil {
			t.Fatal(err)
		}
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('dup', 1), ('dup', 2)")
		err := b.CommitOnePhase(ctx)
		if !errors.Is(err, ErrRolledBack) || SQLState(err) != "23505" {
			t.Fatalf("CommitOnePhase with a deferred violation = %v, want ErrRolledBack with 23505", err)
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d, want 0", n)
		}
	})
}

func TestFinishedBranchRefusesWorkAndRepeatsItsVote(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("Prepare = %v, %v", vote, err)
		}
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("second Prepare = %v, %v; want the first answer", vote, err)
		}
		if _, err := b.ExecContext(ctx, "SELECT 1"); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Exec after prepare = %v", err)
		}
		if _, err := b.QueryContext(ctx, "SELECT 1"); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Query after prepare = %v", err)
		}
		var x int
		if err := b.QueryRowContext(ctx, "SELECT 1").Scan(&x); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("QueryRow after prepare = %v", err)
		}
		if err := b.CommitOnePhase(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("CommitOnePhase after prepare = %v", err)
		}
		if err := b.Abort(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Abort of a prepared branch = %v, want ErrBranchDone (use Rollback)", err)
		}
		if !isPrepared(t, db, b.GID()) {
			t.Fatal("Abort touched a prepared branch")
		}
		if err := r.Rollback(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}

		no := begin(t, r, "b2")
		_, _ = no.ExecContext(ctx, "SELECT 1/0")
		v1, err1 := no.Prepare(ctx)
		v2, err2 := no.Prepare(ctx)
		if v1 != participant.VoteNo || v2 != participant.VoteNo || err1 == nil || err1 != err2 {
			t.Fatalf("Prepare twice after an error = (%v, %v), (%v, %v)", v1, err1, v2, err2)
		}
	})
}

func TestAbortRollsBackAndIsIdempotent(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if err := b.Abort(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Abort(ctx); err != nil {
			t.Fatalf("second Abort = %v", err)
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d after abort", n)
		}
		if _, err := b.Prepare(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Prepare after Abort = %v", err)
		}
	})
}

// One connection from BEGIN to PREPARE, handed back to the pool after.
func TestBranchPinsOneConnectionAndReturnsItAfterPrepare(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)
		r.DB().SetMaxIdleConns(10)

		// Busy the pool so that an unpinned statement would likely land on
		// another connection.
		others := make([]*Branch, 3)
		for i := range others {
			others[i] = begin(t, r, fmt.Sprintf("o%d", i))
		}
		b := begin(t, r, "b1")
		pids := map[int]bool{}
		for i := range 5 {
			mustExec(t, b, "INSERT INTO "+table+" VALUES ($1)", fmt.Sprint(i))
			var pid int
			if err := b.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids[pid] = true
		}
		if len(pids) != 1 {
			t.Fatalf("branch ran on backends %v, want one", pids)
		}
		for _, o := range others {
			if err := o.Abort(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("Prepare = %v, %v", vote, err)
		}
		if st := r.DB().Stats(); st.InUse != 0 || st.Idle != 4 {
			t.Errorf("after prepare: %d in use, %d idle; want every connection back in the pool", st.InUse, st.Idle)
		}
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, table); n != 5 {
			t.Fatalf("rows = %d, want 5", n)
		}
	})
}

// A session that may still be inside a transaction is closed, never
// pooled.
func TestSessionLeftInTransactionIsDiscarded(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		var pid int
		if err := b.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := b.Abort(done); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("Abort with a cancelled context = %v", err)
		}
		// Abort could not run ROLLBACK: the connection must be closed, so
		// the backend goes away and its transaction with it.
		if err := b.Abort(ctx); err != nil {
			t.Fatalf("Abort = %v", err)
		}
		st := r.DB().Stats()
		if st.InUse == 0 && st.Idle == 1 {
			// lib/pq may finish ROLLBACK before it acts on the cancelled
			// context: then the session is clean and rightly pooled.
			var state string
			if err := db.QueryRowContext(ctx, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state); err != nil {
				t.Fatal(err)
			}
			if state != "idle" {
				t.Fatalf("pooled session %d is %q, want idle (outside any transaction)", pid, state)
			}
			if n := count(t, db, table); n != 0 {
				t.Fatalf("rows = %d after the rollback", n)
			}
			return
		}
		if st.InUse != 0 || st.Idle != 0 {
			t.Errorf("pool after a discarded session: %d in use, %d idle; want 0, 0", st.InUse, st.Idle)
		}
		for range 200 {
			var alive bool
			if err := db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid).Scan(&alive); err != nil {
				t.Fatal(err)
			}
			if !alive {
				return
			}
			sleep(ctx, 10)
		}
		t.Fatalf("backend %d of the discarded session is still there", pid)
	})
}

func TestScanListsOnlyThisDatabaseAndForeignGIDsWithZeroGID(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		appRaw := rawDB(t, srv, appDB)
		table := newTable(t, appRaw)
		app := openResource(t, srv, driver, appDB)
		other := openResource(t, srv, driver, otherDB)

		b := begin(t, app, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("Prepare = %v, %v", vote, err)
		}
		defer app.Rollback(context.WithoutCancel(ctx), b.GID()) //nolint:errcheck
		const foreign = "someone-else's xact"
		conn, err := appRaw.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"BEGIN", "INSERT INTO " + table + " VALUES ('f')", "PREPARE TRANSACTION " + ids.QuoteLiteral(foreign)} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		_ = conn.Close()
		defer appRaw.ExecContext(context.WithoutCancel(ctx), "ROLLBACK PREPARED "+ids.QuoteLiteral(foreign)) //nolint:errcheck

		got, err := app.Prepared(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ours, theirs *participant.Prepared
		for i := range got {
			switch got[i].Raw {
			case b.GID().String():
				ours = &got[i]
			case foreign:
				theirs = &got[i]
			}
			if got[i].Database != appDB {
				t.Errorf("listed %q of database %q from %q", got[i].Raw, got[i].Database, appDB)
			}
		}
		if ours == nil || ours.GID != b.GID() || ours.Owner != "postgres" || ours.Since.IsZero() {
			t.Errorf("our branch: %+v", ours)
		}
		if theirs == nil || !theirs.GID.IsZero() {
			t.Errorf("foreign branch: %+v, want listed with a zero GID", theirs)
		}

		fromOther, err := other.Prepared(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range fromOther {
			if p.Raw == b.GID().String() || p.Raw == foreign {
				t.Errorf("database %q lists %q prepared in %q", otherDB, p.Raw, appDB)
			}
		}
	})
}

func TestNewFailsWithoutPreparedTransactions(t *testing.T) {
	t.Parallel()
	s := pgtest.StartT(t, pgtest.Options{MaxPreparedTransactions: -1, NoFsync: true})
	for _, driver := range drivers {
		_, err := Open(testCtx(t), "pg", driver, s.DSN("postgres"), Options{})
		if !errors.Is(err, ErrNoPreparedTransactions) || !strings.Contains(err.Error(), "max_prepared_transactions") {
			t.Fatalf("%s: Open on a server without prepared transactions = %v, want ErrNoPreparedTransactions naming the setting", driver, err)
		}
	}
}

func TestExpectedDatabaseIsChecked(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		r, err := Open(ctx, "pg", driver, srv.DSN(appDB), Options{Database: otherDB})
		if !errors.Is(err, ErrWrongDatabase) || !strings.Contains(err.Error(), `"app"`) || !strings.Contains(err.Error(), `"other"`) {
			t.Fatalf("Open of %q expecting %q = %v, want ErrWrongDatabase naming both", appDB, otherDB, err)
		}
		if r != nil {
			t.Fatal("a resource came back with the error")
		}

		r = openResource(t, srv, driver, appDB)
		if r.Database() != appDB {
			t.Fatalf("Database() = %q, want %q", r.Database(), appDB)
		}
		if _, err := New(ctx, "pg", r.DB(), Options{Database: otherDB}); !errors.Is(err, ErrWrongDatabase) {
			t.Fatalf("New expecting %q on %q = %v", otherDB, appDB, err)
		}
	})
}

// The peer's bug: in a keyword/value DSN, "password= dbname=x" makes the
// password "dbname=x" and leaves the database unset, so the connection
// reaches the user's default database. Naming the expected database
// catches it.
func TestEmptyPasswordDSNReachingAnotherDatabaseIsCaught(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable password= dbname=%s", srv.Port(), otherDB)
		_, err := Open(testCtx(t), "pg", driver, dsn, Options{Database: otherDB})
		if !errors.Is(err, ErrWrongDatabase) {
			t.Fatalf("Open with %q = %v, want ErrWrongDatabase", dsn, err)
		}
		t.Logf("%s: %v", driver, err)
	})
}

func TestOpenRejectsUnknownDriverAndBadName(t *testing.T) {
	ctx := testCtx(t)
	if _, err := Open(ctx, "pg", "mysql", srv.DSN(appDB), Options{}); !errors.Is(err, ErrUnsupportedDriver) {
		t.Fatalf("Open with driver mysql = %v", err)
	}
	if _, err := Open(ctx, "bad name", DriverPQ, srv.DSN(appDB), Options{}); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("Open with a bad resource name = %v", err)
	}
}

func TestBeginRejectsInvalidGID(t *testing.T) {
	r := openResource(t, srv, DriverPQ, appDB)
	bad := ids.GID{Prefix: "txc", Coordinator: "x'; DROP TABLE t; --", Branch: "b"}
	if _, err := r.Begin(testCtx(t), bad); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("Begin with a malformed gid = %v", err)
	}
	if err := r.Commit(testCtx(t), bad); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("Commit with a malformed gid = %v", err)
	}
	if st := r.DB().Stats(); st.InUse != 0 {
		t.Fatalf("%d connections in use after rejected calls", st.InUse)
	}
}

func TestConcurrentBranchesEachPinTheirOwnConnection(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		const n = 16
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			pids = map[int]string{}
			errs = make(chan error, n)
		)
		// Every branch holds its connection until all have written, so
		// sharing one would show as two branches on one backend.
		var ready sync.WaitGroup
		ready.Add(n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				br, err := r.Begin(ctx, newGID(t, fmt.Sprintf("b%d", i)))
				if err != nil {
					ready.Done()
					errs <- err
					return
				}
				b := br.(*Branch)
				_, err = b.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", fmt.Sprint(i))
				var pid int
				if err == nil {
					err = b.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid)
				}
				mu.Lock()
				if other, dup := pids[pid]; dup && err == nil {
					err = fmt.Errorf("branches %s and %s share backend %d", other, b.GID().Branch, pid)
				}
				pids[pid] = b.GID().Branch
				mu.Unlock()
				ready.Done()
				ready.Wait()
				if err != nil {
					_ = b.Abort(ctx)
					errs <- err
					return
				}
				vote, err := b.Prepare(ctx)
				if err != nil || vote != participant.VoteYes {
					errs <- fmt.Errorf("prepare %s: %v, %v", b.GID(), vote, err)
					return
				}
				if err := r.Commit(ctx, b.GID()); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := count(t, db, table); got != n {
			t.Fatalf("rows = %d, want %d", got, n)
		}
	})
}

func TestPreparedBranchSurvivesServerCrashAndCommits(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s := pgtest.StartT(t, pgtest.Options{})
	db := rawDB(t, s, "postgres")
	table := newTable(t, db)

	branches := map[string]*Branch{}
	resources := map[string]*Resource{}
	for _, driver := range drivers {
		r := openResource(t, s, driver, "postgres")
		b := begin(t, r, "b1")
		mustExec(t, b, "INSERT INTO "+table+" VALUES ($1)", driver)
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("%s: Prepare = %v, %v", driver, vote, err)
		}
		branches[driver], resources[driver] = b, r
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for _, driver := range drivers {
		r, b := resources[driver], branches[driver]
		got, err := r.Prepared(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range got {
			found = found || p.GID == b.GID()
		}
		if len(got) != len(drivers) || !found {
			t.Fatalf("%s: prepared after crash: %+v, want %s among %d", driver, got, b.GID(), len(drivers))
		}
	}
	for _, driver := range drivers {
		r, b := resources[driver], branches[driver]
		// Connections pooled before the crash are dead; as in phase two,
		// a lost connection is "outcome unknown" and the commit is retried.
		for attempt := 1; ; attempt++ {
			err := r.Commit(ctx, b.GID())
			if err == nil {
				break
			}
			if !errors.Is(err, participant.ErrOutcomeUnknown) || attempt == 5 {
				t.Fatalf("%s: commit after restart, attempt %d: %v", driver, attempt, err)
			}
		}
	}
	if n := count(t, db, table); n != len(drivers) {
		t.Fatalf("rows = %d after commit, want %d", n, len(drivers))
	}
}

// enlister stands in for the coordinator's transaction.
type enlister struct{ gid ids.GID }

func (e enlister) Enlist(ctx context.Context, r participant.Resource) (participant.Branch, error) {
	return r.Begin(ctx, e.gid)
}

func TestEnlistReturnsTheConcreteBranch(t *testing.T) {
	ctx := testCtx(t)
	r := openResource(t, srv, DriverPQ, appDB)
	gid := newGID(t, "b1")
	b, err := r.Enlist(ctx, enlister{gid: gid})
	if err != nil {
		t.Fatal(err)
	}
	if b.GID() != gid || b.Resource() != participant.Resource(r) {
		t.Fatalf("branch %s of %v", b.GID(), b.Resource())
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatal(err)
	}
}

// A branch that wrote nothing commits locally rather than rolling back, so
// what it did outside tables (here a NOTIFY) still happens.
func TestReadOnlyBranchCommitsLocallySoItsNotifyIsDelivered(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		listener, err := pgx.Connect(ctx, srv.DSN(appDB))
		if err != nil {
			t.Fatal(err)
		}
		defer listener.Close(ctx)
		channel := "txcoord_test_" + driver
		if _, err := listener.Exec(ctx, "LISTEN "+channel); err != nil {
			t.Fatal(err)
		}
		r := openResource(t, srv, driver, appDB)
		b := begin(t, r, "b1")
		// pg_notify through Exec: its SELECT counts a row, yet writes nothing.
		mustExec(t, b, "SELECT pg_notify('"+channel+"', 'hello')")
		vote, err := b.Prepare(ctx)
		if err != nil || vote != participant.VoteReadOnly {
			t.Fatalf("Prepare = %v, %v; want read-only", vote, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		n, err := listener.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no notification from the read-only branch: %v", err)
		}
		if n.Payload != "hello" {
			t.Fatalf("payload %q", n.Payload)
		}
	})
}

// Whatever the branch's wrappers saw, the vote follows what PostgreSQL
// holds: a write made only through Conn is prepared, and a branch whose
// Exec counted rows of a SELECT (so it skips the read-only test) is still
// prepared and committed correctly.
func TestVoteFollowsTheServerWhateverTheWrappersSaw(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)

		b := begin(t, r, "b1")
		if _, err := b.Conn().ExecContext(ctx, "INSERT INTO "+table+" VALUES ('via-conn')"); err != nil {
			t.Fatal(err)
		}
		if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("write through Conn: Prepare = %v, %v; want yes", vote, err)
		}
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}

		// Exec of a SELECT counts rows but writes nothing: still read-only.
		c := begin(t, r, "b2")
		mustExec(t, c, "SELECT * FROM "+table)
		if vote, err := c.Prepare(ctx); err != nil || vote != participant.VoteReadOnly {
			t.Fatalf("counted SELECT: Prepare = %v, %v; want read-only", vote, err)
		}
		// A DML statement that changed rows skips the read-only test.
		d := begin(t, r, "b3")
		mustExec(t, d, "  update "+table+" SET k = k")
		if vote, err := d.Prepare(ctx); err != nil || vote != participant.VoteYes {
			t.Fatalf("update: Prepare = %v, %v; want yes", vote, err)
		}
		if err := r.Commit(ctx, d.GID()); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
	})
}

func TestIsDMLRecognisesOnlyRowChangingStatements(t *testing.T) {
	for q, want := range map[string]bool{
		"INSERT INTO t VALUES (1)": true, " update t set a=1": true, "(DELETE FROM t)": true,
		"merge into t using s on true when matched then delete": true, "SELECT 1": false,
		"WITH x AS (SELECT 1) UPDATE t SET a=1": false, "UPDATEX": false, "insert": false,
	} {
		if got := isDML(q); got != want {
			t.Errorf("isDML(%q) = %v, want %v", q, got, want)
		}
	}
}

// PurgeMarkers deletes markers older than the age given, and only those.
func TestPurgeMarkersDeletesOnlyOldOnes(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r, err := Open(ctx, "purge", DriverPQ, srv.DSN(appDB), Options{MarkerTable: table + "_markers"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	old, young := preparedBranch(t, r, table), preparedBranch(t, r, newTable(t, db))
	for _, b := range []*Branch{old, young} {
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, "UPDATE "+r.MarkerTable()+" SET marked_at = now() - interval '2 hours' WHERE gid = $1", old.GID().String()); err != nil {
		t.Fatal(err)
	}
	if n, err := r.PurgeMarkers(ctx, time.Hour); err != nil || n != 1 {
		t.Fatalf("PurgeMarkers = %d, %v; want 1", n, err)
	}
	if err := r.Commit(ctx, young.GID()); err != nil {
		t.Fatalf("the young marker went too: %v", err)
	}
	if err := r.Commit(ctx, old.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("the old marker is still there: %v", err)
	}
}

// AllowDown: a resource opened while its server is down is checked on
// first contact; calls fail until then, and work once the server is back.
func TestOpenWhileTheServerIsDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	s := pgtest.StartT(t, pgtest.Options{NoFsync: true})
	if err := s.CreateDB(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, "late", "postgres", s.DSN("late"), Options{}); err == nil {
		t.Fatal("opened a resource whose server is down without AllowDown")
	}
	r, err := Open(ctx, "late", "postgres", s.DSN("late"), Options{AllowDown: true})
	if err != nil {
		t.Fatalf("AllowDown: %v", err)
	}
	defer r.Close()
	if !r.Unchecked() {
		t.Fatal("a resource never reached reports itself checked")
	}
	if _, err := r.Prepared(ctx); err == nil || !Unreachable(err) {
		t.Fatalf("a call while the server is down: %v", err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prepared(ctx); err != nil {
		t.Fatalf("a call once the server is back: %v", err)
	}
	if r.Unchecked() || r.Database() != "late" {
		t.Fatalf("after first contact: unchecked %v, database %q", r.Unchecked(), r.Database())
	}
	var tables int
	if err := r.DB().QueryRowContext(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = $1", DefaultMarkerTable).Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("the marker table was not made on first contact: %d %v", tables, err)
	}
}
