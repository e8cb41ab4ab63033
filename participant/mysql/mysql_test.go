package mysql

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// A branch that wrote prepares on its own session, is listed by the scan
// with its gid, commits, and a second commit is proven by its marker.
func TestPrepareScanCommitAndCommitAgain(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = v + 5 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	if r.Held() != 1 {
		t.Fatalf("held sessions = %d, want 1 (MariaDB keeps a prepared branch on its session)", r.Held())
	}
	ps, err := r.Prepared(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, p := range ps {
		if p.GID == b.GID() {
			found = true
			if p.Raw != b.GID().String() {
				t.Fatalf("Raw = %q, want the gid", p.Raw)
			}
		}
	}
	if !found {
		t.Fatalf("scan %v lacks %s", ps, b.GID())
	}
	if got := value(t, db, table, 1); got != 0 {
		t.Fatalf("prepared work visible before commit: v = %d", got)
	}
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}
	if r.Held() != 0 {
		t.Fatalf("held sessions after commit = %d", r.Held())
	}
	if got := value(t, db, table, 1); got != 5 {
		t.Fatalf("v = %d after commit, want 5", got)
	}
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatalf("second commit: %v, want nil (proven by the marker)", err)
	}
	if err := r.Rollback(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("rollback after commit: %v, want ErrUnknownBranch", err)
	}
	if err := r.ForgetProofs(ctx, []ids.GID{b.GID()}); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit after the marker was forgotten: %v, want ErrUnknownBranch", err)
	}
}

func TestRollbackIsIdempotent(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 7 WHERE id = 2")
	mustPrepare(t, b, participant.VoteYes)
	if err := r.Rollback(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}
	if err := r.Rollback(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("second rollback: %v, want ErrUnknownBranch", err)
	}
	if err := r.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit after rollback: %v, want ErrUnknownBranch", err)
	}
	if got := value(t, db, table, 2); got != 0 {
		t.Fatalf("v = %d after rollback", got)
	}
	if isPrepared(t, db, b.GID()) {
		t.Fatal("still prepared")
	}
}

// A branch whose statements show it changed nothing votes read-only and
// leaves nothing prepared; one that used the raw connection, or ran a
// statement that is neither a SELECT nor DML, prepares, since the server
// cannot tell whether it wrote.
func TestReadOnlyDetection(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})

	ro := begin(t, r, "ro")
	var v int
	if err := ro.QueryRowContext(ctx, "SELECT v FROM "+table+" WHERE id = 1").Scan(&v); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ro, "UPDATE "+table+" SET v = v WHERE id = 1") // matches, changes nothing
	mustPrepare(t, ro, participant.VoteReadOnly)
	if isPrepared(t, db, ro.GID()) {
		t.Fatal("a read-only branch was left prepared")
	}
	if err := ro.Abort(ctx); err != nil {
		t.Fatalf("Abort after a read-only vote: %v", err)
	}

	hidden := begin(t, r, "hidden")
	if _, err := hidden.Conn().ExecContext(ctx, "UPDATE "+table+" SET v = 3 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, hidden, participant.VoteYes)
	if err := r.Commit(ctx, hidden.GID()); err != nil {
		t.Fatal(err)
	}
	if got := value(t, db, table, 2); got != 3 {
		t.Fatalf("v = %d, want 3", got)
	}

	other := begin(t, r, "other")
	mustExec(t, other, "SET @x = 1")
	mustPrepare(t, other, participant.VoteYes)
	if err := r.Rollback(ctx, other.GID()); err != nil {
		t.Fatal(err)
	}
}

func TestBranchThatSawAnErrorVotesNo(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 9 WHERE id = 1")
	if _, err := b.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1, 1)"); err == nil {
		t.Fatal("duplicate key accepted")
	}
	vote, err := b.Prepare(ctx)
	if vote != participant.VoteNo || !errors.Is(err, ErrRolledBack) {
		t.Fatalf("Prepare = %v, %v; want no, ErrRolledBack", vote, err)
	}
	if v2, err2 := b.Prepare(ctx); v2 != vote || err2 == nil {
		t.Fatalf("second Prepare = %v, %v; want the first answer", v2, err2)
	}
	if got := value(t, db, table, 1); got != 0 {
		t.Fatalf("v = %d after a no vote", got)
	}
	if _, err := b.ExecContext(ctx, "SELECT 1"); !errors.Is(err, participant.ErrBranchDone) {
		t.Fatalf("statement after prepare: %v, want ErrBranchDone", err)
	}
	if isPrepared(t, db, b.GID()) {
		t.Fatal("left prepared")
	}
}

func TestCommitOnePhaseAndAbort(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	one := begin(t, r, "one")
	mustExec(t, one, "UPDATE "+table+" SET v = 4 WHERE id = 1")
	if err := one.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	if got := value(t, db, table, 1); got != 4 {
		t.Fatalf("v = %d after one-phase commit", got)
	}
	if err := one.CommitOnePhase(ctx); !errors.Is(err, participant.ErrBranchDone) {
		t.Fatalf("second one-phase commit: %v", err)
	}
	ab := begin(t, r, "ab")
	mustExec(t, ab, "UPDATE "+table+" SET v = 8 WHERE id = 2")
	if err := ab.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ab.Abort(ctx); err != nil {
		t.Fatalf("second abort: %v", err)
	}
	if got := value(t, db, table, 2); got != 0 {
		t.Fatalf("v = %d after abort", got)
	}
	// The pool is usable: the aborted session was left outside any branch.
	for i := range 3 {
		b := begin(t, r, "again")
		mustExec(t, b, "UPDATE "+table+" SET v = ? WHERE id = 2", i+10)
		if err := b.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// While the session that prepared a branch is held by one Resource,
// another process's commit is told the branch is busy, not unknown; once
// the session is let go (DetachAfter), anyone commits it.
func TestHeldSessionMakesOthersWaitThenDetaches(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{DetachAfter: 500 * time.Millisecond})
	other := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 1 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	if err := other.Commit(ctx, b.GID()); !errors.Is(err, participant.ErrBusy) {
		t.Fatalf("commit from another pool while the session is held: %v, want ErrBusy", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := other.Commit(ctx, b.GID())
		if err == nil {
			break
		}
		if !errors.Is(err, participant.ErrBusy) || time.Now().After(deadline) {
			t.Fatalf("commit after DetachAfter: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.Held() != 0 {
		t.Fatalf("still held: %d", r.Held())
	}
	if got := value(t, db, table, 1); got != 1 {
		t.Fatalf("v = %d", got)
	}
}

func TestGuardAdmitsOneOwner(t *testing.T) {
	ctx := testCtx(t)
	a := openResource(t, srv, appDB, Options{})
	b := openResource(t, srv, appDB, Options{})
	ca, err := a.Guard(ctx, "txc.guarded")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := b.Guard(short, "txc.guarded"); !errors.Is(err, participant.ErrOwnerRunning) {
		t.Fatalf("second claim: %v, want ErrOwnerRunning", err)
	}
	if err := ca.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ca.Release(); err != nil {
		t.Fatal(err)
	}
	cb, err := b.Guard(ctx, "txc.guarded")
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	if err := cb.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestProofsListOnlyTheOwnersMarkers(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{MarkerTable: "proofs_test"})
	var mine []ids.GID
	for i := range 3 {
		b := begin(t, r, "p")
		mustExec(t, b, "UPDATE "+table+" SET v = ? WHERE id = 1", i+1)
		mustPrepare(t, b, participant.VoteYes)
		if err := r.Commit(ctx, b.GID()); err != nil {
			t.Fatal(err)
		}
		mine = append(mine, b.GID())
	}
	got, err := r.Proofs(ctx, "txc.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("proofs = %v, want 3", got)
	}
	if other, err := r.Proofs(ctx, "txc.other"); err != nil || len(other) != 0 {
		t.Fatalf("another owner's proofs = %v, %v", other, err)
	}
	if _, err := r.Proofs(ctx, "no-dot"); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("bad owner: %v", err)
	}
	if err := r.ForgetProofs(ctx, mine[:2]); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.Proofs(ctx, "txc.test"); len(got) != 1 || got[0] != mine[2] {
		t.Fatalf("after forgetting two: %v", got)
	}
	if n, err := r.PurgeMarkers(ctx, 0); err != nil || n != 1 {
		t.Fatalf("PurgeMarkers = %d, %v", n, err)
	}
}

func TestOpenChecksTheDatabaseAndParsesURLs(t *testing.T) {
	ctx := testCtx(t)
	if _, err := Open(ctx, "my", srv.DSN(""), Options{}); !errors.Is(err, ErrWrongDatabase) {
		t.Fatalf("a DSN with no database: %v", err)
	}
	if _, err := Open(ctx, "my", srv.DSN(appDB), Options{Database: "other"}); !errors.Is(err, ErrWrongDatabase) {
		t.Fatalf("a DSN reaching another database: %v", err)
	}
	r, err := Open(ctx, "my", srv.URL(appDB), Options{})
	if err != nil {
		t.Fatalf("mysql:// URL: %v", err)
	}
	defer r.Close()
	if r.Database() != appDB || !strings.Contains(r.Version(), "MariaDB") {
		t.Fatalf("database %q version %q", r.Database(), r.Version())
	}
	if w := r.Warnings(); len(w) != 2 {
		// The shared server runs with NoFsync: both settings are reported.
		t.Fatalf("warnings = %q, want innodb_flush_log_at_trx_commit and sync_binlog", w)
	}
	if _, err := Open(ctx, "my", "postgres://x@y/z", Options{}); err == nil {
		t.Fatal("a postgres:// URL was accepted")
	}
	if _, err := Open(ctx, "bad name", srv.DSN(appDB), Options{}); !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("bad resource name: %v", err)
	}
}

func TestParseDSNForms(t *testing.T) {
	for in, want := range map[string]string{
		"mysql://u:p@h:3307/db?parseTime=true": "u:p@tcp(h:3307)/db?parseTime=true",
		"mariadb://u@h/db":                     "u@tcp(h:3306)/db",
		"u:p@tcp(h:3307)/db":                   "u:p@tcp(h:3307)/db",
	} {
		cfg, err := ParseDSN(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := cfg.FormatDSN(); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{"http://h/db", "u@tcp(h/db", "mysql://h:notaport/db"} {
		if _, err := ParseDSN(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestVersionsRefusedAndAccepted(t *testing.T) {
	for v, ok := range map[string]bool{
		"10.11.19-MariaDB-0+deb12u1-log": true,
		"10.5.2-MariaDB":                 true,
		"10.5.1-MariaDB":                 false,
		"10.4.30-MariaDB-log":            false,
		"5.5.5-10.6.12-MariaDB":          false, // a proxy's prefix: read as 5.5
		"8.0.36":                         true,
		"8.4.0-commercial":               true,
		"5.7.44-log":                     false,
		"garbage":                        false,
	} {
		_, err := parseVersion(v)
		if (err == nil) != ok {
			t.Errorf("%s: %v, want accepted %v", v, err, ok)
		}
		if err != nil && !errors.Is(err, ErrUnsupportedServer) {
			t.Errorf("%s: %v is not ErrUnsupportedServer", v, err)
		}
	}
}

// A pool without multiStatements (New with the caller's *sql.DB) works
// the same, one statement per round trip.
func TestPoolWithoutMultiStatements(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r, err := New(ctx, "single", db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.multi() {
		t.Fatal("a pool without multiStatements was taken for one with it")
	}
	if opened := openResource(t, srv, appDB, Options{}); !opened.multi() {
		t.Fatal("Open's pool does not take several statements")
	}
	b := begin(t, r, "b1")
	mustExec(t, b, "UPDATE "+table+" SET v = 3 WHERE id = 1")
	mustPrepare(t, b, participant.VoteYes)
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatalf("commit again: %v", err)
	}
	one := begin(t, r, "one")
	mustExec(t, one, "UPDATE "+table+" SET v = 4 WHERE id = 2")
	if err := one.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	ro := begin(t, r, "ro")
	mustExec(t, ro, "UPDATE "+table+" SET v = 4 WHERE id = 2")
	mustPrepare(t, ro, participant.VoteReadOnly)
	bad := begin(t, r, "bad")
	if _, err := bad.ExecContext(ctx, "UPDATE no_such_table SET v = 1"); err == nil {
		t.Fatal("no error")
	}
	if vote, _ := bad.Prepare(ctx); vote != participant.VoteNo {
		t.Fatalf("vote %v", vote)
	}
	if v1, v2 := value(t, db, table, 1), value(t, db, table, 2); v1 != 3 || v2 != 4 {
		t.Fatalf("v = %d, %d", v1, v2)
	}
	if xs := listXIDs(t, db); len(xs) != 0 {
		t.Fatalf("left prepared: %q", xs)
	}
}

// Several statements in one ExecContext may change rows the result does
// not count: such a branch prepares.
func TestSeveralStatementsMakeTheBranchPrepare(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	b := begin(t, r, "b1")
	if _, err := b.ExecContext(ctx, "UPDATE "+table+" SET v = 5 WHERE id = 1; UPDATE "+table+" SET v = 0 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := r.Commit(ctx, b.GID()); err != nil {
		t.Fatal(err)
	}
	if got := value(t, db, table, 1); got != 5 {
		t.Fatalf("v = %d", got)
	}
}

// Two databases on one server: XA RECOVER lists both databases' branches
// to each, and each Resource keeps to its own, by the tag in the bqual.
// Each commits its own, and a commit repeated after the other database's
// pass is proven by its own marker, never taken for a hazard.
func TestTwoDatabasesOnOneServerKeepToTheirOwnBranches(t *testing.T) {
	ctx := testCtx(t)
	if err := srv.CreateDB(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	shopDB, ledgerDB := rawDB(t, srv, appDB), rawDB(t, srv, "ledger")
	shopT, ledgerT := newTable(t, shopDB), newTable(t, ledgerDB)
	shop, ledger := openResource(t, srv, appDB, Options{}), openResource(t, srv, "ledger", Options{})
	// One transaction with a branch in each database, the same branch name
	// in both (as two coordinators' gids may be).
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID(ids.DefaultPrefix, "test", id, "0")
	if err != nil {
		t.Fatal(err)
	}
	bs, err := shop.Begin(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := ledger.Begin(ctx, g)
	if err != nil {
		t.Fatalf("the same gid in another database of the server: %v", err)
	}
	mustExec(t, bs.(*Branch), "UPDATE "+shopT+" SET v = v + 1 WHERE id = 1")
	mustExec(t, bl.(*Branch), "UPDATE "+ledgerT+" SET v = v + 1 WHERE id = 1")
	mustPrepare(t, bs.(*Branch), participant.VoteYes)
	mustPrepare(t, bl.(*Branch), participant.VoteYes)
	if n := len(listXIDs(t, shopDB)); n < 2 {
		t.Fatalf("XA RECOVER lists %d xids, want both databases' branches", n)
	}
	for _, c := range []struct {
		r    *Resource
		want string
	}{{shop, bs.(*Branch).XID()}, {ledger, bl.(*Branch).XID()}} {
		ps, err := c.r.Prepared(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ours []participant.Prepared
		for _, p := range ps {
			if !p.GID.IsZero() {
				ours = append(ours, p)
			}
		}
		if len(ours) != 1 || ours[0].GID != g || ours[0].Native != c.want {
			t.Fatalf("%s lists %+v, want only %s as %s", c.r.database, ours, g, c.want)
		}
	}
	if bs.(*Branch).XID() == bl.(*Branch).XID() {
		t.Fatalf("both databases' branches have the xid %s", bs.(*Branch).XID())
	}
	if err := ledger.Commit(ctx, g); err != nil {
		t.Fatal(err)
	}
	if err := shop.Commit(ctx, g); err != nil {
		t.Fatal(err)
	}
	// Commits repeated, as a recovery pass after a lost answer does.
	for _, r := range []*Resource{shop, ledger} {
		if err := r.Commit(ctx, g); err != nil {
			t.Fatalf("%s: repeated commit: %v, want nil (its marker proves it)", r.database, err)
		}
	}
	if value(t, shopDB, shopT, 1) != 1 || value(t, ledgerDB, ledgerT, 1) != 1 {
		t.Fatal("a database lacks its committed update")
	}
	if isPrepared(t, shopDB, g) {
		t.Fatal("a branch is left prepared")
	}
}

// A branch prepared under the xid without the database's tag (as a build
// before the tag wrote them) is listed, committed under the xid it has,
// and a repeated commit is proven by its marker.
func TestBranchWithoutTheTagIsFinishedUnderItsXID(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	table := newTable(t, db)
	r := openResource(t, srv, appDB, Options{})
	g := newGID(t, "b1")
	x := xidSQL([]byte(g.GTRID()), []byte(g.Branch), FormatID)
	if x == XID(g, appDB) {
		t.Fatalf("the untagged xid %s is the tagged one", x)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"XA START " + x, "UPDATE " + table + " SET v = v + 7 WHERE id = 1",
		r.markStmt(g), "XA END " + x, "XA PREPARE " + x} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	discard(conn) // detaches the prepared branch from the session
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, err := r.Prepared(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range ps {
			found = found || (p.GID == g && p.Native == x)
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scan %+v lacks %s as %s", ps, g, x)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var err2 error
	for time.Now().Before(deadline) {
		// Busy until the server has let go of the closed session.
		if err2 = r.Commit(ctx, g); !errors.Is(err2, participant.ErrBusy) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err2 != nil {
		t.Fatalf("commit of the untagged branch: %v", err2)
	}
	if got := value(t, db, table, 1); got != 7 {
		t.Fatalf("v = %d after commit, want 7", got)
	}
	if err := r.Commit(ctx, g); err != nil {
		t.Fatalf("repeated commit: %v, want nil (its marker proves it)", err)
	}
	if isPrepared(t, db, g) {
		t.Fatal("still prepared")
	}
}
