package mysql

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/recovery"
	"github.com/txcoord/txcoord/wal"
)

// A prepared branch outlives the session and process that prepared it and
// a kill -9 of the server: the scan finds it and it commits afterwards.
func TestPreparedBranchSurvivesDisconnectAndServerKill(t *testing.T) {
	ctx := testCtx(t)
	s := mariadbtest.StartT(t, mariadbtest.Options{})
	if err := s.CreateDB(ctx, appDB); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, s, appDB)
	table := newTable(t, db)
	r, err := Open(ctx, "my", s.DSN(appDB), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 11 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	gid := b.GID()
	// The client goes away: its sessions close.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := openResource(t, s, appDB, Options{})
	if err := finishBusy(t, func() error { return listedErr(ctx, r2, gid) }); err != nil {
		t.Fatalf("after the client's disconnect: %v", err)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	r3 := openResource(t, s, appDB, Options{})
	if err := listedErr(ctx, r3, gid); err != nil {
		t.Fatalf("after kill -9 and restart: %v", err)
	}
	if err := r3.Commit(ctx, gid); err != nil {
		t.Fatal(err)
	}
	if got := value(t, rawDB(t, s, appDB), table, 1); got != 11 {
		t.Fatalf("v = %d after commit, want 11", got)
	}
	if xs := listXIDs(t, rawDB(t, s, appDB)); len(xs) != 0 {
		t.Fatalf("left prepared: %q", xs)
	}
}

// listedErr is nil if r's scan lists gid, else ErrBusy (to wait with
// finishBusy) or the scan's error.
func listedErr(ctx context.Context, r *Resource, gid ids.GID) error {
	ps, err := r.Prepared(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if p.GID == gid {
			return nil
		}
	}
	return participant.ErrBusy
}

// A server killed between XA PREPARE and XA COMMIT: the commit meanwhile
// fails with the outcome unknown (never "rolled back"), and after the
// restart the same calls commit one branch and roll back the other.
func TestServerKilledBetweenPrepareAndCommit(t *testing.T) {
	ctx := testCtx(t)
	s := mariadbtest.StartT(t, mariadbtest.Options{})
	if err := s.CreateDB(ctx, appDB); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, s, appDB)
	table := newTable(t, db)
	r := openResource(t, s, appDB, Options{})
	c := begin(t, r, "c")
	mustExec(t, c, "UPDATE "+table+" SET v = 1 WHERE id = 1")
	mustPrepare(t, c, participant.VoteYes)
	a := begin(t, r, "a")
	mustExec(t, a, "UPDATE "+table+" SET v = 2 WHERE id = 2")
	mustPrepare(t, a, participant.VoteYes)
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	err := r.Commit(ctx, c.GID())
	if err == nil || errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit with the server dead: %v, want an error that leaves the outcome open", err)
	}
	if !errors.Is(err, participant.ErrOutcomeUnknown) && !Unreachable(err) {
		t.Fatalf("commit with the server dead: %v, want ErrOutcomeUnknown or unreachable", err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	retry := func(f func() error) error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := f()
			if err == nil || errors.Is(err, participant.ErrUnknownBranch) || time.Now().After(deadline) {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := retry(func() error { return r.Commit(ctx, c.GID()) }); err != nil {
		t.Fatalf("commit after restart: %v", err)
	}
	if err := retry(func() error { return r.Rollback(ctx, a.GID()) }); err != nil {
		t.Fatalf("rollback after restart: %v", err)
	}
	db2 := rawDB(t, s, appDB)
	if v1, v2 := value(t, db2, table, 1), value(t, db2, table, 2); v1 != 1 || v2 != 0 {
		t.Fatalf("v = %d, %d; want 1, 0", v1, v2)
	}
	// The pool's connections from before the restart are dead: new
	// branches begin on fresh ones.
	for range 4 {
		n := begin(t, r, "after")
		mustExec(t, n, "UPDATE "+table+" SET v = v + 1 WHERE id = 2")
		if err := n.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if xs := listXIDs(t, db2); len(xs) != 0 {
		t.Fatalf("left prepared: %q", xs)
	}
}

// A connection lost while XA COMMIT is in flight is an unknown outcome;
// the retry finds the branch committed (by its marker) or commits it.
func TestLostConnectionAtCommitIsOutcomeUnknown(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 6 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	h := r.take(b.GID().String())
	var id int64
	if err := h.conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	h.timer = time.AfterFunc(time.Hour, func() {})
	r.attached[b.GID().String()] = h
	r.mu.Unlock()
	if _, err := db.ExecContext(ctx, "KILL CONNECTION ?", id); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrOutcomeUnknown) {
		t.Fatalf("commit on a killed session: %v, want ErrOutcomeUnknown", err)
	}
	if err := finishBusy(t, func() error { return r.Commit(ctx, b.GID()) }); err != nil {
		t.Fatalf("retried commit: %v", err)
	}
	if got := value(t, db, table, 1); got != 6 {
		t.Fatalf("v = %d", got)
	}
}

// A connection lost before XA PREPARE's answer: the branch votes no, the
// xid is rolled back from another session, and nothing stays prepared.
func TestLostConnectionAtPrepareVotesNo(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 2 WHERE id = 1")
	var id int64
	if err := b.conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "KILL CONNECTION ?", id); err != nil {
		t.Fatal(err)
	}
	vote, err := b.Prepare(ctx)
	if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
		t.Fatalf("Prepare on a killed session = %v, %v; want no, ErrRolledBack", vote, err)
	}
	if isPrepared(t, db, b.GID()) {
		t.Fatal("left prepared")
	}
	if got := value(t, db, table, 1); got != 0 {
		t.Fatalf("v = %d", got)
	}
}

// XA and transaction statements in the wrong state: the server refuses
// them, and the branch still ends cleanly without leaving a session with
// a branch on it in the pool.
func TestXAStatementsInTheWrongState(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})

	// COMMIT and BEGIN inside an active branch are refused (XAER_RMFAIL)
	// and change nothing; the branch prepares and commits.
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 1 WHERE id = 1")
	for _, q := range []string{"COMMIT", "BEGIN", "START TRANSACTION"} {
		_, err := b.Conn().ExecContext(ctx, q)
		if errNumber(err) != erRMFail {
			t.Fatalf("%s inside a branch: %v, want error %d", q, err, erRMFail)
		}
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}

	// The application ends the branch itself: the marker cannot be
	// written in the IDLE state, and the branch votes no and rolls back.
	idle := begin(t, r, "idle")
	mustExec(t, idle, "UPDATE "+table+" SET v = 5 WHERE id = 2")
	if _, err := idle.Conn().ExecContext(ctx, "XA END "+idle.XID()); err != nil {
		t.Fatal(err)
	}
	vote, err := idle.Prepare(ctx)
	if vote != participant.VoteNo || errNumber(err) != erRMFail {
		t.Fatalf("Prepare of a branch ended behind its back = %v, %v; want no with error %d", vote, err, erRMFail)
	}
	if got := value(t, db, table, 2); got != 0 {
		t.Fatalf("v = %d after the no vote", got)
	}

	// A gid still active on its session cannot be committed or rolled
	// back from another: it was never prepared.
	act := begin(t, r, "act")
	mustExec(t, act, "UPDATE "+table+" SET v = 9 WHERE id = 2")
	if err := r.Commit(ctx, act.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit of an active branch: %v, want ErrUnknownBranch", err)
	}
	if err := r.Rollback(ctx, act.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("rollback of an active branch: %v, want ErrUnknownBranch", err)
	}
	// Nor begun again while it runs.
	if _, err := r.Begin(ctx, act.GID()); errNumber(err) != erDupID {
		t.Fatalf("second XA START of a running xid: %v, want error %d", err, erDupID)
	}
	if err := act.Abort(ctx); err != nil {
		t.Fatal(err)
	}

	// Every pooled session is outside any branch: many branches in a row
	// each start cleanly.
	for i := range 20 {
		x := begin(t, r, "x")
		mustExec(t, x, "UPDATE "+table+" SET v = ? WHERE id = 2", i+100)
		if i%2 == 0 {
			mustPrepare(t, x, participant.VoteYes)
			if err := r.Commit(ctx, x.GID()); err != nil {
				t.Fatal(err)
			}
		} else if err := x.Abort(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if xs := listXIDs(t, db); len(xs) != 0 {
		t.Fatalf("left prepared: %q", xs)
	}
}

// A gid at the length limits (a 64-byte gtrid and a 64-byte bqual) maps
// onto an xid and back; one byte more is refused before the server.
func TestGIDAtTheLengthLimits(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	// 64 = len(prefix) + 1 + len(coordinator) + 1 + 36.
	prefix, coord, branch := "txc", strings.Repeat("c", 64-3-2-36), strings.Repeat("b", 64)
	gid, err := ids.NewGID(prefix, coord, id, branch)
	if err != nil {
		t.Fatal(err)
	}
	if len(gid.GTRID()) != 64 || len(gid.Branch) != 64 {
		t.Fatalf("gtrid %d bytes, bqual %d", len(gid.GTRID()), len(gid.Branch))
	}
	br, err := r.Begin(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	b := br.(*Branch)
	mustExec(t, b, "UPDATE "+table+" SET v = 64 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	ps, err := r.Prepared(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, p := range ps {
		found = found || p.GID == gid
	}
	if !found {
		t.Fatalf("scan %v lacks the 64+64-byte gid", ps)
	}
	if err := r.Commit(ctx, gid); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, gid); err != nil {
		t.Fatalf("commit again (marker of a 129-byte gid): %v", err)
	}
	if _, err := ids.NewGID(prefix, coord+"c", id, branch); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("65-byte gtrid: %v", err)
	}
	if _, err := r.Begin(ctx, ids.GID{Prefix: prefix, Coordinator: coord, TxID: id, Branch: branch + "b"}); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("65-byte bqual: %v", err)
	}
}

// XIDs of other programs (another format id, binary parts, our format id
// with parts that are no gid, a gid under another format id) are listed
// with no gid and as SQL an operator can use, and a recovery pass leaves
// them alone (I7).
func TestForeignXIDsAreLeftAlone(t *testing.T) {
	ctx := testCtx(t)
	s := mariadbtest.StartT(t, mariadbtest.Options{NoFsync: true})
	if err := s.CreateDB(ctx, appDB); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, s, appDB)
	table := newTable(t, db)
	gidLike := newGID(t, "b1")
	foreign := []string{
		"'other-gtrid','b',1",
		"X'00ff10',X'',7",
		"'not.a.gid','x'," + strconv.Itoa(FormatID),
		"'" + gidLike.GTRID() + "','" + gidLike.Branch + "',1",
	}
	for i, x := range foreign {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"XA START " + x, "INSERT INTO " + table + " VALUES (" + strconv.Itoa(10+i) + ", 1)", "XA END " + x, "XA PREPARE " + x} {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		discard(conn)
	}
	r := openResource(t, s, appDB, Options{})
	want := map[string]bool{
		"X'6f746865722d6774726964',X'62',1":                        true,
		"X'00ff10',X'',7":                                          true,
		"X'6e6f742e612e676964',X'78',1954046769":                   true,
		xidSQL([]byte(gidLike.GTRID()), []byte(gidLike.Branch), 1): true,
	}
	var ps []participant.Prepared
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if ps, err = r.Prepared(ctx); err != nil {
			t.Fatal(err)
		}
		if len(ps) == len(foreign) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range ps {
		if !p.GID.IsZero() {
			t.Errorf("foreign xid %s read as gid %s", p.Raw, p.GID)
		}
		if !want[p.Raw] {
			t.Errorf("foreign xid listed as %q", p.Raw)
		}
		delete(want, p.Raw)
	}
	if len(want) != 0 {
		t.Fatalf("not listed: %v (listed %v)", want, ps)
	}
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "wal.db"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	rep, err := recovery.Pass(ctx, recovery.Config{CoordinatorID: "test", Log: log, Resources: []participant.Resource{r}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Foreign != len(foreign) || rep.Committed+rep.RolledBack != 0 {
		t.Fatalf("recovery: foreign %d committed %d rolled back %d; want %d foreign and nothing touched", rep.Foreign, rep.Committed, rep.RolledBack, len(foreign))
	}
	// An operator can finish each by the listed form.
	for _, p := range ps {
		if _, err := db.ExecContext(ctx, "XA ROLLBACK "+p.Raw); err != nil {
			t.Fatalf("XA ROLLBACK %s: %v", p.Raw, err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d rows after rolling the foreign xids back (%v), want 2", n, err)
	}
}

// Two branches that deadlock: the server picks a victim, whose branch
// votes no and rolls back; the other prepares and commits.
func TestDeadlockVictimVotesNo(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	a, b := begin(t, r, "a"), begin(t, r, "b")
	mustExec(t, a, "UPDATE "+table+" SET v = 1 WHERE id = 1")
	mustExec(t, b, "UPDATE "+table+" SET v = 2 WHERE id = 2")
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() { _, errA = a.ExecContext(ctx, "UPDATE "+table+" SET v = 1 WHERE id = 2") })
	time.Sleep(100 * time.Millisecond) // a waits for b's row lock
	wg.Go(func() { _, errB = b.ExecContext(ctx, "UPDATE "+table+" SET v = 2 WHERE id = 1") })
	wg.Wait()
	if (errA == nil) == (errB == nil) {
		t.Fatalf("want exactly one deadlock victim: a %v, b %v", errA, errB)
	}
	victim, winner := a, b
	if errB != nil {
		victim, winner = b, a
	}
	if n := errNumber(victim.Err()); n != erLockDeadlock {
		t.Fatalf("victim's error %v, want %d", victim.Err(), erLockDeadlock)
	}
	vote, err := victim.Prepare(ctx)
	if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
		t.Fatalf("victim's Prepare = %v, %v; want no", vote, err)
	}
	mustPrepare(t, winner, participant.VoteYes)
	if err := r.Commit(ctx, winner.GID()); err != nil {
		t.Fatal(err)
	}
	want := 1
	if winner == b {
		want = 2
	}
	if v1, v2 := value(t, db, table, 1), value(t, db, table, 2); v1 != want || v2 != want {
		t.Fatalf("v = %d, %d; want the winner's %d in both", v1, v2, want)
	}
	if xs := listXIDs(t, db); len(xs) != 0 {
		t.Fatalf("left prepared: %q", xs)
	}
}
