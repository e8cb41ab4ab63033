// Package shopdb reads what the order example's three databases hold
// (orders, payment, inventory; each PostgreSQL or MariaDB), for the tests
// that check them: the example's end-to-end test and the chaos run.
package shopdb

import (
	"context"
	"database/sql"
	"fmt"
	"sort"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txcoord/txcoord/participant/mysql"
)

// Databases names the three databases, in the order Read takes them.
var Databases = []string{"orders", "payment", "inventory"}

// State is what the three databases hold.
type State struct {
	Prepared     map[string][]string // database name -> gids of its prepared transactions
	Orders       map[string]Order    // by order id
	Payments     map[string]Payment
	Reservations map[string]Reservation

	// Totals: account balances and payments (payment), stock and
	// reservations (inventory).
	Balances, Paid, Stock, Reserved int64
}

// Order is a row of the orders database.
type Order struct {
	Customer, Item string
	Qty, Amount    int64
}

// Payment is a row of the payment database.
type Payment struct {
	Customer string
	Amount   int64
}

// Reservation is a row of the inventory database.
type Reservation struct {
	Item string
	Qty  int64
}

// Read reads the three databases, one after another (not one snapshot:
// read when nothing is in flight, or read until two reads agree).
func Read(ctx context.Context, orders, payment, inventory *sql.DB) (*State, error) {
	s := &State{
		Prepared: map[string][]string{}, Orders: map[string]Order{},
		Payments: map[string]Payment{}, Reservations: map[string]Reservation{},
	}
	for i, db := range []*sql.DB{orders, payment, inventory} {
		name := Databases[i]
		gids, err := PreparedGIDs(ctx, db)
		if err != nil {
			return nil, fmt.Errorf("%s database: %w", name, err)
		}
		s.Prepared[name] = gids
	}
	rows, err := orders.QueryContext(ctx, `SELECT order_id, customer, item, qty, amount FROM orders`)
	if err != nil {
		return nil, fmt.Errorf("orders database: %w", err)
	}
	if err := ScanAll(rows, func() error {
		var id string
		var o Order
		err := rows.Scan(&id, &o.Customer, &o.Item, &o.Qty, &o.Amount)
		s.Orders[id] = o
		return err
	}); err != nil {
		return nil, fmt.Errorf("orders database: %w", err)
	}
	rows, err = payment.QueryContext(ctx, `SELECT order_id, customer, amount FROM payments`)
	if err != nil {
		return nil, fmt.Errorf("payment database: %w", err)
	}
	if err := ScanAll(rows, func() error {
		var id string
		var p Payment
		err := rows.Scan(&id, &p.Customer, &p.Amount)
		s.Payments[id] = p
		return err
	}); err != nil {
		return nil, fmt.Errorf("payment database: %w", err)
	}
	rows, err = inventory.QueryContext(ctx, `SELECT order_id, item, qty FROM reservations`)
	if err != nil {
		return nil, fmt.Errorf("inventory database: %w", err)
	}
	if err := ScanAll(rows, func() error {
		var id string
		var v Reservation
		err := rows.Scan(&id, &v.Item, &v.Qty)
		s.Reservations[id] = v
		return err
	}); err != nil {
		return nil, fmt.Errorf("inventory database: %w", err)
	}
	if err := payment.QueryRowContext(ctx,
		`SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT coalesce(sum(amount), 0) FROM payments)`).Scan(&s.Balances, &s.Paid); err != nil {
		return nil, fmt.Errorf("payment database: %w", err)
	}
	if err := inventory.QueryRowContext(ctx,
		`SELECT (SELECT coalesce(sum(quantity), 0) FROM stock), (SELECT coalesce(sum(qty), 0) FROM reservations)`).Scan(&s.Stock, &s.Reserved); err != nil {
		return nil, fmt.Errorf("inventory database: %w", err)
	}
	return s, nil
}

// PreparedGIDs lists the prepared branches db holds: from
// pg_prepared_xacts (this database's), or from XA RECOVER on MariaDB (the
// server's), as their gids or, for foreign ones, their xids.
func PreparedGIDs(ctx context.Context, db *sql.DB) ([]string, error) {
	var out []string
	if isMariaDB(db) {
		list, err := mysql.Scan(ctx, db)
		if err != nil {
			return nil, err
		}
		for _, p := range list {
			out = append(out, p.Raw)
		}
		return out, nil
	}
	rows, err := db.QueryContext(ctx, `SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid`)
	if err != nil {
		return nil, err
	}
	err = ScanAll(rows, func() error {
		var gid string
		err := rows.Scan(&gid)
		out = append(out, gid)
		return err
	})
	return out, err
}

// isMariaDB reports whether db is a pool of MariaDB (or MySQL)
// connections.
func isMariaDB(db *sql.DB) bool {
	switch db.Driver().(type) {
	case *gomysql.MySQLDriver, gomysql.MySQLDriver:
		return true
	}
	return false
}

// ScanAll calls scan for each row, then closes rows.
func ScanAll(rows *sql.Rows, scan func() error) error {
	defer rows.Close()
	for rows.Next() {
		if err := scan(); err != nil {
			return err
		}
	}
	return rows.Err()
}

// IDs returns every order id found in any of the three databases, sorted.
func (s *State) IDs() []string {
	seen := map[string]bool{}
	for id := range s.Orders {
		seen[id] = true
	}
	for id := range s.Payments {
		seen[id] = true
	}
	for id := range s.Reservations {
		seen[id] = true
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Where reports which databases hold order id.
func (s *State) Where(id string) (orders, payment, inventory bool) {
	_, orders = s.Orders[id]
	_, payment = s.Payments[id]
	_, inventory = s.Reservations[id]
	return orders, payment, inventory
}

// Whole reports whether all three databases hold order id.
func (s *State) Whole(id string) bool {
	o, p, i := s.Where(id)
	return o && p && i
}

// Agree reports whether the three databases hold order id with the same
// customer, amount, item and quantity; false if one lacks it.
func (s *State) Agree(id string) bool {
	if !s.Whole(id) {
		return false
	}
	o, p, v := s.Orders[id], s.Payments[id], s.Reservations[id]
	return p.Customer == o.Customer && p.Amount == o.Amount && v.Item == o.Item && v.Qty == o.Qty
}
