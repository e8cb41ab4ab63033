package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/saga"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
	etcdwal "github.com/txcoord/txcoord/wal/etcd"
)

type transferOptions struct {
	duration time.Duration
	warmup   time.Duration
	workers  []int
	accounts int
	modes    []string
	output   string
	logKind  string
	rounds   int
	profile  string
	memprof  string
	// bankB is bank_b's server: bankPostgres or bankMariaDB.
	bankB string
}

// Kinds of bank_b's server.
const (
	bankPostgres = "postgres"
	bankMariaDB  = "mariadb"
)

const (
	modeIndependent   = "independent"
	modePlain2PC      = "plain-2pc"
	modePlainHolder   = "plain-holder"
	modeTxcoord       = "txcoord"
	modeTxcoordHolder = "txcoord-holder"
	modeTxcoordGRPC   = "txcoord-grpc"
	modeNoMarkers     = "txcoord-nomarkers"
	modeHolderNoMarks = "txcoord-holder-nomarkers"
	modeTxcoordEtcd   = "txcoord-etcd"
)

var allModes = []string{modeIndependent, modePlain2PC, modePlainHolder, modeTxcoord, modeNoMarkers, modeTxcoordHolder, modeHolderNoMarks, modeTxcoordGRPC, modeTxcoordEtcd}

func newTransferCmd() *cobra.Command {
	o := &transferOptions{}
	cmd := &cobra.Command{
		Use:   "transfer",
		Short: "Transfers across two PostgreSQL servers: txcoord against a plain 2PC loop and independent commits",
		Long: `Starts two throwaway PostgreSQL servers (fsync on) and runs the same transfer
(UPDATE one account in each database) in three modes, at each worker count:

  independent  BEGIN; UPDATE; COMMIT at each database in turn: no atomicity, the ceiling
  plain-2pc    a hand-written loop: BEGIN; UPDATE; PREPARE TRANSACTION at both, then
               COMMIT PREPARED at both; no coordinator, no log
  plain-holder a hand-written loop with the decision held by bank_a: BEGIN (and the
               transaction's advisory lock); UPDATE at bank_a; BEGIN; UPDATE; PREPARE
               TRANSACTION at bank_b; INSERT the decision row and COMMIT at bank_a;
               COMMIT PREPARED at bank_b; rows deleted in batches. The holder
               design's floor: the statements txcoord-holder sends, no coordinator
  txcoord      the coordinator library with its bbolt log (fsync on)
  txcoord-nomarkers the same with resources that keep no markers (postgres
               Options.NoMarkers): the cost of proving commits, as txcoord's
               throughput relative to this mode's (paired, printed below the
               table)
  txcoord-holder the coordinator library with bank_a as the decision holder: no log
               write on the commit path
  txcoord-holder-nomarkers the same without markers (the cost of proving
               bank_b's commit, printed below the table)
  txcoord-etcd the coordinator library with its log on etcd (three members started
               in this process, fsync on): the decision is one etcd transaction,
               shared by concurrent commits
  txcoord-grpc the same through a txcoord server: the client begins and commits over
               gRPC and calls two bank services that join with the SDK; the server
               commits them over gRPC (all in this process, over loopback TCP;
               its log is always bbolt)

The coordinator's own overhead is txcoord's throughput relative to plain-2pc,
and txcoord-holder's relative to plain-holder. "forced writes" is the
servers' own count of WAL syncs (pg_stat_wal.wal_sync, both servers) per
transfer: 2N for plain 2PC with N=2 databases, 2N-1 for the holder modes, at
one worker; concurrent commits share syncs, so more workers show fewer.

With --bank-b mariadb, bank_b is a throwaway MariaDB server (binary log on,
innodb_flush_log_at_trx_commit=1, sync_binlog=1) taking part through XA, and
plain-2pc is the hand-written loop across both: BEGIN; UPDATE; PREPARE
TRANSACTION at bank_a, XA START; UPDATE; XA END; XA PREPARE at bank_b, then
COMMIT PREPARED and XA COMMIT (on the session that prepared it). Its forced
writes add MariaDB's InnoDB fsyncs and binary-log group commits.`,
		Example: `  txbench transfer --duration 5s --workers 1,8,32
  txbench transfer --bank-b mariadb --workers 8,32
  txbench transfer --modes txcoord,plain-2pc --workers 8 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.bankB == bankMariaDB {
				if !cmd.Flags().Changed("modes") {
					o.modes = mixedModes
				}
				return runMixedTransfer(cmd.Context(), cmd.OutOrStdout(), o)
			}
			return runTransfer(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().DurationVar(&o.duration, "duration", 5*time.Second, "measured time per mode and worker count")
	cmd.Flags().DurationVar(&o.warmup, "warmup", time.Second, "unmeasured time before each measurement")
	cmd.Flags().IntSliceVar(&o.workers, "workers", []int{1, 8, 32}, "worker counts")
	cmd.Flags().IntVar(&o.accounts, "accounts", 10000, "accounts per database (more accounts, less contention)")
	cmd.Flags().StringSliceVar(&o.modes, "modes", allModes, "modes to run: "+strings.Join(allModes, ","))
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of this process to `file`")
	cmd.Flags().StringVar(&o.memprof, "memprofile", "", "write a profile of this process's allocations to `file` at the end")
	cmd.Flags().IntVar(&o.rounds, "rounds", 3, "measure each mode this many times, alternating modes, and report the median (the machine's noise is large)")
	cmd.Flags().StringVar(&o.bankB, "bank-b", bankPostgres, "bank_b's server: postgres, or mariadb (through XA; bank_a stays PostgreSQL, modes "+strings.Join(mixedModes, ",")+", plain-2pc then being the hand-written PREPARE TRANSACTION + XA loop)")
	cmd.Flags().StringVar(&o.logKind, "log", "bolt", "txcoord's log: bolt (durable), or mem (not durable: shows the log's share of the cost)")
	return cmd
}

type result struct {
	Mode    string        `json:"mode"`
	Workers int           `json:"workers"`
	Done    int64         `json:"transfers"`
	Errors  int64         `json:"errors"`
	TPS     float64       `json:"tps"`
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
	// Relative is the median over rounds of this mode's throughput over
	// plain-2pc's in the same round.
	Relative float64 `json:"relative_to_plain_2pc,omitempty"`
	Syncs    uint64  `json:"wal_fsyncs,omitempty"`
	// RelativeHolder is the median over rounds of this mode's throughput
	// over plain-holder's in the same round.
	RelativeHolder float64 `json:"relative_to_plain_holder,omitempty"`
	// ForcedWrites is the servers' WAL syncs (pg_stat_wal.wal_sync) per
	// transfer.
	ForcedWrites float64 `json:"pg_wal_syncs_per_transfer"`
	// CPU is the whole machine's busy CPU time per transfer (databases
	// included), 0 where it cannot be read.
	CPU time.Duration `json:"cpu_per_transfer_ns,omitempty"`
	// ClientCPU is this process's share of CPU: the coordinator, the
	// drivers and the benchmark loop.
	ClientCPU time.Duration `json:"client_cpu_per_transfer_ns,omitempty"`
	// Rounds lists every round's throughput; the row is the median round.
	Rounds []float64 `json:"rounds_tps"`
}

func (o *transferOptions) validate() error {
	if o.duration <= 0 {
		return fmt.Errorf("--duration must be positive, got %v", o.duration)
	}
	if o.warmup < 0 {
		return fmt.Errorf("--warmup must not be negative, got %v", o.warmup)
	}
	if len(o.workers) == 0 {
		return errors.New("--workers needs at least one count")
	}
	for _, w := range o.workers {
		if w < 1 || w > 90 {
			return fmt.Errorf("--workers: %d is outside 1..90 (each worker holds two connections per server)", w)
		}
	}
	if o.accounts < 1 {
		return fmt.Errorf("--accounts must be at least 1, got %d", o.accounts)
	}
	modes := allModes
	switch o.bankB {
	case bankPostgres:
	case bankMariaDB:
		modes = mixedModes
	default:
		return fmt.Errorf("--bank-b: want %s or %s, got %q", bankPostgres, bankMariaDB, o.bankB)
	}
	for _, m := range o.modes {
		if !contains(modes, m) {
			return fmt.Errorf("--modes: mode %q is not run with bank_b on %s (want %s)", m, o.bankB, strings.Join(modes, ", "))
		}
	}
	if o.rounds < 1 {
		return fmt.Errorf("--rounds must be at least 1, got %d", o.rounds)
	}
	if o.logKind != "bolt" && o.logKind != "mem" {
		return fmt.Errorf("--log: want bolt or mem, got %q", o.logKind)
	}
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output: want table or json, got %q", o.output)
	}
	return nil
}

// startProfiles starts the CPU profile and arranges the allocation
// profile that the options ask for; stop writes them.
func (o *transferOptions) startProfiles() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if o.profile != "" {
		f, err := os.Create(o.profile)
		if err != nil {
			return stop, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return stop, err
		}
		stops = append(stops, func() { pprof.StopCPUProfile(); _ = f.Close() })
	}
	if o.memprof != "" {
		f, err := os.Create(o.memprof)
		if err != nil {
			stop()
			return func() {}, err
		}
		stops = append(stops, func() { _ = pprof.Lookup("allocs").WriteTo(f, 0); _ = f.Close() })
	}
	return stop, nil
}

func runTransfer(ctx context.Context, out io.Writer, o *transferOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	srv, db, closeBanks, err := startBanks(ctx, o.accounts)
	if err != nil {
		return err
	}
	defer closeBanks()
	var res [2]*postgres.Resource
	for i, name := range bankNames {
		r, err := postgres.New(ctx, name, db[i], postgres.Options{Database: name})
		if err != nil {
			return err
		}
		res[i] = r
	}
	dir, err := os.MkdirTemp("", "txbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var log wal.Log = wal.NewMem()
	if o.logKind == "bolt" {
		bl, err := wal.OpenBolt(filepath.Join(dir, "txcoord.wal"), wal.BoltOptions{Owner: "txc.bench"})
		if err != nil {
			return err
		}
		log = bl
	}
	defer log.Close()
	c, err := coordinator.New(ctx, coordinator.Config{ID: "bench", Log: log, Resources: []participant.Resource{res[0], res[1]}})
	if err != nil {
		return err
	}
	defer c.Close()
	// The same transfers with resources that keep no markers, under a
	// coordinator of their own with a log of the same kind.
	var cNM *coordinator.Coordinator
	var resNM [2]*postgres.Resource
	var logNM wal.Log = wal.NewMem()
	if contains(o.modes, modeNoMarkers) || contains(o.modes, modeHolderNoMarks) {
		for i, name := range bankNames {
			if resNM[i], err = postgres.New(ctx, name, db[i], postgres.Options{Database: name, NoMarkers: true}); err != nil {
				return err
			}
		}
		if o.logKind == "bolt" {
			bl, err := wal.OpenBolt(filepath.Join(dir, "txcoord-nomarkers.wal"), wal.BoltOptions{Owner: "txc.benchnm"})
			if err != nil {
				return err
			}
			logNM = bl
		}
		defer logNM.Close()
		if cNM, err = coordinator.New(ctx, coordinator.Config{ID: "benchnm", Log: logNM, Resources: []participant.Resource{resNM[0], resNM[1]}}); err != nil {
			return err
		}
		defer cNM.Close()
	}
	var plainRows *plainForgetter
	if contains(o.modes, modePlainHolder) {
		if plainRows, err = newPlainForgetter(ctx, db[0]); err != nil {
			return fmt.Errorf("plain-holder: %w", err)
		}
		defer plainRows.close()
	}
	var cE *coordinator.Coordinator
	var logE wal.Log
	if contains(o.modes, modeTxcoordEtcd) {
		cluster, err := etcdtest.Start(3)
		if err != nil {
			return fmt.Errorf("txcoord-etcd: %w", err)
		}
		defer cluster.Close()
		cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return fmt.Errorf("txcoord-etcd: %w", err)
		}
		defer cli.Close()
		if logE, err = etcdwal.Open(ctx, cli, etcdwal.Options{Prefix: "/txbench/txc.benchetcd/log/"}); err != nil {
			return fmt.Errorf("txcoord-etcd: %w", err)
		}
		defer logE.Close()
		if cE, err = coordinator.New(ctx, coordinator.Config{ID: "benchetcd", Log: logE, Resources: []participant.Resource{res[0], res[1]}}); err != nil {
			return fmt.Errorf("txcoord-etcd: %w", err)
		}
		defer cE.Close()
	}
	var rig *grpcMode
	if contains(o.modes, modeTxcoordGRPC) {
		rig, err = newGRPCMode(ctx, dir, db[:], bankNames)
		if err != nil {
			return fmt.Errorf("txcoord-grpc: %w", err)
		}
		defer rig.close()
	}

	stopProfiles, err := o.startProfiles()
	if err != nil {
		return err
	}
	defer stopProfiles()
	if o.output == "table" {
		fmt.Fprintf(out, "transfer benchmark: two PostgreSQL servers (127.0.0.1:%d, :%d, fsync on), %d accounts each, %v per run, median of %d alternating rounds\n", srv[0].Port(), srv[1].Port(), o.accounts, o.duration, o.rounds)
	}
	var results []result
	markerCost := map[int]float64{}       // txcoord / txcoord-nomarkers, paired, by workers
	holderMarkerCost := map[int]float64{} // the same with the decision holder
	var gidSeq atomic.Uint64
	for _, w := range o.workers {
		runs := map[string][]result{}
		for round := 0; round < o.rounds; round++ {
			for _, m := range o.modes {
				var op func(ctx context.Context, r *rand.Rand) error
				switch m {
				case modeIndependent:
					op = func(ctx context.Context, r *rand.Rand) error {
						return independent(ctx, db, [2]string{debit, credit}, r, o.accounts)
					}
				case modePlain2PC:
					op = func(ctx context.Context, r *rand.Rand) error {
						return plain2PC(ctx, db, r, o.accounts, gidSeq.Add(1))
					}
				case modePlainHolder:
					op = func(ctx context.Context, r *rand.Rand) error {
						return plainHolder(ctx, db, r, o.accounts, gidSeq.Add(1), plainRows)
					}
				case modeTxcoord:
					op = func(ctx context.Context, r *rand.Rand) error {
						return viaTxcoord(ctx, c, res, r, o.accounts, coordinator.WithoutHolder())
					}
				case modeNoMarkers:
					op = func(ctx context.Context, r *rand.Rand) error {
						return viaTxcoord(ctx, cNM, resNM, r, o.accounts, coordinator.WithoutHolder())
					}
				case modeTxcoordEtcd:
					op = func(ctx context.Context, r *rand.Rand) error {
						return viaTxcoord(ctx, cE, res, r, o.accounts, coordinator.WithoutHolder())
					}
				case modeTxcoordHolder:
					op = func(ctx context.Context, r *rand.Rand) error {
						return viaTxcoord(ctx, c, res, r, o.accounts, coordinator.WithHolder(res[0].Name()))
					}
				case modeHolderNoMarks:
					op = func(ctx context.Context, r *rand.Rand) error {
						return viaTxcoord(ctx, cNM, resNM, r, o.accounts, coordinator.WithHolder(resNM[0].Name()))
					}
				case modeTxcoordGRPC:
					op = func(ctx context.Context, r *rand.Rand) error { return grpcTransfer(ctx, rig, r, o.accounts) }
				}
				before, beforeNM := log.Stats().Syncs, logNM.Stats().Syncs
				var beforeE uint64
				if logE != nil {
					beforeE = logE.Stats().Syncs
				}
				var beforeRig uint64
				if rig != nil {
					beforeRig = rig.log.Stats().Syncs
				}
				r := measure(ctx, w, o.warmup, o.duration, op, func(ctx context.Context) (int64, bool) { return walSyncs(ctx, db[:]) })
				r.Mode = m
				switch m {
				case modeTxcoord:
					r.Syncs = log.Stats().Syncs - before
				case modeNoMarkers:
					r.Syncs = logNM.Stats().Syncs - beforeNM
				case modeTxcoordEtcd:
					r.Syncs = logE.Stats().Syncs - beforeE
				case modeTxcoordGRPC:
					r.Syncs = rig.log.Stats().Syncs - beforeRig
				}
				runs[m] = append(runs[m], r)
			}
		}
		for _, m := range o.modes {
			r := median(runs[m])
			r.Relative = pairedRatio(runs[m], runs[modePlain2PC])
			if m != modePlainHolder {
				r.RelativeHolder = pairedRatio(runs[m], runs[modePlainHolder])
			}
			results = append(results, r)
		}
		if contains(o.modes, modeTxcoord) && contains(o.modes, modeNoMarkers) {
			markerCost[w] = pairedRatio(runs[modeTxcoord], runs[modeNoMarkers])
		}
		if contains(o.modes, modeTxcoordHolder) && contains(o.modes, modeHolderNoMarks) {
			holderMarkerCost[w] = pairedRatio(runs[modeTxcoordHolder], runs[modeHolderNoMarks])
		}
	}
	// What the holders keep after the run: finished decisions are deleted.
	if plainRows != nil {
		plainRows.close()
	}
	c.Close()
	if cNM != nil {
		cNM.Close()
	}
	if cE != nil {
		cE.Close()
	}
	// Markers of ended transactions are deleted by the forgetter; the SDK
	// services of txcoord-grpc keep theirs for MarkerRetention (24h), so
	// they are counted apart.
	var markersLeft, sdkMarkers [2]int
	for i := range db {
		if err := db[i].QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE gid NOT LIKE $1), count(*) FILTER (WHERE gid LIKE $1) FROM `+res[i].MarkerTable(),
			"txc."+grpcCoordinatorID+".%").Scan(&markersLeft[i], &sdkMarkers[i]); err != nil {
			return err
		}
	}
	var heldRows, plainHeldRows int
	if contains(o.modes, modeTxcoordHolder) {
		if err := db[0].QueryRowContext(ctx, `SELECT count(*) FROM `+res[0].DecisionTable()).Scan(&heldRows); err != nil {
			return err
		}
	}
	if plainRows != nil {
		if err := db[0].QueryRowContext(ctx, `SELECT count(*) FROM plain_decisions`).Scan(&plainHeldRows); err != nil {
			return err
		}
	}
	for i := range db {
		var n int
		if err := db[i].QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_xacts`).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d prepared transactions left at server %d", n, i)
		}
	}
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workers\tmode\ttransfers/s\tp50\tp99\tvs plain-2pc (paired)\tvs plain-holder\tforced writes\tCPU/transfer\tof which client\terrors\trounds (transfers/s)\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%v\t%v\t%s\t%s\t%.2f\t%v\t%v\t%d\t%s\t\n", r.Workers, r.Mode, r.TPS, r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), pctOf(r.Relative), pctOf(r.RelativeHolder), r.ForcedWrites, r.CPU.Round(time.Microsecond), r.ClientCPU.Round(time.Microsecond), r.Errors, fmtRounds(r.Rounds))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printMarkerCost(out, "txcoord / txcoord-nomarkers", markerCost, o.workers)
	printMarkerCost(out, "txcoord-holder / txcoord-holder-nomarkers", holderMarkerCost, o.workers)
	fmt.Fprintf(out, "markers left after the run: %d (bank_a), %d (bank_b)", markersLeft[0], markersLeft[1])
	if contains(o.modes, modeTxcoordGRPC) {
		fmt.Fprintf(out, "; the SDK services' (txcoord-grpc), kept for their MarkerRetention: %d, %d", sdkMarkers[0], sdkMarkers[1])
	}
	fmt.Fprintln(out)
	if contains(o.modes, modeTxcoordHolder) {
		fmt.Fprintf(out, "decision rows left at the holder after the run: %d (txcoord-holder, %s)", heldRows, res[0].DecisionTable())
		if plainRows != nil {
			fmt.Fprintf(out, ", %d (plain-holder)", plainHeldRows)
		}
		fmt.Fprintln(out)
	}
	return nil
}

// printMarkerCost prints what proving commits cost, paired, at each worker
// count: ratio is a mode's throughput over its no-markers twin's.
func printMarkerCost(out io.Writer, what string, ratio map[int]float64, workers []int) {
	if len(ratio) == 0 {
		return
	}
	var parts []string
	for _, w := range workers {
		parts = append(parts, fmt.Sprintf("%s at %d workers", pctOf(ratio[w]), w))
	}
	fmt.Fprintf(out, "cost of proving commits (markers): %s, paired: %s\n", what, strings.Join(parts, ", "))
}

// pctOf shows a ratio as a percentage, "-" when there is none.
func pctOf(v float64) string {
	if v <= 0 {
		return "-"
	}
	return strconv.FormatFloat(v*100, 'f', 1, 64) + "%"
}

// benchIdleConns is the idle-pool size of the benchmark's pools.
const benchIdleConns = 200

const debit = `UPDATE accounts SET balance = balance - 1 WHERE id = $1`
const credit = `UPDATE accounts SET balance = balance + 1 WHERE id = $1`

// independent commits each side on its own (qs: the debit at db[0], the
// credit at db[1]): the ceiling, with no atomicity.
func independent(ctx context.Context, db [2]*sql.DB, qs [2]string, r *rand.Rand, accounts int) error {
	for i, q := range qs {
		tx, err := db[i].BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, q, r.IntN(accounts)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

// plain2PC is the hand-written loop: the same statements txcoord sends,
// with no coordinator and no log.
func plain2PC(ctx context.Context, db [2]*sql.DB, r *rand.Rand, accounts int, seq uint64) error {
	gid := "bench_plain_" + strconv.FormatUint(seq, 10)
	var conns [2]*sql.Conn
	for i, q := range []string{debit, credit} {
		conn, err := db[i].Conn(ctx)
		if err != nil {
			return err
		}
		conns[i] = conn
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, q, r.IntN(accounts)); err != nil {
			conn.ExecContext(ctx, "ROLLBACK")
			return err
		}
	}
	for i := range conns {
		if _, err := conns[i].ExecContext(ctx, "PREPARE TRANSACTION "+ids.QuoteLiteral(gid)); err != nil {
			return err
		}
	}
	for i := range conns {
		if _, err := conns[i].ExecContext(ctx, "COMMIT PREPARED "+ids.QuoteLiteral(gid)); err != nil {
			return err
		}
	}
	return nil
}

// viaTxcoord runs the transfer through the coordinator library.
func viaTxcoord(ctx context.Context, c *coordinator.Coordinator, res [2]*postgres.Resource, r *rand.Rand, accounts int, opts ...coordinator.TxOption) error {
	return c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		for i, q := range []string{debit, credit} {
			b, err := res[i].Enlist(ctx, tx)
			if err != nil {
				return err
			}
			if _, err := b.ExecContext(ctx, q, r.IntN(accounts)); err != nil {
				return err
			}
		}
		return nil
	}, opts...)
}

// plainHolder is the hand-written holder loop: the statements txcoord
// sends with bank_a as the decision holder, with no coordinator.
func plainHolder(ctx context.Context, db [2]*sql.DB, r *rand.Rand, accounts int, seq uint64, rows *plainForgetter) error {
	id, err := ids.NewTxID()
	if err != nil {
		return err
	}
	gid := "bench_holder_" + strconv.FormatUint(seq, 10)
	a, err := db[0].Conn(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	key := int64(binary.BigEndian.Uint64(id[:8]) ^ binary.BigEndian.Uint64(id[8:]))
	if _, err := a.ExecContext(ctx, "BEGIN; SELECT pg_advisory_xact_lock("+strconv.FormatInt(key, 10)+")"); err != nil {
		return err
	}
	if _, err := a.ExecContext(ctx, debit, r.IntN(accounts)); err != nil {
		a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	b, err := db[1].Conn(ctx)
	if err != nil {
		a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	defer b.Close()
	if _, err := b.ExecContext(ctx, "BEGIN"); err != nil {
		a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	if _, err := b.ExecContext(ctx, credit, r.IntN(accounts)); err != nil {
		b.ExecContext(ctx, "ROLLBACK")
		a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	if _, err := b.ExecContext(ctx, "PREPARE TRANSACTION "+ids.QuoteLiteral(gid)); err != nil {
		a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	if _, err := a.ExecContext(ctx, "INSERT INTO plain_decisions (txid, coordinator, outcome, epoch, branches) VALUES ("+
		ids.QuoteLiteral(id.String())+", 'plain', 'C', 1, ARRAY["+ids.QuoteLiteral("bank_b/"+gid)+"]::text[]); COMMIT"); err != nil {
		b.ExecContext(ctx, "ROLLBACK PREPARED "+ids.QuoteLiteral(gid))
		return err
	}
	if _, err := b.ExecContext(ctx, "COMMIT PREPARED "+ids.QuoteLiteral(gid)); err != nil {
		return err
	}
	rows.add(id)
	return nil
}

// plainForgetter deletes plain-holder's decision rows in batches, every
// 100ms, with synchronous_commit off, as txcoord's forgetter does.
type plainForgetter struct {
	db   *sql.DB
	mu   sync.Mutex
	ids  []string
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newPlainForgetter(ctx context.Context, db *sql.DB) (*plainForgetter, error) {
	if _, err := db.ExecContext(ctx, `CREATE TABLE plain_decisions (txid uuid PRIMARY KEY, coordinator text NOT NULL,
		outcome "char" NOT NULL, epoch bigint NOT NULL, decided_at timestamptz NOT NULL DEFAULT now(), branches text[] NOT NULL DEFAULT '{}')`); err != nil {
		return nil, err
	}
	f := &plainForgetter{db: db, stop: make(chan struct{}), done: make(chan struct{})}
	go f.run()
	return f, nil
}

func (f *plainForgetter) add(id ids.TxID) {
	f.mu.Lock()
	f.ids = append(f.ids, id.String())
	f.mu.Unlock()
}

func (f *plainForgetter) run() {
	defer close(f.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			f.flush()
			return
		case <-t.C:
			f.flush()
		}
	}
}

func (f *plainForgetter) flush() {
	f.mu.Lock()
	batch := f.ids
	f.ids = nil
	f.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := f.db.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = conn.ExecContext(ctx, "BEGIN; SET LOCAL synchronous_commit = off; DELETE FROM plain_decisions WHERE txid = ANY('{"+strings.Join(batch, ",")+"}'::uuid[]); COMMIT")
}

func (f *plainForgetter) close() {
	f.once.Do(func() {
		close(f.stop)
		<-f.done
	})
}

// grpcTransfer runs the transfer through the txcoord server: debit an
// account at bank_a's service and credit one at bank_b's.
func grpcTransfer(ctx context.Context, m *grpcMode, r *rand.Rand, accounts int) error {
	o := m.op(ctx, saga.Plan{Steps: []saga.Step{
		{DB: 0, Account: int64(r.IntN(accounts)), Delta: -1},
		{DB: 1, Account: int64(r.IntN(accounts)), Delta: 1},
	}})
	if !o.committed {
		if o.err != nil {
			return o.err
		}
		return errors.New("aborted")
	}
	return nil
}

// bankNames are the two databases of the transfer workload.
var bankNames = []string{"bank_a", "bank_b"}

// startBanks starts two PostgreSQL servers (fsync on), each with a
// database of bankNames holding accounts accounts; closeBanks closes the
// connections and stops the servers.
func startBanks(ctx context.Context, accounts int) (srv [2]*pgtest.Server, db [2]*sql.DB, closeBanks func(), err error) {
	var closers []func()
	closeBanks = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	started, err := pgtest.StartMany(ctx, 2, pgtest.Options{})
	if err != nil {
		return srv, db, closeBanks, err
	}
	for _, s := range started {
		closers = append(closers, func() { _ = s.Stop() })
	}
	fail := func(err error) ([2]*pgtest.Server, [2]*sql.DB, func(), error) {
		closeBanks()
		return srv, db, func() {}, err
	}
	for i, name := range bankNames {
		s := started[i]
		srv[i] = s
		if err := s.CreateDB(ctx, name); err != nil {
			return fail(err)
		}
		d, err := sql.Open("postgres", s.DSN(name))
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { _ = d.Close() })
		d.SetMaxIdleConns(benchIdleConns)
		db[i] = d
		for _, q := range []string{
			`CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)`,
			`INSERT INTO accounts SELECT g, 1000000 FROM generate_series(0, ` + strconv.Itoa(accounts) + ` - 1) g`,
			`VACUUM ANALYZE accounts`,
		} {
			if _, err := d.ExecContext(ctx, q); err != nil {
				return fail(err)
			}
		}
	}
	return srv, db, closeBanks, nil
}
