package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

type recoveryOptions struct {
	transactions int
	workers      int
	output       string
}

// Environment of the recovery child.
const (
	envRecoveryDSNA = "TXBENCH_RECOVERY_DSN_A"
	envRecoveryDSNB = "TXBENCH_RECOVERY_DSN_B"
	envRecoveryWAL  = "TXBENCH_RECOVERY_WAL"
	envRecoveryN    = "TXBENCH_RECOVERY_N"
	envRecoveryW    = "TXBENCH_RECOVERY_WORKERS"
)

const recoveryID = "recov"

func newRecoveryCmd() *cobra.Command {
	o := &recoveryOptions{}
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "Transactions left in doubt by a kill -9, and how long a restart takes to resolve them",
		Long: `Starts two throwaway PostgreSQL servers (fsync on) and a child process that runs
--transactions transfers through the coordinator, half with bank_a as their decision
holder and half on the bbolt log, and stalls every phase-two COMMIT PREPARED. Once
every transaction is decided (a commit row at the holder, or a COMMIT record in the
log) the child is killed with SIGKILL, leaving every transaction in doubt: prepared
branches at both servers, commit rows, pending COMMIT records.

Then a new coordinator starts on the same log and databases, and its start-up
recovery pass is timed. Afterwards nothing may be left prepared, no decision row
may remain, and every transfer must be in both databases.`,
		Example: `  txbench recovery --transactions 10000`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecovery(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().IntVar(&o.transactions, "transactions", 10000, "transactions to leave in doubt")
	cmd.Flags().IntVar(&o.workers, "workers", 32, "concurrent transactions while they are made")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	return cmd
}

// newRecoveryChildCmd is the child process of txbench recovery.
func newRecoveryChildCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "recovery-child",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return recoveryChild(cmd.Context(), cmd.OutOrStdout())
		},
	}
}

func (o *recoveryOptions) validate() error {
	if o.transactions < 2 || o.transactions > 100000 {
		return fmt.Errorf("--transactions: %d is outside 2..100000", o.transactions)
	}
	if o.workers < 1 || o.workers > 90 {
		return fmt.Errorf("--workers: %d is outside 1..90", o.workers)
	}
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output: want table or json, got %q", o.output)
	}
	return nil
}

// recoveryResult is what txbench recovery measured.
type recoveryResult struct {
	Transactions     int           `json:"transactions"`
	Held             int           `json:"with_holder"`
	Logged           int           `json:"on_the_log"`
	PreparedA        int           `json:"prepared_at_bank_a"`
	PreparedB        int           `json:"prepared_at_bank_b"`
	Rows             int           `json:"commit_rows_at_holder"`
	Pending          int           `json:"pending_commit_records"`
	Restart          time.Duration `json:"restart_ns"`
	Pass             time.Duration `json:"recovery_pass_ns"`
	Committed        int           `json:"branches_committed"`
	RolledBack       int           `json:"branches_rolled_back"`
	Redriven         int           `json:"log_decisions_driven"`
	HeldRedriven     int           `json:"holder_decisions_driven"`
	PreparedLeft     int           `json:"prepared_left"`
	RowsLeft         int           `json:"rows_left"`
	TransfersAtA     int           `json:"transfers_at_bank_a"`
	TransfersAtB     int           `json:"transfers_at_bank_b"`
	DecidedPerSecond float64       `json:"in_doubt_made_per_second"`
}

func runRecovery(ctx context.Context, out io.Writer, o *recoveryOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	srv, err := pgtest.StartMany(ctx, 2, pgtest.Options{MaxPreparedTransactions: o.transactions + 100, MaxConnections: 300})
	if err != nil {
		return err
	}
	for _, s := range srv {
		defer s.Stop()
	}
	var dsn [2]string
	var db [2]*sql.DB
	for i, name := range []string{"bank_a", "bank_b"} {
		if err := srv[i].CreateDB(ctx, name); err != nil {
			return err
		}
		dsn[i] = srv[i].DSN(name)
		d, err := sql.Open("postgres", dsn[i])
		if err != nil {
			return err
		}
		defer d.Close()
		d.SetMaxIdleConns(postgres.DefaultMaxIdleConns)
		db[i] = d
		if _, err := d.ExecContext(ctx, `CREATE TABLE transfers (txid uuid PRIMARY KEY, amount int NOT NULL)`); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "txbench-recovery-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	walPath := filepath.Join(dir, "txcoord.wal")

	// The child makes the transactions and stalls their phase two.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, "recovery-child")
	child.Env = append(os.Environ(), envRecoveryDSNA+"="+dsn[0], envRecoveryDSNB+"="+dsn[1], envRecoveryWAL+"="+walPath,
		envRecoveryN+"="+strconv.Itoa(o.transactions), envRecoveryW+"="+strconv.Itoa(o.workers))
	child.Stderr = os.Stderr
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	made := time.Now()
	if err := child.Start(); err != nil {
		return err
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready ") {
				ready <- sc.Text()
				return
			}
		}
		close(ready)
	}()
	var line string
	select {
	case l, ok := <-ready:
		if !ok {
			_ = child.Wait()
			return errors.New("recovery child exited before every transaction was decided")
		}
		line = l
	case <-time.After(15 * time.Minute):
		_ = child.Process.Kill()
		_ = child.Wait()
		return errors.New("recovery child did not decide every transaction within 15 minutes")
	}
	res := recoveryResult{Transactions: o.transactions}
	res.DecidedPerSecond = float64(o.transactions) / time.Since(made).Seconds()
	if _, err := fmt.Sscanf(line, "ready %d %d", &res.Held, &res.Logged); err != nil {
		return fmt.Errorf("recovery child: %q: %w", line, err)
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()

	count := func(d *sql.DB, q string) int {
		var n int
		if err := d.QueryRowContext(ctx, q).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	res.PreparedA = count(db[0], `SELECT count(*) FROM pg_prepared_xacts`)
	res.PreparedB = count(db[1], `SELECT count(*) FROM pg_prepared_xacts`)
	res.Rows = count(db[0], `SELECT count(*) FROM `+postgres.DefaultDecisionTable)

	// Restart: the log, the resources, a coordinator with its start-up pass.
	start := time.Now()
	log, err := wal.OpenBolt(walPath, wal.BoltOptions{Owner: "txc." + recoveryID})
	if err != nil {
		return err
	}
	defer log.Close()
	pending, err := log.Pending()
	if err != nil {
		return err
	}
	res.Pending = len(pending)
	var rs []participant.Resource
	for i, name := range []string{"bank_a", "bank_b"} {
		r, err := postgres.New(ctx, name, db[i], postgres.Options{Database: name})
		if err != nil {
			return err
		}
		rs = append(rs, r)
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: recoveryID, Log: log, Resources: rs, Holder: "bank_a",
		SkipStartupRecovery: true, RecoveryInterval: -1, OwnerWait: 30 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	passStart := time.Now()
	rep, err := c.Recover(ctx)
	res.Pass = time.Since(passStart)
	res.Restart = time.Since(start)
	if err != nil {
		return err
	}
	if err := rep.Err(); err != nil {
		return fmt.Errorf("the recovery pass reported errors: %w", err)
	}
	res.Committed, res.RolledBack, res.Redriven, res.HeldRedriven = rep.Committed, rep.RolledBack, rep.Redriven, rep.Held
	res.PreparedLeft = count(db[0], `SELECT count(*) FROM pg_prepared_xacts`) + count(db[1], `SELECT count(*) FROM pg_prepared_xacts`)
	res.RowsLeft = count(db[0], `SELECT count(*) FROM `+postgres.DefaultDecisionTable)
	res.TransfersAtA = count(db[0], `SELECT count(*) FROM transfers`)
	res.TransfersAtB = count(db[1], `SELECT count(*) FROM transfers`)
	var check error
	switch {
	case res.PreparedLeft != 0:
		check = fmt.Errorf("%d branches still prepared after recovery", res.PreparedLeft)
	case res.RowsLeft != 0:
		check = fmt.Errorf("%d decision rows left at the holder", res.RowsLeft)
	case res.TransfersAtA != o.transactions || res.TransfersAtB != o.transactions:
		check = fmt.Errorf("every decided transfer must be in both databases: %d at bank_a, %d at bank_b, want %d", res.TransfersAtA, res.TransfersAtB, o.transactions)
	}
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
		return check
	}
	fmt.Fprintf(out, "recovery benchmark: %d transactions left in doubt by kill -9 (made at %.0f/s by %d workers, phase two stalled)\n", o.transactions, res.DecidedPerSecond, o.workers)
	fmt.Fprintf(out, "  in doubt: %d with holder bank_a (%d commit rows), %d on the bbolt log (%d pending COMMIT records); prepared branches: %d at bank_a, %d at bank_b\n",
		res.Held, res.Rows, res.Logged, res.Pending, res.PreparedA, res.PreparedB)
	fmt.Fprintf(out, "  restart to resolved: %.2fs (recovery pass %.2fs): %d branches committed, %d rolled back; %d logged and %d held decisions driven to the end\n",
		res.Restart.Seconds(), res.Pass.Seconds(), res.Committed, res.RolledBack, res.Redriven, res.HeldRedriven)
	fmt.Fprintf(out, "  after: %d prepared, %d decision rows, transfers %d at bank_a and %d at bank_b\n", res.PreparedLeft, res.RowsLeft, res.TransfersAtA, res.TransfersAtB)
	return check
}

// stalled is a resource whose phase-two commits never succeed: the
// transactions stay decided and in doubt. decided hears each transaction
// whose phase two began.
type stalled struct {
	*postgres.Resource
	decided func(ids.TxID)
}

var errStalled = errors.New("txbench: phase two stalled on purpose")

func (s *stalled) Commit(ctx context.Context, gid ids.GID) error {
	s.decided(gid.TxID)
	return errStalled
}

func recoveryChild(ctx context.Context, out io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	n, err := strconv.Atoi(os.Getenv(envRecoveryN))
	if err != nil {
		return fmt.Errorf("%s: %w", envRecoveryN, err)
	}
	workers, err := strconv.Atoi(os.Getenv(envRecoveryW))
	if err != nil {
		return fmt.Errorf("%s: %w", envRecoveryW, err)
	}
	var mu sync.Mutex
	waiting := map[ids.TxID]chan struct{}{}
	decided := func(id ids.TxID) {
		mu.Lock()
		if ch, ok := waiting[id]; ok {
			close(ch)
			delete(waiting, id)
		}
		mu.Unlock()
	}
	var res [2]*stalled
	for i, k := range []string{envRecoveryDSNA, envRecoveryDSNB} {
		name := []string{"bank_a", "bank_b"}[i]
		r, err := postgres.Open(ctx, name, postgres.DriverPQ, os.Getenv(k), postgres.Options{})
		if err != nil {
			return err
		}
		defer r.Close()
		res[i] = &stalled{Resource: r, decided: decided}
	}
	log, err := wal.OpenBolt(os.Getenv(envRecoveryWAL), wal.BoltOptions{Owner: "txc." + recoveryID})
	if err != nil {
		return err
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: recoveryID, Log: log, Resources: []participant.Resource{res[0], res[1]},
		Holder: "bank_a", RecoveryInterval: -1, RetryBase: time.Second, RetryMax: time.Minute})
	if err != nil {
		return err
	}
	var next, held, logged atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				opt := coordinator.WithoutHolder()
				if i%2 == 0 {
					opt = coordinator.WithHolder("bank_a")
				}
				if err := stallOne(ctx, c, res, opt, &mu, waiting); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					held.Add(1)
				} else {
					logged.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Fprintf(out, "ready %d %d\n", held.Load(), logged.Load())
	select {} // killed here
}

// stallOne runs one transfer until its decision is durable; its phase two
// then retries in the background for ever.
func stallOne(ctx context.Context, c *coordinator.Coordinator, res [2]*stalled, opt coordinator.TxOption, mu *sync.Mutex, waiting map[ids.TxID]chan struct{}) error {
	tx, err := c.Begin(ctx, opt)
	if err != nil {
		return err
	}
	ch := make(chan struct{})
	mu.Lock()
	waiting[tx.ID()] = ch
	mu.Unlock()
	for i, r := range res {
		b, err := tx.Enlist(ctx, r)
		if err != nil {
			return err
		}
		pb := b.(*postgres.Branch)
		if _, err := pb.ExecContext(ctx, `INSERT INTO transfers VALUES ($1, $2)`, tx.ID().String(), 1-2*i); err != nil {
			return err
		}
	}
	failed := make(chan error, 1)
	go func() { failed <- tx.Commit(ctx) }()
	select {
	case <-ch:
		return nil
	case err := <-failed:
		return fmt.Errorf("transaction %s ended before its phase two: %v", tx.ID(), err)
	}
}
