package postgres

// These tests hold a COMMIT PREPARED or COMMIT in flight: with
// synchronous_commit on and synchronous_standby_names naming a standby that
// does not exist, a commit writes its record locally and then waits for the
// standby, still holding the prepared transaction. Meanwhile another
// session sees it "busy", and pg_terminate_backend of the waiting backend
// drops its connection although the transaction is committed locally.

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

const absentStandby = "txcoord_absent_standby"

func sleep(ctx context.Context, ms int) {
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// holdCommits makes every commit on srv that wrote something wait for a
// standby that does not exist, until releaseCommits or the end of the test.
// It returns once a probe commit has been seen waiting, since the setting
// reaches the server processes asynchronously.
func holdCommits(t *testing.T, db *sql.DB) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS syncrep_probe (v int)"); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetConf(ctx, "synchronous_standby_names", absentStandby); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { releaseCommits(t) })
	for {
		if ctx.Err() != nil {
			t.Fatal("synchronous_standby_names never took effect")
		}
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pid int
		if err := conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := conn.ExecContext(ctx, "INSERT INTO syncrep_probe VALUES (1)")
			done <- err
		}()
		held := waitInSyncRep(t, db, pid, done)
		if held {
			if _, err := db.ExecContext(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
				t.Fatal(err)
			}
			<-done
		}
		_ = conn.Close()
		if held {
			return
		}
		sleep(ctx, 10)
	}
}

// releaseCommits resets synchronous_standby_names; the waiting commits
// then complete.
func releaseCommits(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.ResetConf(ctx, "synchronous_standby_names"); err != nil {
		t.Errorf("reset synchronous_standby_names: %v", err)
	}
}

// waitInSyncRep polls until backend pid waits for the synchronous standby
// (true) or done has a value (false; the value is put back).
func waitInSyncRep(t *testing.T, db *sql.DB, pid int, done chan error) bool {
	t.Helper()
	ctx := testCtx(t)
	for {
		select {
		case err := <-done:
			done <- err
			return false
		default:
		}
		var waiting bool
		err := db.QueryRowContext(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep')", pid).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			return true
		}
		sleep(ctx, 5)
	}
}

// commitPreparedInFlight starts r.Commit(gid) and returns the backend pid
// that waits in it, and the channel its result arrives on.
func commitPreparedInFlight(t *testing.T, r *Resource, db *sql.DB, gid ids.GID) (int, chan error) {
	t.Helper()
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- r.Commit(ctx, gid) }()
	for {
		select {
		case err := <-done:
			t.Fatalf("COMMIT PREPARED finished without waiting for the standby: %v", err)
		default:
		}
		var pid int
		err := db.QueryRowContext(ctx,
			"SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND query = $1",
			"COMMIT PREPARED "+ids.QuoteLiteral(gid.String())).Scan(&pid)
		if err == nil {
			return pid, done
		}
		if !errors.Is(err, sql.ErrNoRows) {
			t.Fatal(err)
		}
		sleep(ctx, 5)
	}
}

func preparedBranch(t *testing.T, r *Resource, table string) *Branch {
	t.Helper()
	b := begin(t, r, "b1")
	mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
	if vote, err := b.Prepare(testCtx(t)); err != nil || vote != participant.VoteYes {
		t.Fatalf("Prepare = %v, %v", vote, err)
	}
	return b
}

func TestCommitPreparedWhileAnotherSessionFinishesItIsBusy(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)
		b := preparedBranch(t, r, table)

		holdCommits(t, db)
		_, first := commitPreparedInFlight(t, r, db, b.GID())
		for _, finish := range []func(context.Context, ids.GID) error{r.Commit, r.Rollback} {
			err := finish(ctx, b.GID())
			if !errors.Is(err, participant.ErrBusy) || SQLState(err) != "55000" {
				t.Fatalf("second session on a branch being committed = %v, want ErrBusy (55000)", err)
			}
		}
		releaseCommits(t)
		if err := <-first; err != nil {
			t.Fatalf("the first COMMIT PREPARED = %v", err)
		}
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
	})
}

func TestDroppedConnectionDuringCommitPreparedIsOutcomeUnknown(t *testing.T) {
	forDrivers(t, func(t *testing.T, driver string) {
		ctx := testCtx(t)
		db := rawDB(t, srv, appDB)
		table := newTable(t, db)
		r := openResource(t, srv, driver, appDB)
		b := preparedBranch(t, r, table)

		holdCommits(t, db)
		pid, result := commitPreparedInFlight(t, r, db, b.GID())
		if _, err := db.ExecContext(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		err := <-result
		if !errors.Is(err, participant.ErrOutcomeUnknown) {
			t.Fatalf("COMMIT PREPARED on a dropped connection = %v, want ErrOutcomeUnknown", err)
		}
		t.Logf("%s: %v", driver, err)
		releaseCommits(t)

		// It was in fact committed locally.
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1", n)
		}
		// The retry of phase two then finds nothing prepared, and the
		// branch's marker proves that it committed.
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatalf("retried COMMIT PREPARED = %v, want nil (proven by the marker)", err)
		}
	})
}

func TestDroppedConnectionDuringOnePhaseCommitIsOutcomeUnknown(t *testing.T) {
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

		holdCommits(t, db)
		result := make(chan error, 1)
		go func() { result <- b.CommitOnePhase(ctx) }()
		if !waitInSyncRep(t, db, pid, result) {
			t.Fatalf("COMMIT finished without waiting for the standby: %v", <-result)
		}
		if _, err := db.ExecContext(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		err := <-result
		if !errors.Is(err, participant.ErrOutcomeUnknown) || errors.Is(err, ErrRolledBack) {
			t.Fatalf("COMMIT on a dropped connection = %v, want ErrOutcomeUnknown and not rolled back", err)
		}
		t.Logf("%s: %v", driver, err)
		releaseCommits(t)
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1 (committed locally)", n)
		}
	})
}

// Cancelling the context while COMMIT is in flight must not be reported as
// a rollback: the commit may have happened (here it has).
func TestCancelDuringOnePhaseCommitIsNeverReportedAsRollback(t *testing.T) {
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

		holdCommits(t, db)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		result := make(chan error, 1)
		go func() { result <- b.CommitOnePhase(cctx) }()
		if !waitInSyncRep(t, db, pid, result) {
			t.Fatalf("COMMIT finished without waiting for the standby: %v", <-result)
		}
		cancel()
		err := <-result
		if err != nil && !errors.Is(err, participant.ErrOutcomeUnknown) || errors.Is(err, ErrRolledBack) {
			t.Fatalf("COMMIT with its context cancelled = %v, want success or ErrOutcomeUnknown", err)
		}
		t.Logf("%s: %v", driver, err)
		releaseCommits(t)
		if n := count(t, db, table); n != 1 {
			t.Fatalf("rows = %d, want 1 (committed locally)", n)
		}
	})
}

// prepareInFlight starts b.Prepare(ctx) and returns once its PREPARE
// TRANSACTION waits for the standby.
func prepareInFlight(ctx context.Context, t *testing.T, db *sql.DB, b *Branch, pid int) chan voteResult {
	t.Helper()
	result := make(chan voteResult, 1)
	done := make(chan error, 1)
	go func() {
		v, err := b.Prepare(ctx)
		result <- voteResult{v, err}
		done <- err
	}()
	if !waitInSyncRep(t, db, pid, done) {
		r := <-result
		t.Fatalf("PREPARE finished without waiting for the standby: %v, %v", r.vote, r.err)
	}
	return result
}

type voteResult struct {
	vote participant.Vote
	err  error
}

func TestLostConnectionDuringPrepareVotesNoAndLeavesNothingPrepared(t *testing.T) {
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

		holdCommits(t, db)
		result := prepareInFlight(ctx, t, db, b, pid)
		// PostgreSQL has prepared the branch and now waits for the standby;
		// the client loses its connection before hearing so.
		if _, err := db.ExecContext(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		// The signal is handled asynchronously: release the held commits
		// only once the backend is gone, or under load its PREPARE may be
		// released first and succeed (then the test would test nothing).
		for deadline := time.Now().Add(10 * time.Second); ; {
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the terminated backend is still there after 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		releaseCommits(t)
		res := <-result
		if res.vote != participant.VoteNo || !errors.Is(res.err, ErrRolledBack) {
			t.Fatalf("Prepare on a lost connection = %v, %v; want no, ErrRolledBack", res.vote, res.err)
		}
		t.Logf("%s: %v", driver, res.err)
		if isPrepared(t, db, b.GID()) {
			t.Fatal("a branch that voted no is left prepared")
		}
		if n := count(t, db, table); n != 0 {
			t.Fatalf("rows = %d, want 0", n)
		}
	})
}

func TestCancelDuringPrepareVotesYesOnlyIfPrepared(t *testing.T) {
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

		holdCommits(t, db)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		result := prepareInFlight(cctx, t, db, b, pid)
		cancel()
		// Let a rollback by gid through, if the adapter sends one.
		releaseCommits(t)
		res := <-result
		t.Logf("%s: %v, %v", driver, res.vote, res.err)
		prepared := isPrepared(t, db, b.GID())
		switch res.vote {
		case participant.VoteYes:
			if !prepared {
				t.Fatal("voted yes for a branch that is not prepared")
			}
			if err := r.Rollback(ctx, b.GID()); err != nil {
				t.Fatal(err)
			}
		case participant.VoteNo:
			if prepared && !errors.Is(res.err, participant.ErrOutcomeUnknown) {
				t.Fatalf("voted no (%v) for a branch left prepared", res.err)
			}
		default:
			t.Fatalf("vote %v", res.vote)
		}
	})
}
