package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/internal/pgtest"
)

var cmpModes = []string{"2pc", "2pc-holder", "2pc-grpc", "saga", "none"}

type cmpOptions struct {
	workloads []string
	modes     []string
	workers   []int
	duration  time.Duration
	warmup    time.Duration
	failRate  float64
	lockEvery time.Duration
	crash     bool
	accounts  int
	report    string
	output    string
	seed      uint64
}

func newCompareCmd() *cobra.Command {
	o := &cmpOptions{}
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "2PC against sagas (and against no atomicity) on the same workloads",
		Long: `Runs the same operations, moving money between accounts in 1 to 4 PostgreSQL
servers (started here, fsync on), in four modes:

  2pc         txcoord as a library: one branch per database, COMMIT logged in bbolt
  2pc-holder  the same with the first database's branch holding the decision in
              that database (no log write)
  2pc-grpc    through a txcoord server: the client calls one SDK service per
              database over loopback gRPC; the server commits them over gRPC
  saga      our orchestrated saga (not a peer's): a durable saga log in bbolt with
            group commit, each step a local transaction made idempotent by a marker
            row, compensations in reverse on failure, retried until done
  none      each step committed on its own: no atomicity, the ceiling

Workloads: transfer (2 databases), order (3), hotspot (2, a few hot rows),
sweep (1 to 4 databases). Each operation's last step debits the paying
account; with --fail-rate, that account is closed for some operations, so
the step fails after the others ran (2PC rolls back, the saga compensates,
none is left half done). With --crash, the second database server is killed
(SIGKILL) a third of the way into each run and restarted a second later.

Two readers read every database's total over and over and count the reads
where money is missing or doubled:
  plain    one ordinary query per database, in parallel (what an application's
           read sees); a read that is off is read again at once, and counted
           as stable when it is off by the same amount twice (a partial state
           that lasted, not a race between its own queries)
  locking  one transaction per database, all open until every database was
           read, each taking a SHARE lock on the table first (the whole-table
           SELECT ... FOR SHARE), in the order the operations take theirs: it
           waits for prepared branches, so under 2PC it sees no partial state;
           the time it waits is reported

For each run: throughput, latency p50/p95/p99, aborts, how long rows stay
locked and how long a change is partly visible, what both readers saw, a time
series (throughput, p99, the readers' findings and waits), and after recovery
whether the total is unchanged and nothing is prepared. A table goes to the
terminal; JSON, plots (PNG and SVG) and a summary in words go to --report.`,
		Example: `  # the short default sweep (make bench)
  txbench compare --report report
  # with a database server killed in every run
  txbench compare --workloads transfer --workers 8 --crash --report report/crash
  # the long sweep
  txbench compare --workers 1,2,4,8,16,32,64 --duration 30s --warmup 5s --report report/long`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCompare(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.workloads, "workloads", []string{"transfer", "order", "hotspot", "sweep"}, "workloads: transfer, order, hotspot, sweep")
	f.StringSliceVar(&o.modes, "modes", cmpModes, "modes: "+strings.Join(cmpModes, ", "))
	f.IntSliceVar(&o.workers, "workers", []int{1, 8}, "concurrency sweep (workers per run)")
	f.DurationVar(&o.duration, "duration", 2*time.Second, "measured time per run")
	f.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured time before each run")
	f.Float64Var(&o.failRate, "fail-rate", 0.1, "share of operations that fail for a business reason (0 to 1)")
	f.DurationVar(&o.lockEvery, "locking-every", 50*time.Millisecond, "how often the locking reader reads (0: no locking reader)")
	f.BoolVar(&o.crash, "crash", false, "kill -9 the second database server in the middle of each run, and restart it")
	f.IntVar(&o.accounts, "accounts", 10000, "accounts per database")
	f.StringVar(&o.report, "report", "", "write results.json, summary.md and SVG plots to this folder")
	f.StringVarP(&o.output, "output", "o", "table", "terminal output: table or json")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the operation mix")
	return cmd
}

func (o *cmpOptions) validate() error {
	var errs []error
	if o.duration <= 0 || o.warmup < 0 {
		errs = append(errs, fmt.Errorf("--duration must be positive and --warmup not negative"))
	}
	if o.crash && o.duration < 3*time.Second {
		errs = append(errs, fmt.Errorf("--crash needs --duration of at least 3s (the server is down for a second)"))
	}
	if o.lockEvery < 0 {
		errs = append(errs, fmt.Errorf("--locking-every must not be negative"))
	}
	if o.failRate < 0 || o.failRate > 1 {
		errs = append(errs, fmt.Errorf("--fail-rate %v is outside 0..1", o.failRate))
	}
	if len(o.workers) == 0 {
		errs = append(errs, errors.New("--workers needs at least one count"))
	}
	for _, w := range o.workers {
		if w < 1 || w > 64 {
			errs = append(errs, fmt.Errorf("--workers %d is outside 1..64", w))
		}
	}
	for _, m := range o.modes {
		if !contains(cmpModes, m) {
			errs = append(errs, fmt.Errorf("--modes: unknown mode %q (want %s)", m, strings.Join(cmpModes, ", ")))
		}
	}
	if o.accounts < 16 {
		errs = append(errs, fmt.Errorf("--accounts must be at least 16"))
	}
	if o.output != "table" && o.output != "json" {
		errs = append(errs, fmt.Errorf("-o %q: want table or json", o.output))
	}
	return errors.Join(errs...)
}

func runCompare(ctx context.Context, out, progress io.Writer, o *cmpOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := o.validate(); err != nil {
		return err
	}
	wls, err := workloadsFor(o.workloads, o.accounts)
	if err != nil {
		return err
	}
	need := 0
	for _, w := range wls {
		need = max(need, w.DBs)
	}
	fmt.Fprintf(progress, "starting %d PostgreSQL servers...\n", need)
	var servers []*pgtest.Server
	var dbs []*sql.DB
	var names []string
	started, err := pgtest.StartMany(ctx, need, pgtest.Options{})
	if err != nil {
		return err
	}
	for _, s := range started {
		defer s.Stop()
	}
	for i, s := range started {
		if err := s.CreateDB(ctx, "bench"); err != nil {
			return err
		}
		db, err := sql.Open("postgres", s.DSN("bench"))
		if err != nil {
			return err
		}
		defer db.Close()
		db.SetMaxIdleConns(200)
		servers, dbs, names = append(servers, s), append(dbs, db), append(names, fmt.Sprintf("db%d", i))
	}
	dir, err := os.MkdirTemp("", "txbench-compare-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	total := len(wls) * len(o.workers) * len(o.modes)
	n := 0
	var results []cmpResult
	for _, w := range wls {
		for _, workers := range o.workers {
			for _, mode := range o.modes {
				n++
				fmt.Fprintf(progress, "[%d/%d] %s %s workers=%d%s ... ", n, total, w.Name, mode, workers, map[bool]string{true: " crash", false: ""}[o.crash])
				r, err := runMode(ctx, w, mode, workers, o, dbs, names, servers, filepath.Join(dir, fmt.Sprint(n)))
				if err != nil {
					fmt.Fprintln(progress, "failed")
					return fmt.Errorf("%s %s workers=%d: %w", w.Name, mode, workers, err)
				}
				fmt.Fprintln(progress, r.progress())
				results = append(results, r)
			}
		}
	}
	if o.report != "" {
		if err := writeReport(o.report, o, wls, results); err != nil {
			return err
		}
		fmt.Fprintf(progress, "report written to %s (summary.md, results.json, plots as PNG and SVG)\n", o.report)
	}
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	defer func() {
		for _, w := range wls {
			for _, workers := range o.workers {
				if h := headline(results, w.Name, workers); h != "" {
					fmt.Fprintf(out, "%s, %s: %s of the throughput\n", w.Name, nWorkers(workers), h)
				}
			}
		}
	}()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tmode\tworkers\tops/s\tp50 ms\tp95 ms\tp99 ms\taborts\tlocked p99 ms\tpartly visible p99 ms\tnever healed\tplain reader off/reads (stable)\tlocking reader off/reads\tlocking wait p99 ms\tinvariant\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.1f%%\t%.2f\t%.2f\t%d\t%d/%d (%d)\t%s\t%.1f\t%v\t\n", r.Workload, r.Mode, r.Workers, r.TPS, r.P50, r.P95, r.P99, 100*r.AbortRate, r.LockedP99, r.InconsistentP99, r.NeverHealed, r.Anomalies, r.Audits, r.StableAnomalies, r.lockingCell(), r.LockWaitP99, r.InvariantHolds)
	}
	return tw.Flush()
}

func runMode(ctx context.Context, w workload, mode string, workers int, o *cmpOptions, dbs []*sql.DB, names []string, servers []*pgtest.Server, dir string) (cmpResult, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cmpResult{}, err
	}
	if err := w.reset(ctx, dbs); err != nil {
		return cmpResult{}, err
	}
	var m cmpMode
	var err error
	switch mode {
	case "none":
		m = &noneMode{dbs: dbs[:w.DBs]}
	case "2pc":
		m, err = newTwoPC(ctx, dir, dbs[:w.DBs], names[:w.DBs], false)
	case "2pc-holder":
		m, err = newTwoPC(ctx, dir, dbs[:w.DBs], names[:w.DBs], true)
	case "2pc-grpc":
		m, err = newGRPCMode(ctx, dir, dbs[:w.DBs], names[:w.DBs])
	case "saga":
		m, err = newSaga(dir, dbs[:w.DBs])
	}
	if err != nil {
		return cmpResult{}, err
	}
	defer m.close()
	spec := runSpec{w: w, mode: mode, workers: workers, duration: o.duration, warmup: o.warmup, failRate: o.failRate, crash: o.crash, seed: o.seed, lockedEvery: o.lockEvery}
	return runOne(ctx, spec, m, dbs, servers), nil
}
