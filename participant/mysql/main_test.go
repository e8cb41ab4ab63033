package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/participant"
)

// srv is the server shared by the tests that do not need one of their own.
var srv *mariadbtest.Server

const appDB = "app"

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := mariadbtest.Start(ctx, mariadbtest.Options{NoFsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv = s
	if err := s.CreateDB(ctx, appDB); err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = s.Stop()
		return 1
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

// rawDB is a pool straight to dbname on s, for checks outside any branch.
func rawDB(t *testing.T, s *mariadbtest.Server, dbname string) *sql.DB {
	t.Helper()
	c, err := gomysql.NewConnector(s.Config(dbname))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func openResource(t *testing.T, s *mariadbtest.Server, dbname string, opts Options) *Resource {
	t.Helper()
	r, err := Open(testCtx(t), "my", s.DSN(dbname), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

var tableSeq atomic.Int64

// newTable creates a fresh table (id, v) with rows 1 and 2 at v = 0.
func newTable(t *testing.T, db *sql.DB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", tableSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	ctx := testCtx(t)
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+quoteIdent(name)+" (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO "+quoteIdent(name)+" VALUES (1, 0), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	return quoteIdent(name)
}

func newGID(t *testing.T, branch string) ids.GID {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID(ids.DefaultPrefix, "test", id, branch)
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

func mustExec(t *testing.T, b *Branch, q string, args ...any) {
	t.Helper()
	if _, err := b.ExecContext(testCtx(t), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func mustPrepare(t *testing.T, b *Branch, want participant.Vote) {
	t.Helper()
	vote, err := b.Prepare(testCtx(t))
	if vote != want || (want != participant.VoteNo && err != nil) {
		t.Fatalf("Prepare = %v, %v; want %v", vote, err, want)
	}
}

func value(t *testing.T, db *sql.DB, table string, id int) int {
	t.Helper()
	var v int
	if err := db.QueryRowContext(testCtx(t), "SELECT v FROM "+table+" WHERE id = ?", id).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// listXIDs returns the raw data of every xid XA RECOVER lists.
func listXIDs(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.QueryContext(testCtx(t), "XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var f, gl, bl int64
		var data []byte
		if err := rows.Scan(&f, &gl, &bl, &data); err != nil {
			t.Fatal(err)
		}
		out = append(out, string(data))
	}
	return out
}

// isPrepared reports whether the server lists gid as prepared, in any
// database (with any database tag, or none).
func isPrepared(t *testing.T, db *sql.DB, gid ids.GID) bool {
	t.Helper()
	for _, d := range listXIDs(t, db) {
		if rest, ok := strings.CutPrefix(d, gid.GTRID()+gid.Branch); ok && (rest == "" || rest[0] == '@') {
			return true
		}
	}
	return false
}
