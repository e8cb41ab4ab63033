package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"text/tabwriter"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

// mixedModes are the modes run with bank_b on MariaDB.
var mixedModes = []string{modeIndependent, modePlain2PC, modeTxcoord, modeNoMarkers, modeTxcoordHolder}

// myCredit is the transfer's credit at bank_b, on MariaDB.
const myCredit = `UPDATE accounts SET balance = balance + 1 WHERE id = ?`

// mixedBanks is bank_a on PostgreSQL and bank_b on MariaDB.
type mixedBanks struct {
	pg   *pgtest.Server
	my   *mariadbtest.Server
	a, b *sql.DB
}

func (m *mixedBanks) close() {
	if m.a != nil {
		_ = m.a.Close()
	}
	if m.b != nil {
		_ = m.b.Close()
	}
	if m.pg != nil {
		_ = m.pg.Stop()
	}
	if m.my != nil {
		_ = m.my.Stop()
	}
}

func startMixedBanks(ctx context.Context, accounts int) (*mixedBanks, error) {
	m := &mixedBanks{}
	var err error
	if m.pg, err = pgtest.Start(ctx, pgtest.Options{}); err != nil {
		return nil, err
	}
	if m.my, err = mariadbtest.Start(ctx, mariadbtest.Options{}); err != nil {
		m.close()
		return nil, err
	}
	if err := m.pg.CreateDB(ctx, bankNames[0]); err != nil {
		m.close()
		return nil, err
	}
	if err := m.my.CreateDB(ctx, bankNames[1]); err != nil {
		m.close()
		return nil, err
	}
	if m.a, err = sql.Open("postgres", m.pg.DSN(bankNames[0])); err != nil {
		m.close()
		return nil, err
	}
	c, err := gomysql.NewConnector(m.my.Config(bankNames[1]))
	if err != nil {
		m.close()
		return nil, err
	}
	m.b = sql.OpenDB(c)
	m.a.SetMaxIdleConns(benchIdleConns)
	m.b.SetMaxIdleConns(benchIdleConns)
	n := strconv.Itoa(accounts)
	for _, st := range []struct {
		db *sql.DB
		q  string
	}{
		{m.a, `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)`},
		{m.a, `INSERT INTO accounts SELECT g, 1000000 FROM generate_series(0, ` + n + ` - 1) g`},
		{m.a, `VACUUM ANALYZE accounts`},
		{m.b, `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB`},
		{m.b, `SET SESSION max_recursive_iterations = ` + n},
		{m.b, `INSERT INTO accounts WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < ` + n + ` - 1) SELECT n, 1000000 FROM s`},
	} {
		if _, err := st.db.ExecContext(ctx, st.q); err != nil {
			m.close()
			return nil, fmt.Errorf("%s: %w", st.q, err)
		}
	}
	return m, nil
}

// syncs counts the forced writes of both servers: PostgreSQL's WAL syncs,
// MariaDB's InnoDB fsyncs and binary-log group commits (each an fsync with
// sync_binlog=1).
func (m *mixedBanks) syncs(ctx context.Context) (int64, bool) {
	pg, ok := walSyncs(ctx, []*sql.DB{m.a})
	if !ok {
		return 0, false
	}
	rows, err := m.b.QueryContext(ctx, `SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_data_fsyncs', 'Binlog_group_commits')`)
	if err != nil {
		return 0, false
	}
	defer rows.Close()
	total, seen := pg, 0
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			return 0, false
		}
		total += v
		seen++
	}
	return total, rows.Err() == nil && seen == 2
}

// runMixedTransfer is runTransfer with bank_b on MariaDB.
func runMixedTransfer(ctx context.Context, out io.Writer, o *transferOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	banks, err := startMixedBanks(ctx, o.accounts)
	if err != nil {
		return err
	}
	defer banks.close()
	dir, err := os.MkdirTemp("", "txbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// A coordinator with markers and one without, each with its own log.
	type rig struct {
		pg  *postgres.Resource
		my  *mysql.Resource
		log wal.Log
		c   *coordinator.Coordinator
	}
	newRig := func(id string, noMarkers bool) (*rig, error) {
		r := &rig{log: wal.NewMem()}
		var err error
		if r.pg, err = postgres.New(ctx, bankNames[0], banks.a, postgres.Options{Database: bankNames[0], NoMarkers: noMarkers}); err != nil {
			return nil, err
		}
		if r.my, err = mysql.New(ctx, bankNames[1], banks.b, mysql.Options{Database: bankNames[1], NoMarkers: noMarkers}); err != nil {
			return nil, err
		}
		if o.logKind == "bolt" {
			if r.log, err = wal.OpenBolt(filepath.Join(dir, id+".wal"), wal.BoltOptions{Owner: "txc." + id}); err != nil {
				return nil, err
			}
		}
		if r.c, err = coordinator.New(ctx, coordinator.Config{ID: id, Log: r.log, Resources: []participant.Resource{r.pg, r.my}}); err != nil {
			_ = r.log.Close()
			return nil, err
		}
		return r, nil
	}
	closeRig := func(r *rig) {
		r.c.Close()
		_ = r.my.Close()
		_ = r.log.Close()
	}
	main, err := newRig("bench", false)
	if err != nil {
		return err
	}
	defer closeRig(main)
	var nm *rig
	if contains(o.modes, modeNoMarkers) {
		if nm, err = newRig("benchnm", true); err != nil {
			return err
		}
		defer closeRig(nm)
	}

	stopProfiles, err := o.startProfiles()
	if err != nil {
		return err
	}
	defer stopProfiles()
	if o.output == "table" {
		fmt.Fprintf(out, "transfer benchmark: bank_a on PostgreSQL (127.0.0.1:%d, fsync on), bank_b on MariaDB %s through XA (:%d, binary log on, innodb_flush_log_at_trx_commit=1, sync_binlog=1), %d accounts each, %v per run, median of %d alternating rounds\n",
			banks.pg.Port(), main.my.Version(), banks.my.Port(), o.accounts, o.duration, o.rounds)
	}
	db := [2]*sql.DB{banks.a, banks.b}
	var results []result
	markerCost := map[int]float64{}
	var gidSeq atomic.Uint64
	for _, w := range o.workers {
		runs := map[string][]result{}
		for round := 0; round < o.rounds; round++ {
			for _, m := range o.modes {
				var op func(ctx context.Context, r *rand.Rand) error
				var log wal.Log
				switch m {
				case modeIndependent:
					op = func(ctx context.Context, r *rand.Rand) error {
						return independent(ctx, db, [2]string{debit, myCredit}, r, o.accounts)
					}
				case modePlain2PC:
					op = func(ctx context.Context, r *rand.Rand) error { return plainXA(ctx, db, r, o.accounts, gidSeq.Add(1)) }
				case modeTxcoord:
					log = main.log
					op = func(ctx context.Context, r *rand.Rand) error {
						return mixedViaTxcoord(ctx, main.c, main.pg, main.my, r, o.accounts, coordinator.WithoutHolder())
					}
				case modeNoMarkers:
					log = nm.log
					op = func(ctx context.Context, r *rand.Rand) error {
						return mixedViaTxcoord(ctx, nm.c, nm.pg, nm.my, r, o.accounts, coordinator.WithoutHolder())
					}
				case modeTxcoordHolder:
					op = func(ctx context.Context, r *rand.Rand) error {
						return mixedViaTxcoord(ctx, main.c, main.pg, main.my, r, o.accounts, coordinator.WithHolder(main.pg.Name()))
					}
				}
				var before uint64
				if log != nil {
					before = log.Stats().Syncs
				}
				r := measure(ctx, w, o.warmup, o.duration, op, banks.syncs)
				r.Mode = m
				if log != nil {
					r.Syncs = log.Stats().Syncs - before
				}
				runs[m] = append(runs[m], r)
			}
		}
		for _, m := range o.modes {
			r := median(runs[m])
			r.Relative = pairedRatio(runs[m], runs[modePlain2PC])
			results = append(results, r)
		}
		if contains(o.modes, modeTxcoord) && contains(o.modes, modeNoMarkers) {
			markerCost[w] = pairedRatio(runs[modeTxcoord], runs[modeNoMarkers])
		}
	}
	main.c.Close()
	if nm != nil {
		nm.c.Close()
	}
	var markersLeft [2]int
	if err := banks.a.QueryRowContext(ctx, `SELECT count(*) FROM `+main.pg.MarkerTable()).Scan(&markersLeft[0]); err != nil {
		return err
	}
	if err := banks.b.QueryRowContext(ctx, `SELECT count(*) FROM `+main.my.MarkerTable()).Scan(&markersLeft[1]); err != nil {
		return err
	}
	var preparedA int
	if err := banks.a.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_xacts`).Scan(&preparedA); err != nil {
		return err
	}
	preparedB, err := main.my.Prepared(ctx)
	if err != nil {
		return err
	}
	if preparedA != 0 || len(preparedB) != 0 {
		return fmt.Errorf("left prepared: %d at bank_a (PostgreSQL), %d at bank_b (MariaDB)", preparedA, len(preparedB))
	}
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workers\tmode\ttransfers/s\tp50\tp99\tvs plain-2pc (paired)\tforced writes\tCPU/transfer\tof which client\terrors\trounds (transfers/s)\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%v\t%v\t%s\t%.2f\t%v\t%v\t%d\t%s\t\n", r.Workers, r.Mode, r.TPS, r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond),
			pctOf(r.Relative), r.ForcedWrites, r.CPU.Round(time.Microsecond), r.ClientCPU.Round(time.Microsecond), r.Errors, fmtRounds(r.Rounds))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printMarkerCost(out, "txcoord / txcoord-nomarkers", markerCost, o.workers)
	fmt.Fprintf(out, "markers left after the run: %d (bank_a), %d (bank_b); nothing left prepared at either\n", markersLeft[0], markersLeft[1])
	return nil
}

// plainXA is the hand-written loop across PostgreSQL and MariaDB: the
// statements txcoord sends (without its markers), with no coordinator and
// no log. MariaDB's XA COMMIT runs on the session that prepared the
// branch, which MariaDB requires while that session lives.
func plainXA(ctx context.Context, db [2]*sql.DB, r *rand.Rand, accounts int, seq uint64) (err error) {
	gid := "bench_plain_" + strconv.FormatUint(seq, 10)
	xid := "'" + gid + "'"
	a, err := db[0].Conn(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := db[1].Conn(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// The session may hold a branch: close it, never pool it.
			_ = b.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = b.Close()
	}()
	if _, err := a.ExecContext(ctx, "BEGIN"); err != nil {
		return err
	}
	if _, err := a.ExecContext(ctx, debit, r.IntN(accounts)); err != nil {
		_, _ = a.ExecContext(ctx, "ROLLBACK")
		return err
	}
	for _, st := range []struct {
		q    string
		args []any
	}{{"XA START " + xid, nil}, {myCredit, []any{r.IntN(accounts)}}, {"XA END " + xid, nil}} {
		if _, err := b.ExecContext(ctx, st.q, st.args...); err != nil {
			_, _ = a.ExecContext(ctx, "ROLLBACK")
			return err
		}
	}
	if _, err := a.ExecContext(ctx, "PREPARE TRANSACTION "+ids.QuoteLiteral(gid)); err != nil {
		return err
	}
	if _, err := b.ExecContext(ctx, "XA PREPARE "+xid); err != nil {
		_, _ = db[0].ExecContext(ctx, "ROLLBACK PREPARED "+ids.QuoteLiteral(gid))
		return err
	}
	if _, err := a.ExecContext(ctx, "COMMIT PREPARED "+ids.QuoteLiteral(gid)); err != nil {
		return err
	}
	_, err = b.ExecContext(ctx, "XA COMMIT "+xid)
	return err
}

// mixedViaTxcoord runs the transfer through the coordinator library.
func mixedViaTxcoord(ctx context.Context, c *coordinator.Coordinator, a *postgres.Resource, b *mysql.Resource, r *rand.Rand, accounts int, opts ...coordinator.TxOption) error {
	return c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		ba, err := a.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := ba.ExecContext(ctx, debit, r.IntN(accounts)); err != nil {
			return err
		}
		bb, err := b.Enlist(ctx, tx)
		if err != nil {
			return err
		}
		_, err = bb.ExecContext(ctx, myCredit, r.IntN(accounts))
		return err
	}, opts...)
}
