package pgtest

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openDB(t *testing.T, s *Server, dbname string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", s.DSN(dbname))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func show(t *testing.T, ctx context.Context, db *sql.DB, setting string) string {
	t.Helper()
	var v string
	if err := db.QueryRowContext(ctx, "SELECT current_setting($1)", setting).Scan(&v); err != nil {
		t.Fatalf("current_setting(%s): %v", setting, err)
	}
	return v
}

func TestServerStartsQueriesAndStopLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Pid() == 0 || !s.Running() {
		t.Fatalf("server not running after Start")
	}
	db := openDB(t, s, "postgres")
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	for setting, want := range map[string]string{
		"max_prepared_transactions": "100",
		"max_connections":           "200",
		"fsync":                     "on",
		"synchronous_commit":        "on",
		"listen_addresses":          "127.0.0.1",
		"unix_socket_directories":   "",
	} {
		if got := show(t, ctx, db, setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if !strings.Contains(s.LogTail(50), "database system is ready to accept connections") {
		t.Errorf("log does not say the server is ready:\n%s", s.LogTail(50))
	}
	if procs := serverProcs(s.DataDir()); len(procs) < 3 {
		t.Errorf("server processes found by working directory: %v, want the postmaster and its helpers", procs)
	}
	_ = db.Close()

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if procs := serverProcs(s.DataDir()); len(procs) != 0 {
		t.Errorf("processes %v alive after Stop", procs)
	}
	if _, err := os.Stat(s.DataDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir still exists after Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := s.Restart(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("Restart after Stop = %v, want ErrStopped", err)
	}
	if err := s.Kill(); !errors.Is(err, ErrStopped) {
		t.Errorf("Kill after Stop = %v, want ErrStopped", err)
	}
}

// StartMany starts servers of their own, and reports a failure to start.
func TestStartMany(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	servers := StartManyT(t, 2, Options{NoFsync: true})
	if len(servers) != 2 || servers[0].Port() == servers[1].Port() || servers[0].DataDir() == servers[1].DataDir() {
		t.Fatalf("want two servers of their own, got %d", len(servers))
	}
	for _, s := range servers {
		var one int
		if err := openDB(t, s, "postgres").QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("server at port %d: SELECT 1 = %d, %v", s.Port(), one, err)
		}
	}

	if _, err := StartMany(ctx, 2, Options{BaseDir: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("StartMany in a missing base directory succeeded")
	}
}

func TestPreparedTransactionSurvivesKillAndRestart(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s := StartT(t, Options{})
	if err := s.CreateDB(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	db := openDB(t, s, "app")
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (v int)"); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (42)", "PREPARE TRANSACTION 'survivor'"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	_ = conn.Close()

	port := s.Port()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if procs := serverProcs(s.DataDir()); s.Running() || len(procs) != 0 {
		t.Fatalf("server still running after Kill: %v", procs)
	}
	if err := db.PingContext(ctx); err == nil {
		t.Fatalf("ping succeeded against a killed server")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Port() != port {
		t.Errorf("port changed over restart: %d -> %d", port, s.Port())
	}
	if !strings.Contains(s.LogTail(100), "database system was interrupted") &&
		!strings.Contains(s.LogTail(100), "not properly shut down") {
		t.Errorf("log shows no crash recovery:\n%s", s.LogTail(40))
	}
	var gid string
	if err := db.QueryRowContext(ctx, "SELECT gid FROM pg_prepared_xacts").Scan(&gid); err != nil || gid != "survivor" {
		t.Fatalf("prepared transaction after restart: gid %q, %v", gid, err)
	}
	if _, err := db.ExecContext(ctx, "COMMIT PREPARED 'survivor'"); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRowContext(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("committed row: %d, %v", v, err)
	}
}

func TestOptionsReachTheServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s := StartT(t, Options{
		MaxPreparedTransactions: -1,
		MaxConnections:          50,
		NoFsync:                 true,
		Config:                  map[string]string{"application_name": `it's pg\test`},
	})
	db := openDB(t, s, "postgres")
	for setting, want := range map[string]string{
		"max_prepared_transactions": "0",
		"max_connections":           "50",
		"fsync":                     "off",
		"synchronous_commit":        "on",
		"application_name":          `it's pg\test`,
	} {
		if got := show(t, ctx, db, setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}

	if err := s.SetConf(ctx, "max_prepared_transactions", "7"); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := show(t, ctx, db, "max_prepared_transactions"); got != "7" {
		t.Errorf("after SetConf and Restart: max_prepared_transactions = %q, want 7", got)
	}
	if err := s.SetConf(ctx, "bad name; DROP", "1"); err == nil {
		t.Errorf("SetConf accepted a malformed setting name")
	}
	if err := s.ResetConf(ctx, "max_prepared_transactions"); err != nil {
		t.Fatal(err)
	}
}

func TestBinariesOverrideByEnv(t *testing.T) {
	t.Setenv(EnvBin, t.TempDir())
	if _, err := Binaries(); !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("Binaries with an empty %s = %v, want ErrNoBinaries", EnvBin, err)
	}
	if _, err := Start(context.Background(), Options{}); !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("Start without binaries = %v, want ErrNoBinaries", err)
	}
}

func TestBinariesFound(t *testing.T) {
	dir, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	if !hasServer(dir) {
		t.Fatalf("Binaries() = %q without initdb and postgres", dir)
	}
}

func TestNoBinariesMessageIsOneLine(t *testing.T) {
	msg := ErrNoBinaries.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "apt-get install postgresql") || !strings.Contains(msg, EnvBin) {
		t.Fatalf("message %q", msg)
	}
}

// ownerEnv makes the test binary act as the owner process in
// TestServerDoesNotOutliveItsOwner.
const ownerEnv = "PGTEST_OWNER_CHILD"

func TestServerDoesNotOutliveItsOwner(t *testing.T) {
	if os.Getenv(ownerEnv) == "1" {
		s, err := Start(context.Background(), Options{NoFsync: true})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("DATADIR", s.DataDir())
		select {} // until killed
	}
	t.Parallel()
	ctx := testCtx(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestServerDoesNotOutliveItsOwner$")
	cmd.Env = append(os.Environ(), ownerEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dataDir string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "DATADIR "); ok {
			dataDir = d
			break
		}
		t.Log(sc.Text())
	}
	if dataDir == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("owner process did not start a server")
	}
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Dir(dataDir)) })
	if procs := serverProcs(dataDir); len(procs) == 0 {
		t.Fatal("no server processes while the owner runs")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for {
		procs := serverProcs(dataDir)
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server processes %v outlived their owner", procs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
