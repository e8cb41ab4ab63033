// Command transfer moves money between accounts kept in two PostgreSQL
// databases, atomically, with txcoord: many concurrent workers, some
// transfers failing on purpose, then a check that the total balance is
// unchanged and nothing is left prepared.
//
// It starts two throwaway PostgreSQL servers on 127.0.0.1, and bank_a's
// database holds each transfer's commit decision (a decision holder): the
// commit point is bank_a's own COMMIT, and nothing is written to the
// coordinator's log on the way. With -mariadb, bank_b is a MariaDB
// database instead, taking part through XA. Where no PostgreSQL can be had
// (or with -embedded) it runs on two embedded key-value stores instead,
// with the decisions in the log, and says so.
//
//	go run ./examples/transfer -workers 8 -transfers 1000
//	go run ./examples/transfer -mariadb
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/kv"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

const initialBalance = 1000

var (
	errInsufficient = errors.New("insufficient funds")
	errRejected     = errors.New("rejected by the receiving bank")
)

// bank is one side of a transfer: a resource and how to move money there.
type bank interface {
	resource() participant.Resource
	// add changes one account's balance by delta inside the transaction.
	add(ctx context.Context, tx *coordinator.Tx, account int, delta int64) error
	total(ctx context.Context) (int64, error)
	prepared(ctx context.Context) (int, error)
	close()
}

func main() {
	workers := flag.Int("workers", 8, "concurrent workers")
	transfers := flag.Int("transfers", 1000, "transfers in all")
	accounts := flag.Int("accounts", 100, "accounts in each bank")
	failRate := flag.Float64("fail", 0.1, "share of transfers the receiving bank rejects on purpose (0..1)")
	embedded := flag.Bool("embedded", false, "use two embedded key-value stores instead of PostgreSQL")
	mariadb := flag.Bool("mariadb", false, "keep bank_b in MariaDB (through XA) instead of PostgreSQL")
	flag.Parse()
	if *workers < 1 || *transfers < 0 || *accounts < 1 || *failRate < 0 || *failRate > 1 {
		fmt.Fprintln(os.Stderr, "transfer: -workers and -accounts must be >= 1, -transfers >= 0, -fail within 0..1")
		os.Exit(2)
	}
	if *embedded && *mariadb {
		fmt.Fprintln(os.Stderr, "transfer: -embedded and -mariadb exclude each other")
		os.Exit(2)
	}
	if err := run(*workers, *transfers, *accounts, *failRate, *embedded, *mariadb); err != nil {
		fmt.Fprintln(os.Stderr, "transfer:", err)
		os.Exit(1)
	}
}

func run(workers, transfers, accounts int, failRate float64, embedded, mariadb bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "txcoord-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var a, b bank
	if !embedded {
		if _, err := pgtest.Binaries(); err != nil {
			if mariadb {
				return fmt.Errorf("-mariadb needs PostgreSQL for bank_a: %w", err)
			}
			fmt.Printf("PostgreSQL is not available (%v)\nrunning on the embedded key-value participant instead\n", err)
			embedded = true
		}
	}
	switch {
	case embedded:
		fmt.Println("txcoord demo: bank transfers across two embedded key-value stores (bbolt files)")
		a, b, err = openKV(dir)
	case mariadb:
		a, b, err = openMixed(ctx, accounts)
	default:
		a, b, err = openPostgres(ctx, accounts)
	}
	if err != nil {
		return err
	}
	defer a.close()
	defer b.close()

	log, err := wal.OpenBolt(filepath.Join(dir, "txcoord.wal"), wal.BoltOptions{Owner: "txc.demo"})
	if err != nil {
		return err
	}
	defer log.Close()
	cfg := coordinator.Config{
		ID:        "demo",
		Log:       log,
		Resources: []participant.Resource{a.resource(), b.resource()},
	}
	if !embedded {
		// Every transfer touches bank_a first: its database keeps the
		// decisions.
		cfg.Holder = a.resource().Name()
	}
	c, err := coordinator.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()

	if embedded {
		if err := seedKV(ctx, c, []bank{a, b}, accounts); err != nil {
			return err
		}
	}
	before, err := sum(ctx, a, b)
	if err != nil {
		return err
	}
	var committed, insufficient, rejected, conflicts, otherAbort, unknown atomic.Int64
	var next atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			for next.Add(1) <= int64(transfers) {
				from := a
				if r.IntN(2) == 0 {
					from = b
				}
				amount := int64(1 + r.IntN(400))
				reject := r.Float64() < failRate
				err := c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
					// Bank a is always touched first, so two transfers never
					// wait for each other across the two databases.
					da, db := -amount, amount
					if from == b {
						da, db = amount, -amount
					}
					if err := a.add(ctx, tx, r.IntN(accounts), da); err != nil {
						return err
					}
					if err := b.add(ctx, tx, r.IntN(accounts), db); err != nil {
						return err
					}
					if reject {
						return errRejected
					}
					return nil
				})
				switch coordinator.OutcomeOf(err) {
				case coordinator.Committed:
					committed.Add(1)
				case coordinator.Aborted:
					switch {
					case errors.Is(err, errInsufficient):
						insufficient.Add(1)
					case errors.Is(err, errRejected):
						rejected.Add(1)
					case errors.Is(err, kv.ErrConflict):
						conflicts.Add(1)
					default:
						otherAbort.Add(1)
						fmt.Fprintln(os.Stderr, "aborted:", err)
					}
				default:
					unknown.Add(1)
					fmt.Fprintln(os.Stderr, "outcome unknown:", err)
				}
			}
		}(uint64(w) + 1)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if _, err := c.Recover(ctx); err != nil {
		return err
	}
	// Close deletes the holder rows of finished decisions still queued.
	c.Close()
	cs := c.Stats()
	rows := 0
	if h, ok := a.(*pgBank); ok && cfg.Holder != "" {
		if err := h.db.QueryRowContext(ctx, "SELECT count(*) FROM "+h.res.DecisionTable()).Scan(&rows); err != nil {
			return err
		}
	}

	after, err := sum(ctx, a, b)
	if err != nil {
		return err
	}
	pa, err := a.prepared(ctx)
	if err != nil {
		return err
	}
	pb, err := b.prepared(ctx)
	if err != nil {
		return err
	}
	ls := log.Stats()
	aborted := insufficient.Load() + rejected.Load() + conflicts.Load() + otherAbort.Load()
	fmt.Printf("  %d workers, %d transfers in %v (%.0f per second)\n", workers, transfers, elapsed.Round(time.Millisecond), float64(transfers)/elapsed.Seconds())
	fmt.Printf("  committed %d, aborted %d (insufficient funds %d, rejected on purpose %d, write conflicts %d, other %d), outcome unknown %d\n",
		committed.Load(), aborted, insufficient.Load(), rejected.Load(), conflicts.Load(), otherAbort.Load(), unknown.Load())
	perSync := 0.0
	if ls.Syncs > 0 {
		perSync = float64(ls.Appends) / float64(ls.Syncs)
	}
	if cfg.Holder != "" {
		fmt.Printf("  decisions: %d kept by decision holder %s in its own database (its COMMIT is the commit point; no log write), %d rows deleted once finished\n",
			cs.Held, cfg.Holder, cs.Forgotten)
		fmt.Printf("  log: %d COMMIT decisions forced, %d holder decisions noted after the fact, in %d fsyncs\n", ls.Appends, ls.Notes, ls.Syncs)
	} else {
		fmt.Printf("  log: %d COMMIT decisions in %d fsyncs (%.1f per fsync), %d END records\n", ls.Appends, ls.Syncs, perSync, ls.Ends)
	}
	ok := before == after && pa+pb == 0 && unknown.Load() == 0 && rows == 0
	fmt.Printf("  check: total balance %d before, %d after; prepared transactions left: %d; decision rows left: %d: %s\n", before, after, pa+pb, rows, verdict(ok))
	if !ok {
		return errors.New("invariant violated")
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "OK"
	}
	return "FAILED"
}

func sum(ctx context.Context, banks ...bank) (int64, error) {
	var s int64
	for _, b := range banks {
		t, err := b.total(ctx)
		if err != nil {
			return 0, err
		}
		s += t
	}
	return s, nil
}

// PostgreSQL banks.

type pgBank struct {
	srv *pgtest.Server
	db  *sql.DB
	res *postgres.Resource
}

func openPostgres(ctx context.Context, accounts int) (bank, bank, error) {
	banks, err := openPostgresBanks(ctx, accounts, "bank_a", "bank_b")
	if err != nil {
		return nil, nil, err
	}
	fmt.Printf("txcoord demo: bank transfers across two PostgreSQL databases (throwaway servers on 127.0.0.1:%d and :%d), decisions held by bank_a\n", banks[0].srv.Port(), banks[1].srv.Port())
	return banks[0], banks[1], nil
}

// openPostgresBanks starts one throwaway server per bank.
func openPostgresBanks(ctx context.Context, accounts int, names ...string) ([]*pgBank, error) {
	banks := make([]*pgBank, len(names))
	fail := func(err error) ([]*pgBank, error) {
		for _, b := range banks {
			if b != nil {
				b.close()
			}
		}
		return nil, err
	}
	for i, name := range names {
		srv, err := pgtest.Start(ctx, pgtest.Options{})
		if err != nil {
			return fail(err)
		}
		if err := srv.CreateDB(ctx, name); err != nil {
			srv.Stop()
			return fail(err)
		}
		db, err := sql.Open("postgres", srv.DSN(name))
		if err != nil {
			srv.Stop()
			return fail(err)
		}
		// database/sql keeps two idle connections by default; every branch
		// beyond that would start a new server process.
		db.SetMaxIdleConns(64)
		pb := &pgBank{srv: srv, db: db}
		if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))`); err != nil {
			pb.close()
			return fail(err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO accounts SELECT g, $1 FROM generate_series(0, $2 - 1) g`, initialBalance, accounts); err != nil {
			pb.close()
			return fail(err)
		}
		pb.res, err = postgres.New(ctx, name, db, postgres.Options{Database: name})
		if err != nil {
			pb.close()
			return fail(err)
		}
		banks[i] = pb
	}
	return banks, nil
}

func (p *pgBank) resource() participant.Resource { return p.res }

func (p *pgBank) add(ctx context.Context, tx *coordinator.Tx, account int, delta int64) error {
	br, err := p.res.Enlist(ctx, tx)
	if err != nil {
		return err
	}
	_, err = br.ExecContext(ctx, `UPDATE accounts SET balance = balance + $1 WHERE id = $2`, delta, account)
	if err != nil && delta < 0 {
		// The CHECK (balance >= 0) constraint refused the debit.
		return fmt.Errorf("%w: %v", errInsufficient, err)
	}
	return err
}

func (p *pgBank) total(ctx context.Context) (int64, error) {
	var t int64
	err := p.db.QueryRowContext(ctx, `SELECT coalesce(sum(balance), 0) FROM accounts`).Scan(&t)
	return t, err
}

func (p *pgBank) prepared(ctx context.Context) (int, error) {
	var n int
	err := p.db.QueryRowContext(ctx, `SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()`).Scan(&n)
	return n, err
}

func (p *pgBank) close() {
	if p.db != nil {
		p.db.Close()
	}
	p.srv.Stop()
}

// A MariaDB bank, taking part through XA.

type myBank struct {
	srv *mariadbtest.Server
	db  *sql.DB
	res *mysql.Resource
}

// openMixed keeps bank_a (the decision holder) in PostgreSQL and bank_b in
// MariaDB.
func openMixed(ctx context.Context, accounts int) (bank, bank, error) {
	if err := mariadbtest.Available(); err != nil {
		return nil, nil, err
	}
	pgs, err := openPostgresBanks(ctx, accounts, "bank_a")
	if err != nil {
		return nil, nil, err
	}
	srv, err := mariadbtest.Start(ctx, mariadbtest.Options{})
	if err != nil {
		pgs[0].close()
		return nil, nil, err
	}
	mb := &myBank{srv: srv}
	fail := func(err error) (bank, bank, error) {
		pgs[0].close()
		mb.close()
		return nil, nil, err
	}
	if err := srv.CreateDB(ctx, "bank_b"); err != nil {
		return fail(err)
	}
	mb.res, err = mysql.Open(ctx, "bank_b", srv.DSN("bank_b"), mysql.Options{})
	if err != nil {
		return fail(err)
	}
	mb.db = mb.res.DB()
	var rows []string
	for n := 0; n < accounts; n++ {
		rows = append(rows, fmt.Sprintf("(%d, %d)", n, initialBalance))
	}
	for _, q := range []string{
		`CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)) ENGINE=InnoDB`,
		`INSERT INTO accounts VALUES ` + strings.Join(rows, ", "),
	} {
		if _, err := mb.db.ExecContext(ctx, q); err != nil {
			return fail(err)
		}
	}
	fmt.Printf("txcoord demo: bank transfers between PostgreSQL (bank_a, throwaway server on 127.0.0.1:%d) and MariaDB %s through XA (bank_b, on :%d), decisions held by bank_a\n",
		pgs[0].srv.Port(), mb.res.Version(), srv.Port())
	return pgs[0], mb, nil
}

func (m *myBank) resource() participant.Resource { return m.res }

func (m *myBank) add(ctx context.Context, tx *coordinator.Tx, account int, delta int64) error {
	br, err := m.res.Enlist(ctx, tx)
	if err != nil {
		return err
	}
	_, err = br.ExecContext(ctx, `UPDATE accounts SET balance = balance + ? WHERE id = ?`, delta, account)
	if err != nil && delta < 0 {
		// The CHECK (balance >= 0) constraint refused the debit.
		return fmt.Errorf("%w: %v", errInsufficient, err)
	}
	return err
}

func (m *myBank) total(ctx context.Context) (int64, error) {
	var t int64
	err := m.db.QueryRowContext(ctx, `SELECT coalesce(sum(balance), 0) FROM accounts`).Scan(&t)
	return t, err
}

func (m *myBank) prepared(ctx context.Context) (int, error) {
	p, err := m.res.Prepared(ctx)
	return len(p), err
}

func (m *myBank) close() {
	if m.res != nil {
		m.res.Close()
	}
	m.srv.Stop()
}

// Embedded key-value banks.

type kvBank struct {
	store *kv.Store
}

func openKV(dir string) (bank, bank, error) {
	var banks [2]*kvBank
	for i, name := range []string{"bank_a", "bank_b"} {
		s, err := kv.Open(filepath.Join(dir, name+".db"), name, kv.Options{})
		if err != nil {
			return nil, nil, err
		}
		banks[i] = &kvBank{store: s}
	}
	return banks[0], banks[1], nil
}

// seedKV gives every account its opening balance, one transaction per bank.
func seedKV(ctx context.Context, c *coordinator.Coordinator, banks []bank, accounts int) error {
	for _, b := range banks {
		k := b.(*kvBank)
		err := c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
			br, err := k.store.Enlist(ctx, tx)
			if err != nil {
				return err
			}
			for n := 0; n < accounts; n++ {
				if err := br.PutInt64(ctx, accountKey(n), initialBalance); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("seed %s: %w", k.store.Name(), err)
		}
	}
	return nil
}

func accountKey(n int) string { return "account/" + strconv.Itoa(n) }

func (k *kvBank) resource() participant.Resource { return k.store }

func (k *kvBank) add(ctx context.Context, tx *coordinator.Tx, account int, delta int64) error {
	br, err := k.store.Enlist(ctx, tx)
	if err != nil {
		return err
	}
	bal, _, err := br.GetInt64(ctx, accountKey(account))
	if err != nil {
		return err
	}
	if bal+delta < 0 {
		return errInsufficient
	}
	return br.PutInt64(ctx, accountKey(account), bal+delta)
}

func (k *kvBank) total(ctx context.Context) (int64, error) {
	all, err := k.store.Scan(ctx, "account/")
	if err != nil {
		return 0, err
	}
	var t int64
	for _, v := range all {
		n, err := kv.ParseInt64(v)
		if err != nil {
			return 0, err
		}
		t += n
	}
	return t, nil
}

func (k *kvBank) prepared(ctx context.Context) (int, error) {
	p, err := k.store.Prepared(ctx)
	return len(p), err
}

func (k *kvBank) close() { k.store.Close() }
