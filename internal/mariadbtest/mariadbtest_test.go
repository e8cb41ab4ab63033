package mariadbtest

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func open(t *testing.T, s *Server, dbname string) *sql.DB {
	t.Helper()
	c, err := mysql.NewConnector(s.Config(dbname))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// A server starts with the binary log and durable settings, a prepared XA
// transaction survives kill -9 and a restart, and Stop removes every file.
func TestStartKillRestartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := StartT(t, Options{})
	if s.Port() == 3306 {
		t.Fatal("the test server took the system server's port")
	}
	if err := s.CreateDB(ctx, "bank"); err != nil {
		t.Fatal(err)
	}
	db := open(t, s, "bank")
	var logBin, flush, syncBinlog int
	if err := db.QueryRowContext(ctx, "SELECT @@log_bin, @@innodb_flush_log_at_trx_commit, @@sync_binlog").Scan(&logBin, &flush, &syncBinlog); err != nil {
		t.Fatal(err)
	}
	if logBin != 1 || flush != 1 || syncBinlog != 1 {
		t.Fatalf("log_bin=%d innodb_flush_log_at_trx_commit=%d sync_binlog=%d, want 1 1 1", logBin, flush, syncBinlog)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB",
		"XA START 'g1','b1'", "INSERT INTO t VALUES (1)", "XA END 'g1','b1'", "XA PREPARE 'g1','b1'",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	_ = conn.Close()
	pid := s.Pid()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("running after Kill")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Pid() == pid {
		t.Fatal("the same process after Restart")
	}
	db2 := open(t, s, "bank")
	var n int
	if err := db2.QueryRowContext(ctx, "SELECT COUNT(*) FROM (SELECT 1 FROM information_schema.tables WHERE table_name = 't') x").Scan(&n); err != nil || n != 1 {
		t.Fatalf("table after restart: %d %v", n, err)
	}
	rows, err := db2.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	var found int
	for rows.Next() {
		var format, gl, bl int
		var data []byte
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
			t.Fatal(err)
		}
		if string(data) == "g1b1" {
			found++
		}
	}
	_ = rows.Close()
	if found != 1 {
		t.Fatalf("the prepared XA transaction was not there after kill -9 and restart")
	}
	if _, err := db2.ExecContext(ctx, "XA COMMIT 'g1','b1'"); err != nil {
		t.Fatal(err)
	}
	dir := s.DataDir()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data directory left after Stop: %v", err)
	}
	if err := s.Restart(ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("Restart after Stop: %v, want ErrStopped", err)
	}
}

func TestMissingBinariesNameWhatToInstall(t *testing.T) {
	t.Setenv(EnvBin, t.TempDir())
	_, err := Start(context.Background(), Options{})
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("Start with an empty %s: %v, want ErrNoBinaries", EnvBin, err)
	}
}

func TestBadOptionNameIsRefused(t *testing.T) {
	_, err := Start(context.Background(), Options{Config: map[string]string{"x; rm": "1"}})
	if err == nil || !strings.Contains(err.Error(), `bad option name "x; rm"`) {
		t.Fatalf("a bad option name: %v, want it refused by name", err)
	}
}
