package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/authz"

	"github.com/lib/pq"
	"github.com/spf13/cobra"
	"go.etcd.io/bbolt"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

const coordID = "stuck-1"

// The child: a coordinator that prepares a transfer across two databases
// and is killed at the crash point named in TXCOORD_CRASH.
func TestMain(m *testing.M) {
	if os.Getenv("TXCTL_TEST_CHILD") == "1" {
		os.Exit(child())
	}
	goleak.VerifyTestMain(m)
}

func child() int {
	ctx := context.Background()
	log, err := wal.OpenBolt(os.Getenv("TXCTL_TEST_WAL"), wal.BoltOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 10
	}
	var rs []participant.Resource
	var pgs []*postgres.Resource
	for _, name := range []string{"ledger_a", "ledger_b"} {
		r, err := postgres.Open(ctx, name, "postgres", os.Getenv("TXCTL_TEST_DSN_"+name), postgres.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 11
		}
		rs, pgs = append(rs, r), append(pgs, r)
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: coordID, Log: log, Resources: rs, RecoveryInterval: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 12
	}
	err = c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		fmt.Println(tx.ID())
		for i, r := range pgs {
			b, err := r.Enlist(ctx, tx)
			if err != nil {
				return err
			}
			if _, err := b.ExecContext(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = 1", []int{-10, 10}[i]); err != nil {
				return err
			}
		}
		return nil
	})
	fmt.Fprintln(os.Stderr, "not killed:", err)
	return 13
}

type fixture struct {
	pg      *pgtest.Server
	dsn     map[string]string
	walPath string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{pg: pgtest.StartT(t, pgtest.Options{}), dsn: map[string]string{}, walPath: filepath.Join(t.TempDir(), "txcoord.wal")}
	ctx := context.Background()
	for _, name := range []string{"ledger_a", "ledger_b"} {
		if err := f.pg.CreateDB(ctx, name); err != nil {
			t.Fatal(err)
		}
		f.dsn[name] = f.pg.DSN(name)
		db := f.db(t, name)
		if _, err := db.Exec("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts VALUES (1, 100), (2, 100)"); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) db(t *testing.T, name string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", f.dsn[name])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// crash runs the child coordinator to the crash point and returns the id
// of the transaction it left behind.
func (f *fixture) crash(t *testing.T, point string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TXCTL_TEST_CHILD=1", "TXCOORD_CRASH="+point, "TXCTL_TEST_WAL="+f.walPath,
		"TXCTL_TEST_DSN_ledger_a="+f.dsn["ledger_a"], "TXCTL_TEST_DSN_ledger_b="+f.dsn["ledger_b"])
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() >= 10 && ee.ExitCode() <= 13 {
		t.Fatalf("child did not crash at %s: %v\n%s", point, err, stderr.String())
	}
	id := strings.TrimSpace(stdout.String())
	if _, err := ids.ParseTxID(id); err != nil {
		t.Fatalf("child printed %q: %v\n%s", id, err, stderr.String())
	}
	return id
}

// serve starts the coordinator again on the same log, recovery off, and
// serves it on loopback; it returns the address.
func (f *fixture) serve(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	log, err := wal.OpenBolt(f.walPath, wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rs []participant.Resource
	for _, name := range []string{"ledger_a", "ledger_b"} {
		r, err := postgres.Open(ctx, name, "postgres", f.dsn[name], postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: coordID, Log: log, Resources: rs, RecoveryInterval: -1, SkipStartupRecovery: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Coordinator: c, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, Authorizer: authz.Insecure()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		c.Close()
		srv.Close()
		log.Close()
		for _, r := range rs {
			r.(*postgres.Resource).Close()
		}
	})
	return lis.Addr().String()
}

// txctl runs the command in-process and returns its exit code and output.
func txctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// locked reports whether row 1 of accounts is locked by someone else.
func locked(t *testing.T, db *sql.DB) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx, "SELECT balance FROM accounts WHERE id = 1 FOR UPDATE NOWAIT")
	var pe *pq.Error
	if errors.As(err, &pe) && pe.Code == "55P03" {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	return false
}

func preparedCount(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mustJSON(t *testing.T, what, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%s -o json is not JSON: %v\n%s", what, err, s)
	}
	return v
}

// A coordinator killed between PREPARE and the decision, recovery off: the
// row stays locked; txctl list shows the transaction in doubt with its
// age; txctl resolve --abort finishes it and the row can be updated again.
func TestStuckTransactionListedAndResolved(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	f := newFixture(t)
	id := f.crash(t, "coord-before-decision")
	dbA, dbB := f.db(t, "ledger_a"), f.db(t, "ledger_b")
	if !locked(t, dbA) || !locked(t, dbB) {
		t.Fatal("the prepared branches do not hold the row locks")
	}
	addr := f.serve(t)
	time.Sleep(20 * time.Millisecond)

	code, out, errOut := txctl(t, "list", "--server", addr)
	if code != exitOK || !strings.Contains(out, id) || !strings.Contains(out, "in-doubt") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = txctl(t, "list", "--server", addr, "-o", "json", "--state", "in-doubt")
	v := mustJSON(t, "list", out)
	txs, _ := v["transactions"].([]any)
	if code != exitOK || len(txs) != 1 {
		t.Fatalf("list -o json: exit %d, %v", code, v)
	}
	tx := txs[0].(map[string]any)
	if tx["txid"] != id || tx["state"] != "TX_STATE_IN_DOUBT" || len(tx["branches"].([]any)) != 2 {
		t.Fatalf("listed %v", tx)
	}
	ageStr, _ := tx["age"].(string)
	if ageStr == "" || ageStr == "0s" {
		t.Fatalf("no age: %v", tx)
	}
	code, out, _ = txctl(t, "show", id, "--server", addr)
	if code != exitOK || strings.Count(out, "prepared") < 2 || !strings.Contains(out, "none logged") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}
	if !locked(t, dbA) {
		t.Fatal("looking at it released the lock")
	}

	code, out, errOut = txctl(t, "resolve", id, "--abort", "--reason", "coordinator died before deciding", "--operator", "alice", "--server", addr)
	if code != exitOK {
		t.Fatalf("resolve: exit %d\n%s%s", code, out, errOut)
	}
	if locked(t, dbA) || locked(t, dbB) || preparedCount(t, dbA)+preparedCount(t, dbB) != 0 {
		t.Fatal("the branches still hold their locks after resolve")
	}
	if _, err := dbA.Exec("UPDATE accounts SET balance = balance + 1 WHERE id = 1"); err != nil {
		t.Fatalf("the row cannot be updated: %v", err)
	}
	var bal int
	if err := dbB.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&bal); err != nil || bal != 100 {
		t.Fatalf("ledger_b balance %d (%v): the aborted credit landed", bal, err)
	}
	code, out, _ = txctl(t, "show", id, "--server", addr, "-o", "json")
	v = mustJSON(t, "show", out)
	dec, _ := v["decision"].(map[string]any)
	if code != exitOK || dec == nil || dec["heuristic"] != true || !strings.Contains(fmt.Sprint(dec["who"]), "alice") || dec["why"] != "coordinator died before deciding" {
		t.Fatalf("the heuristic decision is not recorded with who and why: %v", v)
	}
}

// A transaction whose log holds COMMIT cannot be aborted by txctl: exit
// code 3 with an explanation, and nothing changes; --commit drives it.
func TestResolveRefusesToContradictTheLog(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	f := newFixture(t)
	id := f.crash(t, "coord-after-decision")
	dbA, dbB := f.db(t, "ledger_a"), f.db(t, "ledger_b")
	addr := f.serve(t)
	code, out, errOut := txctl(t, "resolve", id, "--abort", "--reason", "try", "--server", addr)
	if code != exitRefused || !strings.Contains(errOut, "COMMIT logged") || !strings.Contains(errOut, "never contradicted") {
		t.Fatalf("resolve --abort on a logged COMMIT: exit %d\n%s%s", code, out, errOut)
	}
	if preparedCount(t, dbA) != 1 || preparedCount(t, dbB) != 1 {
		t.Fatal("a refused resolve changed the branches")
	}
	code, out, _ = txctl(t, "show", id, "--server", addr, "-o", "json")
	v := mustJSON(t, "show", out)
	if v["state"] != "TX_STATE_COMMITTING" {
		t.Fatalf("after the refusal: %v", v["state"])
	}
	code, out, errOut = txctl(t, "resolve", id, "--commit", "--reason", "drive the logged decision", "--server", addr, "-o", "json")
	if code != exitOK {
		t.Fatalf("resolve --commit: exit %d\n%s%s", code, out, errOut)
	}
	mustJSON(t, "resolve", out)
	var a, b int
	dbA.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&a)
	dbB.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&b)
	if a != 90 || b != 110 || preparedCount(t, dbA)+preparedCount(t, dbB) != 0 {
		t.Fatalf("after driving COMMIT: balances %d, %d", a, b)
	}
	code, out, _ = txctl(t, "recover", "--server", addr, "-o", "json")
	if code != exitOK {
		t.Fatalf("recover: exit %d %s", code, out)
	}
	mustJSON(t, "recover", out)
	code, out, _ = txctl(t, "scan", "--dsn", f.dsn["ledger_a"], "-o", "json")
	if code != exitOK {
		t.Fatalf("scan: exit %d %s", code, out)
	}
	if v := mustJSON(t, "scan", out); len(v["prepared"].([]any)) != 0 {
		t.Fatalf("scan after resolve: %v", v)
	}
}

// scan sees a prepared transaction, ours or foreign, and what it locks,
// with no coordinator running.
func TestScanWithoutCoordinator(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	f := newFixture(t)
	id := f.crash(t, "coord-before-decision")
	dbA := f.db(t, "ledger_a")
	conn, err := dbA.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN; UPDATE accounts SET balance = 0 WHERE id = 2; PREPARE TRANSACTION 'someone-else''s'"); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	t.Cleanup(func() { dbA.Exec("ROLLBACK PREPARED 'someone-else''s'") })
	code, out, errOut := txctl(t, "scan", "--dsn", f.dsn["ledger_a"], "-o", "json")
	if code != exitOK {
		t.Fatalf("scan: exit %d %s%s", code, out, errOut)
	}
	rows := mustJSON(t, "scan", out)["prepared"].([]any)
	kinds := map[string]map[string]any{}
	n := 0
	for _, r := range rows {
		m := r.(map[string]any)
		if m["database"] != "ledger_a" {
			continue // the scan covers the whole server
		}
		n++
		kinds[m["kind"].(string)] = m
	}
	ours, foreign := kinds["txcoord"], kinds["foreign"]
	if n != 2 || len(rows) != 3 || ours == nil || foreign == nil || ours["txid"] != id || ours["coordinator"] != "txc."+coordID {
		t.Fatalf("scan rows: %v", rows)
	}
	if rels := fmt.Sprint(ours["relations"]); !strings.Contains(rels, "accounts") || ours["locks"].(float64) < 1 {
		t.Fatalf("what holds it: %v", ours)
	}
	code, out, _ = txctl(t, "scan", "--dsn", f.dsn["ledger_a"])
	if code != exitOK || !strings.Contains(out, "someone-else's") || !strings.Contains(out, "foreign") {
		t.Fatalf("scan table: %s", out)
	}
}

// wal verify names the damaged record and exits 6; inspect, verify and
// compact print JSON.
func TestWALOffline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "txcoord.wal")
	log, err := wal.OpenBolt(path, wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var txids []ids.TxID
	for i := 0; i < 3; i++ {
		id, _ := ids.NewTxID()
		g, _ := ids.NewGID("txc", "c1", id, "0")
		if _, err := log.Append(ctx, wal.Record{Kind: wal.KindCommit, TxID: id, Branches: []wal.Branch{{Resource: "db", GID: g}}}); err != nil {
			t.Fatal(err)
		}
		txids = append(txids, id)
	}
	if err := log.End(txids[0]); err != nil {
		t.Fatal(err)
	}
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"inspect", "verify"} {
		code, out, errOut := txctl(t, "wal", sub, "--wal", path, "-o", "json")
		if code != exitOK {
			t.Fatalf("wal %s: exit %d %s", sub, code, errOut)
		}
		mustJSON(t, "wal "+sub, out)
	}
	code, out, _ := txctl(t, "wal", "inspect", "--wal", path)
	if code != exitOK || strings.Count(out, "COMMIT") != 3 || !strings.Contains(out, txids[1].String()) {
		t.Fatalf("inspect: %s", out)
	}
	// The server's keep period by default: nothing ended that long ago.
	code, out, errOut := txctl(t, "wal", "compact", "--wal", path, "-o", "json")
	if v := mustJSON(t, "wal compact", out); code != exitOK || v["removed"].(float64) != 0 {
		t.Fatalf("compact: exit %d %v %s", code, v, errOut)
	}
	if code, _, errOut := txctl(t, "wal", "compact", "--wal", path, "--keep", "0"); code != exitUsage || !strings.Contains(errOut, "--reason") {
		t.Fatalf("compact --keep 0 without a reason: exit %d %s", code, errOut)
	}
	code, out, errOut = txctl(t, "wal", "compact", "--wal", path, "--keep", "0", "--reason", "test", "-o", "json")
	if v := mustJSON(t, "wal compact", out); code != exitOK || v["removed"].(float64) != 1 {
		t.Fatalf("compact --keep 0: exit %d %v %s", code, v, errOut)
	}

	// Damage the second record.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var key uint64
	if err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(wal.BucketLog))
		c := b.Cursor()
		k, v := c.First()
		k, v = c.Next()
		key = binary.BigEndian.Uint64(k)
		bad := append([]byte(nil), v...)
		bad[len(bad)/2] ^= 0xff
		return b.Put(append([]byte(nil), k...), bad)
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	code, out, errOut = txctl(t, "wal", "verify", "--wal", path)
	if code != exitCorrupt || !strings.Contains(errOut, fmt.Sprintf("key %d", key)) || !strings.Contains(errOut, `"log"`) {
		t.Fatalf("verify of a damaged log: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := txctl(t, "wal", "verify"); code != exitUsage {
		t.Fatalf("verify without --wal: exit %d", code)
	}

	// A log held by a running server.
	held, err := wal.OpenBolt(filepath.Join(t.TempDir(), "held.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if code, _, errOut := txctl(t, "wal", "inspect", "--wal", held.Path()); code != exitLocked || !strings.Contains(errOut, "stop it first") {
		t.Fatalf("inspect of a held log: exit %d %s", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"resolve", "not-a-txid", "--abort", "--reason", "x"},
		{"list", "-o", "yaml"},
		{"list", "--state", "sleeping"},
		{"nonsense"},
		{"list", "--timeout", "0s"},
	} {
		if code, _, errOut := txctl(t, args...); code != exitUsage || errOut == "" {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
	id, _ := ids.NewTxID()
	for _, args := range [][]string{
		{"resolve", id.String(), "--reason", "x"},
		{"resolve", id.String(), "--abort", "--commit", "--reason", "x"},
		{"resolve", id.String(), "--abort"},
	} {
		if code, _, errOut := txctl(t, args...); code != exitUsage || errOut == "" {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
}

// Every command's help has examples; completion scripts are generated.
func TestHelpAndCompletion(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.Hidden && c.Name() != "help" && c.Name() != "completion" && c.Parent() != nil && c.Parent().Name() != "completion" {
			if c.Example == "" {
				t.Errorf("%q has no examples in --help", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	for _, shell := range []string{"bash", "zsh", "fish"} {
		code, out, errOut := txctl(t, "completion", shell)
		if code != exitOK || !strings.Contains(out, "txctl") {
			t.Fatalf("completion %s: exit %d %s", shell, code, errOut)
		}
	}
}

// A DSN's password never appears in txctl's output or errors.
func TestScanKeepsDSNSecrets(t *testing.T) {
	for _, dsn := range []string{
		"postgres://app:hunter2-secret@127.0.0.1:1/x?sslmode=disable&connect_timeout=1",
		"host=127.0.0.1 port=1 user=app password=hunter3-secret dbname=x sslmode=disable connect_timeout=1",
		"postgres://app:hunter4-secret@127.0.0.1:1/x?sslmode=bogus",
		"postgres://127.0.0.1:1/x?user=app&password=hunter5-secret&connect_timeout=1",
		"host=127.0.0.1 port=1 user=app password = hunter6-secret dbname=x connect_timeout=1",
		"host=127.0.0.1 port=1 user=app password='hunter7 secret' dbname=x connect_timeout=1",
		"postgres://app:hunter8%zz@127.0.0.1:1/x",
	} {
		code, out, errOut := txctl(t, "scan", "--dsn", dsn, "--timeout", "3s")
		if code == exitOK || strings.Contains(out+errOut, "hunter") {
			t.Fatalf("scan of %q: exit %d\n%s%s", dsn, code, out, errOut)
		}
	}
	// From a file: read, used, and not shown either.
	file := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(file, []byte("host=127.0.0.1 port=1 user=app password=hunter9-secret dbname=x connect_timeout=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := txctl(t, "scan", "--dsn", "@"+file, "--timeout", "3s")
	if code != exitUnavailable || strings.Contains(out+errOut, "hunter") {
		t.Fatalf("scan --dsn @file: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = txctl(t, "scan", "--dsn", "@"+file+".missing")
	if code != exitUsage || !strings.Contains(errOut, "missing") {
		t.Fatalf("scan --dsn @missing: exit %d %s", code, errOut)
	}
}

// fakes is a coordinator served on loopback whose decision holder is the
// fake resource holder_db, beside the fake resource ledger; recovery is
// off and rows of finished decisions are kept (the forgetter waits an
// hour) so that they can be read.
type fakes struct {
	c      *coordinator.Coordinator
	log    *wal.Mem
	holder *fake.Holder
	ledger *fake.Resource
	addr   string
}

func serveFakes(t *testing.T, plant func(*wal.Mem)) *fakes {
	t.Helper()
	f := &fakes{log: wal.NewMem(), holder: fake.NewHolder("holder_db"), ledger: fake.New("ledger")}
	if plant != nil {
		plant(f.log)
	}
	c, err := coordinator.New(context.Background(), coordinator.Config{ID: coordID, Log: f.log, Resources: []participant.Resource{f.holder, f.ledger},
		Holder: "holder_db", ForgetInterval: time.Hour, RecoveryInterval: -1, SkipStartupRecovery: true, CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Coordinator: c, Authorizer: authz.Insecure()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		c.Close()
		srv.Close()
	})
	f.c, f.addr = c, lis.Addr().String()
	return f
}

// heldGID is the gid of branch n of transaction id when holder keeps its
// decision.
func heldGID(t *testing.T, id ids.TxID, n int, holder string) ids.GID {
	t.Helper()
	b, err := ids.HolderBranch(n, holder)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID(ids.DefaultPrefix, coordID, id, b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// lineOf returns the line of out that names id.
func lineOf(t *testing.T, out, id string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, id) {
			return l
		}
	}
	t.Fatalf("%s is not in\n%s", id, out)
	return ""
}

// list and show say where a decision lives: the log for a logged
// decision, the decision holder for a holder transaction (live, or
// committed and noted in the log), with what the holder's row says.
func TestListAndShowSayWhereTheDecisionLives(t *testing.T) {
	ctx := context.Background()
	logged, _ := ids.NewTxID()
	f := serveFakes(t, func(log *wal.Mem) {
		g, _ := ids.NewGID(ids.DefaultPrefix, coordID, logged, "0")
		if _, err := log.Append(ctx, wal.Record{Kind: wal.KindCommit, TxID: logged, Time: time.Now().UTC(), Branches: []wal.Branch{{Resource: "ledger", GID: g}}}); err != nil {
			t.Fatal(err)
		}
	})
	tx, err := f.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []participant.Resource{f.holder, f.ledger} {
		if _, err := tx.Enlist(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	live := tx.ID().String()

	code, out, errOut := txctl(t, "list", "--server", f.addr, "--no-scan")
	if code != exitOK || !strings.Contains(out, "DECISION AT") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("txctl list:\n%s", out)
	if l := lineOf(t, out, live); !strings.Contains(l, " holder_db ") {
		t.Fatalf("the live holder transaction's line does not name its holder: %q", l)
	}
	if l := lineOf(t, out, logged.String()); !strings.Contains(l, " log ") {
		t.Fatalf("the logged transaction's line does not say log: %q", l)
	}
	code, out, _ = txctl(t, "list", "--server", f.addr, "--no-scan", "-o", "json")
	holders := map[string]any{}
	for _, x := range mustJSON(t, "list", out)["transactions"].([]any) {
		m := x.(map[string]any)
		holders[m["txid"].(string)] = m["decision_holder"]
	}
	if code != exitOK || holders[live] != "holder_db" || holders[logged.String()] != "" {
		t.Fatalf("list -o json: exit %d, decision holders %v", code, holders)
	}
	code, out, _ = txctl(t, "show", live, "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "decision at  decision holder holder_db: it keeps no row") {
		t.Fatalf("show of the live holder transaction: exit %d\n%s", code, out)
	}
	code, out, _ = txctl(t, "show", logged.String(), "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "decision at  the coordinator's log") {
		t.Fatalf("show of the logged transaction: exit %d\n%s", code, out)
	}

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := f.log.Lookup(tx.ID()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder's decision was never noted in the log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, out, _ = txctl(t, "show", live, "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "decision holder holder_db: its row says commit") || !strings.Contains(out, "noted from decision holder holder_db's row") ||
		!strings.Contains(out, "HOLDER") || !strings.Contains(lineOf(t, out, "COMMIT  "), "holder_db") {
		t.Fatalf("show of the committed holder transaction: exit %d\n%s", code, out)
	}
	t.Logf("txctl show:\n%s", out)
	code, out, _ = txctl(t, "show", live, "--server", f.addr, "-o", "json")
	v := mustJSON(t, "show", out)
	dec, _ := v["decision"].(map[string]any)
	recs, _ := v["records"].([]any)
	if code != exitOK || v["decision_holder"] != "holder_db" || v["held_decision"] != "commit" || dec["holder"] != "holder_db" ||
		len(recs) != 1 || recs[0].(map[string]any)["holder"] != "holder_db" {
		t.Fatalf("show -o json: exit %d %v", code, v)
	}
}

// show finds a transaction that only its decision holder's row knows.
func TestShowTransactionOnlyAHolderRowKnows(t *testing.T) {
	f := serveFakes(t, nil)
	id, _ := ids.NewTxID()
	g := heldGID(t, id, 1, "holder_db")
	f.holder.PutRow(participant.Decision{TxID: id, Owner: ids.DefaultPrefix + "." + coordID, Outcome: participant.OutcomeCommit, Epoch: 1, Time: time.Now(),
		Branches: []participant.BranchRef{{Resource: "ledger", GID: g}}})
	code, out, errOut := txctl(t, "show", id.String(), "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "committing") || !strings.Contains(out, "decision holder holder_db: its row says commit") || !strings.Contains(out, g.String()) {
		t.Fatalf("show: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = txctl(t, "show", id.String(), "--server", f.addr, "-o", "json")
	v := mustJSON(t, "show", out)
	if code != exitOK || v["state"] != "TX_STATE_COMMITTING" || v["decision_holder"] != "holder_db" || v["held_decision"] != "commit" {
		t.Fatalf("show -o json: exit %d %v", code, v)
	}
	other, _ := ids.NewTxID()
	if code, _, errOut := txctl(t, "show", other.String(), "--server", f.addr); code != exitNotFound {
		t.Fatalf("show of an unknown transaction: exit %d %s", code, errOut)
	}
}

// I3 at the holder: resolve refuses an order that contradicts the
// holder's row (exit 3, the holder named, the branch untouched), and
// carries out one that agrees, saying the holder's row decided.
func TestResolveRefusesToContradictAHolderRow(t *testing.T) {
	f := serveFakes(t, nil)
	id, _ := ids.NewTxID()
	g := heldGID(t, id, 1, "holder_db")
	f.ledger.AddPrepared(g.String())
	f.holder.PutRow(participant.Decision{TxID: id, Owner: ids.DefaultPrefix + "." + coordID, Outcome: participant.OutcomeCommit, Epoch: 1, Time: time.Now(),
		Branches: []participant.BranchRef{{Resource: "ledger", GID: g}}})

	code, out, errOut := txctl(t, "list", "--server", f.addr)
	if l := lineOf(t, out, id.String()); code != exitOK || !strings.Contains(l, "in-doubt") || !strings.Contains(l, "holder_db (row: commit)") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("txctl list:\n%s", out)
	code, out, _ = txctl(t, "list", "--server", f.addr, "-o", "json", "--state", "in-doubt")
	txs, _ := mustJSON(t, "list", out)["transactions"].([]any)
	if code != exitOK || len(txs) != 1 || txs[0].(map[string]any)["decision_holder"] != "holder_db" || txs[0].(map[string]any)["held_decision"] != "commit" {
		t.Fatalf("list -o json: exit %d %v", code, txs)
	}

	code, out, errOut = txctl(t, "resolve", id.String(), "--abort", "--reason", "try", "--server", f.addr)
	if code != exitRefused || !strings.Contains(errOut, "decision holder holder_db keeps commit") || !strings.Contains(errOut, "never contradicted") {
		t.Fatalf("resolve --abort against a commit row: exit %d\n%s%s", code, out, errOut)
	}
	if !f.ledger.IsPrepared(g.String()) || f.ledger.IsRolledBack(g.String()) {
		t.Fatal("a refused resolve touched the branch")
	}
	code, out, errOut = txctl(t, "resolve", id.String(), "--commit", "--reason", "the row says commit", "--server", f.addr, "-o", "json")
	v := mustJSON(t, "resolve", out)
	if code != exitOK || v["decision_holder"] != "holder_db" || v["heuristic"] != false || !strings.Contains(fmt.Sprint(v["action"]), "committed as decision holder holder_db's row says") {
		t.Fatalf("resolve --commit: exit %d %v %s", code, v, errOut)
	}
	if !f.ledger.IsCommitted(g.String()) {
		t.Fatal("the branch was not committed")
	}

	// No row: the fence records an abort; --commit is refused, --abort
	// carried out.
	id2, _ := ids.NewTxID()
	g2 := heldGID(t, id2, 1, "holder_db")
	f.ledger.AddPrepared(g2.String())
	code, out, errOut = txctl(t, "resolve", id2.String(), "--commit", "--reason", "try", "--server", f.addr)
	if code != exitRefused || !strings.Contains(errOut, "decision holder holder_db keeps abort") {
		t.Fatalf("resolve --commit with no row: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "resolve", id2.String(), "--abort", "--reason", "the row says abort", "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "rolled back as decision holder holder_db's row says") || !f.ledger.IsRolledBack(g2.String()) {
		t.Fatalf("resolve --abort: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("txctl resolve:\n%s", out)

	code, out, _ = txctl(t, "recover", "--server", f.addr, "-o", "json")
	v = mustJSON(t, "recover", out)
	for _, k := range []string{"fenced", "held", "forgotten"} {
		if _, ok := v[k]; code != exitOK || !ok {
			t.Fatalf("recover -o json has no %s: exit %d %v", k, code, v)
		}
	}
	code, out, _ = txctl(t, "recover", "--server", f.addr)
	if code != exitOK || !strings.Contains(out, "decision holders: fenced") {
		t.Fatalf("recover: exit %d\n%s", code, out)
	}
}

// scan names the decision holder a prepared branch's gid names.
func TestScanNamesTheDecisionHolder(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	f := newFixture(t)
	id, _ := ids.NewTxID()
	held := heldGID(t, id, 1, "ledger_b")
	plain, _ := ids.NewGID(ids.DefaultPrefix, coordID, id, "2")
	dbA := f.db(t, "ledger_a")
	for i, g := range []ids.GID{held, plain} {
		conn, err := dbA.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(context.Background(), fmt.Sprintf("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = %d; PREPARE TRANSACTION %s", i+1, ids.QuoteLiteral(g.String()))); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		t.Cleanup(func() { dbA.Exec("ROLLBACK PREPARED " + ids.QuoteLiteral(g.String())) })
	}
	code, out, errOut := txctl(t, "scan", "--dsn", f.dsn["ledger_a"], "-o", "json")
	if code != exitOK {
		t.Fatalf("scan: exit %d %s%s", code, out, errOut)
	}
	holders := map[string]any{}
	for _, r := range mustJSON(t, "scan", out)["prepared"].([]any) {
		m := r.(map[string]any)
		holders[m["gid"].(string)] = m["holder"]
	}
	if holders[held.String()] != "ledger_b" || holders[plain.String()] != nil {
		t.Fatalf("scan -o json holders: %v", holders)
	}
	code, out, _ = txctl(t, "scan", "--dsn", f.dsn["ledger_a"])
	if code != exitOK || !strings.Contains(out, "DECISION AT") || !strings.Contains(lineOf(t, out, held.String()), " ledger_b ") || !strings.Contains(lineOf(t, out, plain.String()), " log ") {
		t.Fatalf("scan table:\n%s", out)
	}
	t.Logf("txctl scan:\n%s", out)
}

// A committed transaction whose ledger_b branch was rolled back by hand
// while the coordinator was down: after restart, recovery reports it as a
// heuristic hazard; txctl lists and shows it as one; resolve --commit refuses to end it
// (exit 3); with --accept-hazard it ends it.
func TestHazardListedShownAndEndedOnlyWhenAccepted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	f := newFixture(t)
	id := f.crash(t, "coord-after-decision")
	dbA, dbB := f.db(t, "ledger_a"), f.db(t, "ledger_b")
	var gid string
	if err := dbB.QueryRow("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()").Scan(&gid); err != nil {
		t.Fatal(err)
	}
	if _, err := dbB.Exec("ROLLBACK PREPARED '" + gid + "'"); err != nil {
		t.Fatal(err)
	}
	addr := f.serve(t)
	// The pass commits ledger_a and meets the hazard at ledger_b.
	code, out, errOut := txctl(t, "recover", "--server", addr)
	if code != exitOK || !strings.Contains(out, "heuristic hazard: "+id) || strings.Contains(out, "unfinished: "+id) {
		t.Fatalf("recover: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "list", "--state", "hazard", "--server", addr, "-o", "json")
	if code != exitOK || !strings.Contains(out, id) {
		t.Fatalf("list --state hazard: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "show", id, "--server", addr)
	if code != exitOK || !strings.Contains(out, "hazard") || !strings.Contains(out, "--accept-hazard") {
		t.Fatalf("show: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "resolve", id, "--commit", "--reason", "drive it", "--server", addr)
	if code != exitRefused || !strings.Contains(errOut, "heuristic hazard") {
		t.Fatalf("resolve --commit of a hazard: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "resolve", id, "--abort", "--accept-hazard", "--reason", "x", "--server", addr)
	if code != exitUsage {
		t.Fatalf("--accept-hazard with --abort: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = txctl(t, "resolve", id, "--commit", "--accept-hazard", "--reason", "ledger_b credit re-entered by hand", "--server", addr)
	if code != exitOK {
		t.Fatalf("resolve --commit --accept-hazard: exit %d\n%s%s", code, out, errOut)
	}
	var a, b int
	dbA.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&a)
	dbB.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&b)
	if a != 90 || b != 100 || preparedCount(t, dbA)+preparedCount(t, dbB) != 0 {
		t.Fatalf("balances %d, %d: want ledger_a committed and ledger_b rolled back by hand", a, b)
	}
	code, out, _ = txctl(t, "list", "--state", "hazard", "--server", addr, "-o", "json")
	if code != exitOK || strings.Contains(out, id) {
		t.Fatalf("still listed as a hazard after acceptance: exit %d\n%s", code, out)
	}
}

// On MariaDB, scan lists XA RECOVER's xids: txcoord's by gid with its
// transaction's age, a foreign one by the xid an operator can pass to XA
// ROLLBACK.
func TestScanListsMariaDBXIDs(t *testing.T) {
	ctx := context.Background()
	s := mariadbtest.StartT(t, mariadbtest.Options{NoFsync: true})
	if err := s.CreateDB(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "shop", "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB",
		"XA START 'other-program','b1',1", "INSERT INTO t VALUES (1)", "XA END 'other-program','b1',1", "XA PREPARE 'other-program','b1',1"); err != nil {
		t.Fatal(err)
	}
	r, err := mysql.Open(ctx, "shop", s.URL("shop"), mysql.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id, _ := ids.NewTxID()
	gid, _ := ids.NewGID("txc", coordID, id, "0")
	br, err := r.Begin(ctx, gid)
	if err != nil {
		t.Fatal(err)
	}
	b := br.(*mysql.Branch)
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if vote, err := b.Prepare(ctx); vote != participant.VoteYes {
		t.Fatalf("prepare: %v %v", vote, err)
	}
	code, out, errOut := txctl(t, "scan", "--dsn", s.URL("shop"), "-o", "json")
	if code != exitOK {
		t.Fatalf("scan: exit %d %s%s", code, out, errOut)
	}
	rows := mustJSON(t, "scan", out)["prepared"].([]any)
	kinds := map[string]map[string]any{}
	for _, row := range rows {
		m := row.(map[string]any)
		kinds[m["kind"].(string)] = m
	}
	ours, foreign := kinds["txcoord"], kinds["foreign"]
	if len(rows) != 2 || ours == nil || foreign == nil {
		t.Fatalf("scan rows: %v", rows)
	}
	if ours["gid"] != gid.String() || ours["txid"] != id.String() || ours["xid"] != mysql.XID(gid, "shop") || ours["server"] != "mysql" {
		t.Fatalf("ours: %v", ours)
	}
	if foreign["xid"] != "X'6f746865722d70726f6772616d',X'6231',1" {
		t.Fatalf("foreign: %v", foreign)
	}
	code, out, _ = txctl(t, "scan", "--dsn", s.URL("shop"))
	if code != exitOK || !strings.Contains(out, gid.String()) || !strings.Contains(out, "foreign") {
		t.Fatalf("scan table: %s", out)
	}
	if err := s.Exec(ctx, "shop", "XA ROLLBACK "+foreign["xid"].(string)); err != nil {
		t.Fatalf("the listed xid does not work in XA ROLLBACK: %v", err)
	}
	if err := r.Rollback(ctx, gid); err != nil {
		t.Fatal(err)
	}
}
