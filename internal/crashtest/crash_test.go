package crashtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

const (
	accounts       = 10
	initialBalance = 1000
	coordinatorID  = "crash"
)

// Environment of a child process.
const (
	envMode = "CRASHTEST_MODE" // "work" or "recover"
	envDSNA = "CRASHTEST_DSN_A"
	envDSNB = "CRASHTEST_DSN_B"
	envWAL  = "CRASHTEST_WAL"
	envSeed = "CRASHTEST_SEED"
	envKind = "CRASHTEST_BANK_B" // bank_b's kind: kindPostgres or kindMySQL
)

// Kinds of bank_b. bank_a is always PostgreSQL, and holds the decisions of
// half the transfers.
const (
	kindPostgres = "postgres"
	kindMySQL    = "mysql"
)

// point is a crash point and how a run reaches it.
type point struct {
	name string
	// maxHit: the child crashes at a random hit in 1..maxHit.
	maxHit int
	// inRecovery: the point is armed in the recovery run that follows a
	// crash at leave (coord-after-decision if empty), not in the work run.
	inRecovery bool
	leave      string
}

var points = []point{
	{name: failpoint.CoordBeforeDecision, maxHit: 20},
	{name: failpoint.CoordAfterDecision, maxHit: 20},
	{name: failpoint.CoordBetweenCommits, maxHit: 20},
	{name: failpoint.CoordBeforeEnd, maxHit: 20},
	{name: failpoint.CoordAfterEnd, maxHit: 20},
	{name: failpoint.CoordBeforeOnePhase, maxHit: 4},
	{name: failpoint.CoordAfterOnePhase, maxHit: 4},
	{name: failpoint.WALBeforeSync, maxHit: 20},
	{name: failpoint.WALAfterSync, maxHit: 20},
	{name: failpoint.WALBeforeCompact, maxHit: 2},
	{name: failpoint.WALAfterCompact, maxHit: 2},
	{name: failpoint.WALBeforeMove, maxHit: 3},
	{name: failpoint.WALAfterMove, maxHit: 3},
	{name: failpoint.PGBeforePrepare, maxHit: 30},
	{name: failpoint.PGAfterPrepare, maxHit: 30},
	{name: failpoint.PGBeforeCommit, maxHit: 30},
	{name: failpoint.PGAfterCommit, maxHit: 30},
	{name: failpoint.PGBeforeRollback, maxHit: 3},
	{name: failpoint.PGAfterRollback, maxHit: 3},
	{name: failpoint.PGHolderBeforeInsert, maxHit: 20},
	{name: failpoint.PGHolderAfterInsert, maxHit: 20},
	{name: failpoint.PGHolderCommitSent, maxHit: 20},
	{name: failpoint.PGHolderAfterCommit, maxHit: 20},
	{name: failpoint.PGHolderBeforeForget, maxHit: 3},
	{name: failpoint.PGHolderAfterForget, maxHit: 3},
	{name: failpoint.PGBeforeForgetMarkers, maxHit: 3},
	{name: failpoint.PGAfterForgetMarkers, maxHit: 3},
	// A fence runs when recovery finds branches prepared for a holder
	// that holds no decision: left by a crash before the holder's row.
	{name: failpoint.PGBeforeFence, maxHit: 1, inRecovery: true, leave: failpoint.PGHolderBeforeInsert},
	{name: failpoint.PGAfterFence, maxHit: 1, inRecovery: true, leave: failpoint.PGHolderBeforeInsert},
	{name: failpoint.RecoveryBeforeResolve, maxHit: 2, inRecovery: true},
	{name: failpoint.RecoveryAfterResolve, maxHit: 2, inRecovery: true},
}

// mixedPoints are the crash points of a run whose bank_b is MariaDB: the
// coordinator's, bank_a's as a participant and as the holder, bank_b's XA
// steps, and recovery's.
var mixedPoints = []point{
	{name: failpoint.CoordBeforeDecision, maxHit: 20},
	{name: failpoint.CoordAfterDecision, maxHit: 20},
	{name: failpoint.CoordBetweenCommits, maxHit: 20},
	{name: failpoint.CoordBeforeEnd, maxHit: 20},
	{name: failpoint.CoordAfterEnd, maxHit: 20},
	{name: failpoint.CoordBeforeOnePhase, maxHit: 4},
	{name: failpoint.CoordAfterOnePhase, maxHit: 4},
	{name: failpoint.PGBeforePrepare, maxHit: 30},
	{name: failpoint.PGAfterPrepare, maxHit: 30},
	{name: failpoint.PGHolderCommitSent, maxHit: 20},
	{name: failpoint.MySQLBeforePrepare, maxHit: 30},
	{name: failpoint.MySQLAfterPrepare, maxHit: 30},
	{name: failpoint.MySQLBeforeCommit, maxHit: 30},
	{name: failpoint.MySQLAfterCommit, maxHit: 30},
	{name: failpoint.MySQLBeforeRollback, maxHit: 2},
	{name: failpoint.MySQLAfterRollback, maxHit: 2},
	{name: failpoint.MySQLBeforeForgetMarkers, maxHit: 3},
	{name: failpoint.MySQLAfterForgetMarkers, maxHit: 3},
	{name: failpoint.RecoveryBeforeResolve, maxHit: 2, inRecovery: true},
	{name: failpoint.RecoveryAfterResolve, maxHit: 2, inRecovery: true},
}

func runsPerPoint() int {
	if s := os.Getenv("CRASHTEST_RUNS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			return n
		}
	}
	return 20
}

// TestChild is the coordinator process that the crash test starts and
// kills. It does nothing unless CRASHTEST_MODE is set.
func TestChild(t *testing.T) {
	mode := os.Getenv(envMode)
	if mode == "" {
		t.Skip("runs only as a child of TestKillAtEveryCrashPoint")
	}
	if err := child(mode); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	os.Exit(0)
}

func child(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	log, err := wal.OpenBolt(os.Getenv(envWAL), wal.BoltOptions{LockTimeout: 5 * time.Second, Owner: "txc." + coordinatorID})
	if err != nil {
		return err
	}
	defer log.Close()
	var banks [2]bank
	a, err := postgres.Open(ctx, "bank_a", "postgres", os.Getenv(envDSNA), postgres.Options{})
	if err != nil {
		return err
	}
	defer a.Close()
	banks[0] = pgBank{a}
	if os.Getenv(envKind) == kindMySQL {
		b, err := mysql.Open(ctx, "bank_b", os.Getenv(envDSNB), mysql.Options{})
		if err != nil {
			return err
		}
		defer b.Close()
		banks[1] = myBank{b}
	} else {
		b, err := postgres.Open(ctx, "bank_b", "postgres", os.Getenv(envDSNB), postgres.Options{})
		if err != nil {
			return err
		}
		defer b.Close()
		banks[1] = pgBank{b}
	}
	interval := 20 * time.Millisecond
	if mode == "recover" {
		interval = -1
	}
	c, err := coordinator.New(ctx, coordinator.Config{
		ID: coordinatorID, Log: log, Resources: []participant.Resource{banks[0].resource(), banks[1].resource()},
		// Half the transfers keep their decision at bank_a (see work).
		Holder: "bank_a", ForgetInterval: 20 * time.Millisecond,
		RecoveryInterval: interval, RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond, Seed: seed,
		// Compact at every pass, so that compaction is crashed into too.
		KeepEnded: time.Millisecond,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if mode == "recover" {
		return nil
	}
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(r *rand.Rand) {
			defer wg.Done()
			for next.Add(1) <= 150 {
				_ = work(ctx, c, banks, r)
			}
		}(rand.New(rand.NewPCG(seed, uint64(w))))
	}
	wg.Wait()
	return nil
}

var errSwallowed = errors.New("statement failed and the application went on")

// work runs one random operation: mostly transfers between the banks, half
// of them with bank_a as their decision holder and half on the log, some
// single-bank deposits (one-phase commit), some transfers whose branch at
// bank_b sees an error the application ignores (that branch votes no), and
// some whose branch at bank_a does (with a holder, the holder refuses the
// decision).
func work(ctx context.Context, c *coordinator.Coordinator, banks [2]bank, r *rand.Rand) error {
	amount := int64(1 + r.IntN(300))
	op := r.IntN(10)
	var opts []coordinator.TxOption
	if r.IntN(2) == 0 {
		opts = append(opts, coordinator.WithoutHolder())
	}
	return c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		id := tx.ID().String()
		if op == 0 {
			b := banks[r.IntN(2)]
			_, err := entry(ctx, tx, b, id, "deposit", r.IntN(accounts), amount)
			return err
		}
		da := -amount
		if r.IntN(2) == 0 {
			da = amount
		}
		ba, err := entry(ctx, tx, banks[0], id, "transfer", r.IntN(accounts), da)
		if err != nil {
			return err
		}
		if op == 2 {
			_, _ = ba.Conn().ExecContext(ctx, "SELECT 1/0")
		}
		if _, err := entry(ctx, tx, banks[1], id, "transfer", r.IntN(accounts), -da); err != nil {
			return err
		}
		if op == 1 {
			br, err := banks[1].enlist(ctx, tx)
			if err != nil {
				return err
			}
			// Through the raw connection, so only the server knows
			// (PostgreSQL then refuses to commit; MariaDB goes on).
			_, _ = br.Conn().ExecContext(ctx, "SELECT * FROM no_such_table")
		}
		return nil
	}, opts...)
}

// bank is a database of either kind, and branch a transaction's work in
// it.
type bank interface {
	resource() participant.Resource
	enlist(ctx context.Context, tx *coordinator.Tx) (branch, error)
	// sql returns a statement with $n placeholders in the bank's dialect.
	sql(q string) string
}

type branch interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
	Conn() *sql.Conn
}

type pgBank struct{ r *postgres.Resource }

func (b pgBank) resource() participant.Resource { return b.r }
func (b pgBank) sql(q string) string            { return q }
func (b pgBank) enlist(ctx context.Context, tx *coordinator.Tx) (branch, error) {
	return b.r.Enlist(ctx, tx)
}

type myBank struct{ r *mysql.Resource }

func (b myBank) resource() participant.Resource { return b.r }
func (b myBank) enlist(ctx context.Context, tx *coordinator.Tx) (branch, error) {
	return b.r.Enlist(ctx, tx)
}

var placeholder = strings.NewReplacer("$1", "?", "$2", "?", "$3", "?", "$4", "?")

func (b myBank) sql(q string) string { return placeholder.Replace(q) }

// entry changes one balance and records the change in the ledger, in the
// transaction's branch at b.
func entry(ctx context.Context, tx *coordinator.Tx, b bank, txid, kind string, account int, delta int64) (branch, error) {
	br, err := b.enlist(ctx, tx)
	if err != nil {
		return nil, err
	}
	if _, err := br.ExecContext(ctx, b.sql(`UPDATE accounts SET balance = balance + $1 WHERE id = $2`), delta, account); err != nil {
		return nil, err
	}
	_, err = br.ExecContext(ctx, b.sql(`INSERT INTO ledger (txid, kind, account, delta) VALUES ($1, $2, $3, $4)`), txid, kind, account, delta)
	return br, err
}

type rig struct {
	kindB string
	dsn   [2]string
	db    [2]*sql.DB
	wal   string
}

// setup starts bank_a on PostgreSQL and bank_b on kindB, each with its
// accounts and an empty ledger.
func setup(t *testing.T, kindB string) *rig {
	t.Helper()
	ctx := context.Background()
	r := &rig{kindB: kindB, wal: filepath.Join(t.TempDir(), "txcoord.wal")}
	for i, name := range []string{"bank_a", "bank_b"} {
		var db *sql.DB
		create := []string{
			`CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))`,
			`CREATE TABLE ledger (txid text NOT NULL, kind text NOT NULL, account int NOT NULL, delta bigint NOT NULL)`,
			fmt.Sprintf(`INSERT INTO accounts SELECT g, %d FROM generate_series(0, %d) g`, initialBalance, accounts-1),
		}
		if i == 1 && kindB == kindMySQL {
			srv := mariadbtest.StartT(t, mariadbtest.Options{NoFsync: true})
			if err := srv.CreateDB(ctx, name); err != nil {
				t.Fatal(err)
			}
			r.dsn[i] = srv.DSN(name)
			c, err := gomysql.NewConnector(srv.Config(name))
			if err != nil {
				t.Fatal(err)
			}
			db = sql.OpenDB(c)
			var rows []string
			for a := range accounts {
				rows = append(rows, fmt.Sprintf("(%d, %d)", a, initialBalance))
			}
			create = []string{
				`CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)) ENGINE=InnoDB`,
				`CREATE TABLE ledger (txid varchar(64) NOT NULL, kind varchar(16) NOT NULL, account int NOT NULL, delta bigint NOT NULL) ENGINE=InnoDB`,
				`INSERT INTO accounts VALUES ` + strings.Join(rows, ", "),
			}
		} else {
			srv := pgtest.StartT(t, pgtest.Options{NoFsync: true})
			if err := srv.CreateDB(ctx, name); err != nil {
				t.Fatal(err)
			}
			r.dsn[i] = srv.DSN(name)
			var err error
			if db, err = sql.Open("postgres", r.dsn[i]); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { db.Close() })
		r.db[i] = db
		for _, q := range create {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	return r
}

// preparedCount counts the branches bank i holds prepared.
func (r *rig) preparedCount(t *testing.T, i int) int {
	t.Helper()
	ctx := context.Background()
	if i == 0 || r.kindB != kindMySQL {
		var n int
		if err := r.db[i].QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_xacts`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rows, err := r.db[i].QueryContext(ctx, "XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// spawn runs a child and reports whether SIGKILL ended it.
func (r *rig) spawn(t *testing.T, mode, crash string, seed uint64) (killed bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChild$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		envMode+"="+mode, envDSNA+"="+r.dsn[0], envDSNB+"="+r.dsn[1], envWAL+"="+r.wal, envKind+"="+r.kindB,
		envSeed+"="+strconv.FormatUint(seed, 10), failpoint.EnvVar+"="+crash,
		// The race detector otherwise waits a second at every exit.
		"GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		return false
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	t.Fatalf("child %s (crash %q) failed: %v\n%s", mode, crash, err, out)
	return false
}

// check verifies I1 and I4 after recovery: each transfer is in both ledgers
// or in neither, balances match the ledgers, nothing is prepared, and the
// log holds no unfinished decision.
func (r *rig) check(t *testing.T, label string) (transfers, deposits int) {
	t.Helper()
	ctx := context.Background()
	var sets [2]map[string]int64
	for i, db := range r.db {
		if prepared := r.preparedCount(t, i); prepared != 0 {
			t.Fatalf("%s: I4: %d prepared transactions left in bank %d after recovery", label, prepared, i)
		}
		var total, ledger int64
		if err := db.QueryRowContext(ctx, `SELECT (SELECT sum(balance) FROM accounts), (SELECT coalesce(sum(delta), 0) FROM ledger)`).Scan(&total, &ledger); err != nil {
			t.Fatal(err)
		}
		if total != accounts*initialBalance+ledger {
			t.Fatalf("%s: bank %d balance %d does not match its ledger %d", label, i, total, accounts*initialBalance+ledger)
		}
		rows, err := db.QueryContext(ctx, `SELECT txid, kind, delta FROM ledger`)
		if err != nil {
			t.Fatal(err)
		}
		sets[i] = map[string]int64{}
		for rows.Next() {
			var id, kind string
			var d int64
			if err := rows.Scan(&id, &kind, &d); err != nil {
				t.Fatal(err)
			}
			if kind == "deposit" {
				deposits++
				continue
			}
			sets[i][id] += d
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	for id, d := range sets[0] {
		e, ok := sets[1][id]
		if !ok {
			t.Fatalf("%s: I1 violated: transfer %s committed at bank_a only", label, id)
		}
		if d+e != 0 {
			t.Fatalf("%s: transfer %s moved %d out and %d in", label, id, d, e)
		}
	}
	for id := range sets[1] {
		if _, ok := sets[0][id]; !ok {
			t.Fatalf("%s: I1 violated: transfer %s committed at bank_b only", label, id)
		}
	}
	log, err := wal.OpenBolt(r.wal, wal.BoltOptions{LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("%s: log does not open after the crash: %v", label, err)
	}
	defer log.Close()
	pending, err := log.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 0 {
		t.Fatalf("%s: %d decisions still pending after recovery", label, len(pending))
	}
	var rows int
	if err := r.db[0].QueryRowContext(ctx, `SELECT count(*) FROM `+postgres.DefaultDecisionTable).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Fatalf("%s: %d decision rows left at the holder after recovery", label, rows)
	}
	return len(sets[0]), deposits
}

func testingChild() bool { return os.Getenv(envMode) != "" }

// TestKillAtEveryCrashPoint kills the coordinator with SIGKILL at every
// crash point, CRASHTEST_RUNS times each (20 by default), in the middle of
// concurrent random transfers across two real PostgreSQL servers; restarts
// it on the same log; and checks atomicity and that nothing stays
// prepared. CRASHTEST_SEED replays a run.
func TestKillAtEveryCrashPoint(t *testing.T) {
	if testingChild() {
		t.Skip("child")
	}
	killAtEveryCrashPoint(t, kindPostgres, points, runsPerPoint())
}

// TestKillAtEveryCrashPointMixed is TestKillAtEveryCrashPoint with bank_b
// on MariaDB: every transfer is a PostgreSQL + MariaDB transaction, and
// nothing may stay prepared in either (pg_prepared_xacts and XA RECOVER
// empty). It runs half as many kills per point.
func TestKillAtEveryCrashPointMixed(t *testing.T) {
	if testingChild() {
		t.Skip("child")
	}
	killAtEveryCrashPoint(t, kindMySQL, mixedPoints, max(3, runsPerPoint()/2))
}

func killAtEveryCrashPoint(t *testing.T, kindB string, points []point, runs int) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envSeed); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (replay with %s=%d)", seed, envSeed, seed)
	rnd := rand.New(rand.NewPCG(seed, 99))
	r := setup(t, kindB)
	var summary []string
	for _, p := range points {
		kills := 0
		for i := 0; i < runs; i++ {
			hit := 1 + rnd.IntN(p.maxHit)
			label := fmt.Sprintf("%s:%d (run %d)", p.name, hit, i+1)
			if p.inRecovery {
				// Leave work in doubt behind, then crash while recovering it.
				leave := p.leave
				if leave == "" {
					leave = failpoint.CoordAfterDecision
				}
				r.spawn(t, "work", fmt.Sprintf("%s:%d", leave, 1+rnd.IntN(10)), rnd.Uint64())
				if r.spawn(t, "recover", fmt.Sprintf("%s:%d", p.name, hit), rnd.Uint64()) {
					kills++
				}
			} else if r.spawn(t, "work", fmt.Sprintf("%s:%d", p.name, hit), rnd.Uint64()) {
				kills++
			}
			r.spawn(t, "recover", "", rnd.Uint64())
			r.check(t, label)
		}
		if kills == 0 {
			t.Errorf("crash point %s was never reached in %d runs", p.name, runs)
		}
		summary = append(summary, fmt.Sprintf("%s %d/%d", p.name, kills, runs))
	}
	transfers, deposits := r.check(t, "final")
	sort.Strings(summary)
	t.Logf("killed at: %s", strings.Join(summary, ", "))
	t.Logf("bank_b on %s: after all crashes and recoveries: %d transfers and %d deposits committed, every one all-or-nothing, nothing prepared", kindB, transfers, deposits)
}
