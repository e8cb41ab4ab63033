package torture

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"

	"github.com/txcoord/txcoord/client"
)

// state is what the three databases hold.
type state struct {
	prepared     map[string][]string // service -> gids
	orders       map[string]orderRow
	payments     map[string]paymentRow
	reservations map[string]reservationRow

	balances, paid, stock, reserved int64
}

type orderRow struct {
	customer, item string
	qty, amount    int64
}

type paymentRow struct {
	customer string
	amount   int64
}

type reservationRow struct {
	item string
	qty  int64
}

// readShop reads what the services seeded.
func readShop(ctx context.Context, dbs map[string]*sql.DB) (shopData, error) {
	var d shopData
	rows, err := dbs["payment"].QueryContext(ctx, `SELECT customer, balance FROM accounts ORDER BY customer`)
	if err != nil {
		return d, err
	}
	if err := scanAll(rows, func() error {
		var c string
		var b int64
		err := rows.Scan(&c, &b)
		d.customers = append(d.customers, c)
		d.maxBalance = max(d.maxBalance, b)
		d.money += b
		return err
	}); err != nil {
		return d, err
	}
	rows, err = dbs["inventory"].QueryContext(ctx, `SELECT item, quantity FROM stock ORDER BY item`)
	if err != nil {
		return d, err
	}
	if err := scanAll(rows, func() error {
		var i string
		var q int64
		err := rows.Scan(&i, &q)
		d.items = append(d.items, i)
		d.maxStock = max(d.maxStock, q)
		d.stock += q
		return err
	}); err != nil {
		return d, err
	}
	if len(d.customers) == 0 || len(d.items) == 0 {
		return d, fmt.Errorf("the services seeded %d customers and %d items", len(d.customers), len(d.items))
	}
	var paid, reserved int64
	if err := dbs["payment"].QueryRowContext(ctx, `SELECT coalesce(sum(amount), 0) FROM payments`).Scan(&paid); err != nil {
		return d, err
	}
	if err := dbs["inventory"].QueryRowContext(ctx, `SELECT coalesce(sum(qty), 0) FROM reservations`).Scan(&reserved); err != nil {
		return d, err
	}
	d.money += paid
	d.stock += reserved
	return d, nil
}

func readState(ctx context.Context, dbs map[string]*sql.DB) (*state, error) {
	s := &state{
		prepared: map[string][]string{}, orders: map[string]orderRow{},
		payments: map[string]paymentRow{}, reservations: map[string]reservationRow{},
	}
	for _, svc := range services {
		rows, err := dbs[svc].QueryContext(ctx, `SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid`)
		if err != nil {
			return nil, fmt.Errorf("%s database: %w", svc, err)
		}
		if err := scanAll(rows, func() error {
			var gid string
			err := rows.Scan(&gid)
			s.prepared[svc] = append(s.prepared[svc], gid)
			return err
		}); err != nil {
			return nil, fmt.Errorf("%s database: %w", svc, err)
		}
	}
	rows, err := dbs["orders"].QueryContext(ctx, `SELECT order_id, customer, item, qty, amount FROM orders`)
	if err != nil {
		return nil, err
	}
	if err := scanAll(rows, func() error {
		var id string
		var o orderRow
		err := rows.Scan(&id, &o.customer, &o.item, &o.qty, &o.amount)
		s.orders[id] = o
		return err
	}); err != nil {
		return nil, err
	}
	rows, err = dbs["payment"].QueryContext(ctx, `SELECT order_id, customer, amount FROM payments`)
	if err != nil {
		return nil, err
	}
	if err := scanAll(rows, func() error {
		var id string
		var p paymentRow
		err := rows.Scan(&id, &p.customer, &p.amount)
		s.payments[id] = p
		return err
	}); err != nil {
		return nil, err
	}
	rows, err = dbs["inventory"].QueryContext(ctx, `SELECT order_id, item, qty FROM reservations`)
	if err != nil {
		return nil, err
	}
	if err := scanAll(rows, func() error {
		var id string
		var v reservationRow
		err := rows.Scan(&id, &v.item, &v.qty)
		s.reservations[id] = v
		return err
	}); err != nil {
		return nil, err
	}
	if err := dbs["payment"].QueryRowContext(ctx,
		`SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT coalesce(sum(amount), 0) FROM payments)`).Scan(&s.balances, &s.paid); err != nil {
		return nil, err
	}
	if err := dbs["inventory"].QueryRowContext(ctx,
		`SELECT (SELECT coalesce(sum(quantity), 0) FROM stock), (SELECT coalesce(sum(qty), 0) FROM reservations)`).Scan(&s.stock, &s.reserved); err != nil {
		return nil, err
	}
	return s, nil
}

func scanAll(rows *sql.Rows, scan func() error) error {
	defer rows.Close()
	for rows.Next() {
		if err := scan(); err != nil {
			return err
		}
	}
	return rows.Err()
}

// holds describes what each database holds of order id, and the prepared
// branches of its transaction.
func (s *state) holds(id string, rec *record) string {
	var parts []string
	if o, ok := s.orders[id]; ok {
		parts = append(parts, fmt.Sprintf("orders: %+v", o))
	} else {
		parts = append(parts, "orders: none")
	}
	if p, ok := s.payments[id]; ok {
		parts = append(parts, fmt.Sprintf("payment: %+v", p))
	} else {
		parts = append(parts, "payment: none")
	}
	if v, ok := s.reservations[id]; ok {
		parts = append(parts, fmt.Sprintf("inventory: %+v", v))
	} else {
		parts = append(parts, "inventory: none")
	}
	if rec != nil && !rec.txid.IsZero() {
		for _, svc := range services {
			for _, g := range s.prepared[svc] {
				if strings.Contains(g, rec.txid.String()) {
					parts = append(parts, fmt.Sprintf("prepared at %s: %s", svc, g))
				}
			}
		}
	}
	return strings.Join(parts, "; ")
}

func (rec *record) describe() string {
	s := fmt.Sprintf("order %s (tx %s, meant to fail: %v) told %v", rec.order.id, rec.txid, rec.meant, rec.told)
	if rec.err != nil {
		s += fmt.Sprintf(" (%v)", rec.err)
	}
	return s
}

// violations lists every way s breaks the rules, given what the clients
// were told (records) and the totals seeded (data): each order is in all
// three databases with the figures its client sent, or in none; one told
// committed is there, one told aborted is not; money and stock are
// conserved; nothing is prepared; and the coordinator's answer about a
// transaction, when it has one, matches the databases.
func (s *state) violations(data shopData, records []*record) []string {
	var out []string
	for _, svc := range services {
		if n := len(s.prepared[svc]); n > 0 {
			out = append(out, fmt.Sprintf("%d transactions left prepared in the %s database: %v", n, svc, s.prepared[svc]))
		}
	}
	if s.balances+s.paid != data.money {
		out = append(out, fmt.Sprintf("money not conserved: balances %d + payments %d = %d, seeded %d", s.balances, s.paid, s.balances+s.paid, data.money))
	}
	if s.stock+s.reserved != data.stock {
		out = append(out, fmt.Sprintf("stock not conserved: stock %d + reserved %d = %d, seeded %d", s.stock, s.reserved, s.stock+s.reserved, data.stock))
	}
	byID := map[string]*record{}
	for _, rec := range records {
		byID[rec.order.id] = rec
	}
	ids := map[string]bool{}
	for id := range s.orders {
		ids[id] = true
	}
	for id := range s.payments {
		ids[id] = true
	}
	for id := range s.reservations {
		ids[id] = true
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	for _, id := range sorted {
		rec := byID[id]
		o, inOrders := s.orders[id]
		p, inPayments := s.payments[id]
		v, inReservations := s.reservations[id]
		what := "order " + id + " (placed by no client)"
		if rec != nil {
			what = rec.describe()
		}
		switch {
		case !inOrders || !inPayments || !inReservations:
			out = append(out, fmt.Sprintf("atomicity: %s is in some databases only: %s", what, s.holds(id, rec)))
		case p.customer != o.customer || p.amount != o.amount || v.item != o.item || v.qty != o.qty:
			out = append(out, fmt.Sprintf("%s: the databases disagree: %s", what, s.holds(id, rec)))
		case rec == nil:
			out = append(out, fmt.Sprintf("%s: %s", what, s.holds(id, rec)))
		case o != orderRow{customer: rec.order.customer, item: rec.order.item, qty: rec.order.qty, amount: rec.order.amount}:
			out = append(out, fmt.Sprintf("%s: the databases hold other figures than sent (%+v): %s", what, rec.order, s.holds(id, rec)))
		}
	}
	for _, rec := range records {
		id := rec.order.id
		_, in := s.orders[id]
		_, inP := s.payments[id]
		_, inR := s.reservations[id]
		in = in || inP || inR
		switch {
		case rec.told == client.Committed && !in:
			out = append(out, fmt.Sprintf("%s but is in no database: %s", rec.describe(), s.holds(id, rec)))
		case rec.told == client.Aborted && in:
			out = append(out, fmt.Sprintf("%s but is in the databases: %s", rec.describe(), s.holds(id, rec)))
		}
		switch {
		case rec.askErr != nil:
		case rec.asked == client.Committed && !in:
			out = append(out, fmt.Sprintf("%s; the coordinator says committed, but it is in no database: %s", rec.describe(), s.holds(id, rec)))
		case rec.asked == client.Aborted && in:
			out = append(out, fmt.Sprintf("%s; the coordinator says aborted, but it is in the databases: %s", rec.describe(), s.holds(id, rec)))
		}
	}
	return out
}
