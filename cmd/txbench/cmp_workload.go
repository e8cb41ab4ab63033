package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"

	"github.com/txcoord/txcoord/internal/saga"
	"github.com/txcoord/txcoord/sdk"
)

// workload is one shape of work: every operation moves money between
// accounts in DBs databases and conserves the total. Its last step debits
// the paying account; a doomed operation's paying account is closed, so
// that step fails after the others ran (the worst case for a saga, which
// must compensate them).
type workload struct {
	Name     string `json:"name"`
	DBs      int    `json:"databases"`
	Accounts int    `json:"accounts"`
	Hot      int    `json:"hot_accounts,omitempty"` // choose accounts among this many (contention)
	Desc     string `json:"description"`
}

func workloadsFor(names []string, accounts int) ([]workload, error) {
	var out []workload
	for _, n := range names {
		switch n {
		case "transfer":
			out = append(out, workload{Name: "transfer", DBs: 2, Accounts: accounts, Desc: "credit an account in database 2, debit one in database 1"})
		case "order":
			out = append(out, workload{Name: "order", DBs: 3, Accounts: accounts, Desc: "an order: credit the merchant (database 2) and the fees account (database 3), debit the customer (database 1)"})
		case "hotspot":
			out = append(out, workload{Name: "hotspot", DBs: 2, Accounts: accounts, Hot: 8, Desc: "transfer among 8 hot accounts per database: contention"})
		case "sweep":
			for k := 1; k <= 4; k++ {
				out = append(out, workload{Name: fmt.Sprintf("sweep-%d", k), DBs: k, Accounts: accounts, Desc: sweepDesc(k)})
			}
		default:
			return nil, fmt.Errorf("--workloads: unknown workload %q (want transfer, order, hotspot, sweep)", n)
		}
	}
	return out, nil
}

func (w workload) account(r *rand.Rand) int64 {
	if w.Hot > 0 {
		return int64(r.IntN(w.Hot))
	}
	return int64(r.IntN(w.Accounts))
}

// plan draws one operation.
func (w workload) plan(r *rand.Rand, doomed bool) saga.Plan {
	const amount = 10
	var p saga.Plan
	if w.DBs == 1 {
		p.Steps = append(p.Steps, saga.Step{DB: 0, Account: w.account(r), Delta: amount})
	} else {
		share := int64(amount / (w.DBs - 1))
		left := int64(amount)
		for db := 1; db < w.DBs; db++ {
			d := share
			if db == w.DBs-1 {
				d = left
			}
			left -= d
			p.Steps = append(p.Steps, saga.Step{DB: db, Account: w.account(r), Delta: d})
		}
	}
	payer := w.account(r)
	if doomed {
		payer = -1 // closed
	}
	p.Steps = append(p.Steps, saga.Step{DB: 0, Account: payer, Delta: -amount})
	return p
}

const initialBalance = 1_000_000

// reset gives every account its initial balance, empties the saga
// markers, and forgets the coordinator an SDK participant served (each
// 2pc-grpc run has a new log, which the SDK would refuse as another
// coordinator).
func (w workload) reset(ctx context.Context, dbs []*sql.DB) error {
	for _, db := range dbs[:w.DBs] {
		if _, err := db.ExecContext(ctx, `DROP TABLE IF EXISTS accounts; DROP TABLE IF EXISTS saga_steps; DROP TABLE IF EXISTS `+sdk.ServedTable+`;
			CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);`+saga.Schema); err != nil {
			return err
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO accounts SELECT g, $1 FROM generate_series(0, $2 - 1) g`, initialBalance, w.Accounts); err != nil {
			return err
		}
		if _, err := db.ExecContext(ctx, `VACUUM ANALYZE accounts`); err != nil {
			return err
		}
	}
	return nil
}

func (w workload) total() int64 { return int64(w.DBs) * int64(w.Accounts) * initialBalance }

func sweepDesc(k int) string {
	if k == 1 {
		return "a debit and a credit in one database: one branch, one-phase commit"
	}
	if k == 2 {
		return "a debit in database 1 and a credit in database 2"
	}
	return fmt.Sprintf("a debit in database 1 and %d credits in databases 2 to %d", k-1, k)
}
