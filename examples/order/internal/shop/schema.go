// Package shop is the order example's shared code: the three services
// (orders, payment, inventory), each a txcoord participant with its own
// PostgreSQL database, the schema and seed data of each database, and the
// client that places orders through the coordinator.
package shop

import (
	"context"
	"database/sql"
	"fmt"
)

// Kind is one of the three services.
type Kind int

const (
	Orders Kind = 1 + iota
	Payment
	Inventory
)

func (k Kind) String() string {
	switch k {
	case Orders:
		return "orders"
	case Payment:
		return "payment"
	case Inventory:
		return "inventory"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Seed data. Every service creates its tables and seeds them when they are
// empty, so that a restarted service keeps its data.
const (
	// NumCustomers accounts are seeded in the payment database, each with
	// InitialBalance cents.
	NumCustomers   = 20
	InitialBalance = 1_000_000
	// NumItems items are seeded in the inventory database, each with
	// InitialStock units.
	NumItems     = 20
	InitialStock = 10_000
)

// Customer returns the name of customer i (0 <= i < NumCustomers).
func Customer(i int) string { return fmt.Sprintf("cust-%02d", i) }

// Item returns the name of item i (0 <= i < NumItems).
func Item(i int) string { return fmt.Sprintf("item-%02d", i) }

// schema holds each service's statements, run in order at start-up. Seeds
// insert only into an empty table: a row that exists already may be locked
// by a prepared transaction, and an insert that met it would wait for a
// resolution that only this service, once started, can bring.
var schema = map[Kind][]string{
	Orders: {
		`CREATE TABLE IF NOT EXISTS orders (
			order_id   text PRIMARY KEY,
			customer   text NOT NULL,
			item       text NOT NULL,
			qty        bigint NOT NULL CHECK (qty > 0),
			amount     bigint NOT NULL CHECK (amount > 0),
			created_at timestamptz NOT NULL DEFAULT now()
		)`,
	},
	Payment: {
		`CREATE TABLE IF NOT EXISTS accounts (
			customer text PRIMARY KEY,
			balance  bigint NOT NULL CHECK (balance >= 0)
		)`,
		`CREATE TABLE IF NOT EXISTS payments (
			order_id   text PRIMARY KEY,
			customer   text NOT NULL REFERENCES accounts,
			amount     bigint NOT NULL CHECK (amount > 0),
			created_at timestamptz NOT NULL DEFAULT now()
		)`,
		fmt.Sprintf(`INSERT INTO accounts (customer, balance)
			SELECT format('cust-%%s', lpad(g::text, 2, '0')), %d FROM generate_series(0, %d) g
			WHERE NOT EXISTS (SELECT 1 FROM accounts)`, InitialBalance, NumCustomers-1),
	},
	Inventory: {
		`CREATE TABLE IF NOT EXISTS stock (
			item     text PRIMARY KEY,
			quantity bigint NOT NULL CHECK (quantity >= 0)
		)`,
		`CREATE TABLE IF NOT EXISTS reservations (
			order_id   text PRIMARY KEY,
			item       text NOT NULL REFERENCES stock,
			qty        bigint NOT NULL CHECK (qty > 0),
			created_at timestamptz NOT NULL DEFAULT now()
		)`,
		fmt.Sprintf(`INSERT INTO stock (item, quantity)
			SELECT format('item-%%s', lpad(g::text, 2, '0')), %d FROM generate_series(0, %d) g
			WHERE NOT EXISTS (SELECT 1 FROM stock)`, InitialStock, NumItems-1),
	},
}

// mysqlSchema is schema for MariaDB.
var mysqlSchema = map[Kind][]string{
	Orders: {
		`CREATE TABLE IF NOT EXISTS orders (
			order_id   varchar(100) PRIMARY KEY,
			customer   varchar(100) NOT NULL,
			item       varchar(100) NOT NULL,
			qty        bigint NOT NULL CHECK (qty > 0),
			amount     bigint NOT NULL CHECK (amount > 0),
			created_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
		) ENGINE=InnoDB`,
	},
	Payment: {
		`CREATE TABLE IF NOT EXISTS accounts (
			customer varchar(100) PRIMARY KEY,
			balance  bigint NOT NULL CHECK (balance >= 0)
		) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS payments (
			order_id   varchar(100) PRIMARY KEY,
			customer   varchar(100) NOT NULL REFERENCES accounts (customer),
			amount     bigint NOT NULL CHECK (amount > 0),
			created_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
		) ENGINE=InnoDB`,
		fmt.Sprintf(`INSERT INTO accounts (customer, balance)
			WITH RECURSIVE g (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < %d)
			SELECT CONCAT('cust-', LPAD(n, 2, '0')), %d FROM g
			WHERE NOT EXISTS (SELECT 1 FROM accounts)`, NumCustomers-1, InitialBalance),
	},
	Inventory: {
		`CREATE TABLE IF NOT EXISTS stock (
			item     varchar(100) PRIMARY KEY,
			quantity bigint NOT NULL CHECK (quantity >= 0)
		) ENGINE=InnoDB`,
		`CREATE TABLE IF NOT EXISTS reservations (
			order_id   varchar(100) PRIMARY KEY,
			item       varchar(100) NOT NULL REFERENCES stock (item),
			qty        bigint NOT NULL CHECK (qty > 0),
			created_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
		) ENGINE=InnoDB`,
		fmt.Sprintf(`INSERT INTO stock (item, quantity)
			WITH RECURSIVE g (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < %d)
			SELECT CONCAT('item-', LPAD(n, 2, '0')), %d FROM g
			WHERE NOT EXISTS (SELECT 1 FROM stock)`, NumItems-1, InitialStock),
	},
}

// createSchema creates the tables of service k in db and seeds them if
// they are empty.
func (d dialect) createSchema(ctx context.Context, k Kind, db *sql.DB) error {
	all := schema
	if d.mysql {
		all = mysqlSchema
	}
	stmts, ok := all[k]
	if !ok {
		return fmt.Errorf("shop: no schema for %v", k)
	}
	for _, q := range stmts {
		if err := d.exec(ctx, db, q); err != nil {
			return fmt.Errorf("shop: %v schema: %w", k, err)
		}
	}
	return nil
}

// exec runs one schema statement. On MariaDB it runs at READ COMMITTED:
// there the seed's check that the table is empty is a consistent read,
// where at the default REPEATABLE READ an INSERT ... SELECT takes shared
// locks on the rows it reads, and so waits for this service's own
// prepared branches, which only the service, once started, can end.
func (d dialect) exec(ctx context.Context, db *sql.DB, q string) error {
	if !d.mysql {
		_, err := db.ExecContext(ctx, q)
		return err
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, q); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
