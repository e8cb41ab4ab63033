package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
)

// srv is the server shared by the tests that do not need one of their own.
var srv *pgtest.Server

// Databases on srv.
const (
	appDB   = "app"
	otherDB = "other"
)

var drivers = []string{DriverPQ, DriverPGX}

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgtest.Start(ctx, pgtest.Options{NoFsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv = s
	for _, db := range []string{appDB, otherDB} {
		if err := s.CreateDB(ctx, db); err != nil {
			fmt.Fprintln(os.Stderr, err)
			_ = s.Stop()
			return 1
		}
	}
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// forDrivers runs f once per driver, as a subtest named after it.
func forDrivers(t *testing.T, f func(t *testing.T, driver string)) {
	t.Helper()
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) { f(t, d) })
	}
}

var resourceSeq atomic.Int64

// openResource opens a resource on database dbname of s and closes it when
// the test ends.
func openResource(t *testing.T, s *pgtest.Server, driver, dbname string) *Resource {
	t.Helper()
	ctx := testCtx(t)
	name := fmt.Sprintf("pg-%s-%d", strings.ReplaceAll(driver, "/", "-"), resourceSeq.Add(1))
	r, err := Open(ctx, name, driver, s.DSN(dbname), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// rawDB opens a lib/pq pool on dbname of s for checks that bypass the
// adapter.
func rawDB(t *testing.T, s *pgtest.Server, dbname string) *sql.DB {
	t.Helper()
	db, err := sql.Open(DriverPQ, s.DSN(dbname))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

var tableSeq atomic.Int64

// newTable creates a fresh table (k text primary key) in db and returns its
// name.
func newTable(t *testing.T, db *sql.DB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", tableSeq.Add(1))
	if _, err := db.ExecContext(testCtx(t), "CREATE TABLE "+name+" (k text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	return name
}

func newGID(t *testing.T, branch string) ids.GID {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID("txc", "test", id, branch)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func begin(t *testing.T, r *Resource, branch string) *Branch {
	t.Helper()
	br, err := r.Begin(testCtx(t), newGID(t, branch))
	if err != nil {
		t.Fatal(err)
	}
	return br.(*Branch)
}

func mustExec(t *testing.T, b *Branch, query string, args ...any) {
	t.Helper()
	if _, err := b.ExecContext(testCtx(t), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// preparedGIDs lists the gids in pg_prepared_xacts for every database of
// the server db is on.
func preparedGIDs(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.QueryContext(testCtx(t), "SELECT gid FROM pg_prepared_xacts ORDER BY gid")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func isPrepared(t *testing.T, db *sql.DB, gid ids.GID) bool {
	t.Helper()
	for _, g := range preparedGIDs(t, db) {
		if g == gid.String() {
			return true
		}
	}
	return false
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(testCtx(t), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
