package torture

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/shopdb"
)

// readShop reads what the services seeded.
func readShop(ctx context.Context, dbs map[string]*sql.DB) (shopData, error) {
	var d shopData
	rows, err := dbs["payment"].QueryContext(ctx, `SELECT customer, balance FROM accounts ORDER BY customer`)
	if err != nil {
		return d, err
	}
	if err := shopdb.ScanAll(rows, func() error {
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
	if err := shopdb.ScanAll(rows, func() error {
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

// readState reads the three databases.
func readState(ctx context.Context, dbs map[string]*sql.DB) (*shopdb.State, error) {
	return shopdb.Read(ctx, dbs["orders"], dbs["payment"], dbs["inventory"])
}

// holds describes what each database holds of order id, and the prepared
// branches of its transaction.
func holds(s *shopdb.State, id string, rec *record) string {
	var parts []string
	if o, ok := s.Orders[id]; ok {
		parts = append(parts, fmt.Sprintf("orders: %+v", o))
	} else {
		parts = append(parts, "orders: none")
	}
	if p, ok := s.Payments[id]; ok {
		parts = append(parts, fmt.Sprintf("payment: %+v", p))
	} else {
		parts = append(parts, "payment: none")
	}
	if v, ok := s.Reservations[id]; ok {
		parts = append(parts, fmt.Sprintf("inventory: %+v", v))
	} else {
		parts = append(parts, "inventory: none")
	}
	if rec != nil && !rec.txid.IsZero() {
		for _, svc := range services {
			for _, g := range s.Prepared[svc] {
				if strings.Contains(g, rec.txid.String()) {
					parts = append(parts, fmt.Sprintf("prepared at %s: %s", svc, g))
				}
			}
		}
	}
	return strings.Join(parts, "; ")
}

// hazard reports whether rec's transaction was reported as a heuristic
// hazard: to its client, or by the coordinator when asked; or, before the
// coordinator was asked (!final), whether it still may be.
func (rec *record) hazard(final bool) bool {
	switch {
	case rec.told == client.Hazard, rec.asked == client.Hazard:
		return true
	case rec.told == client.Committed, rec.told == client.Aborted:
		return false
	}
	return !final
}

func (rec *record) describe() string {
	s := fmt.Sprintf("order %s (tx %s, meant to fail: %v) told %v", rec.order.id, rec.txid, rec.meant, rec.told)
	if rec.err != nil {
		s += fmt.Sprintf(" (%v)", rec.err)
	}
	return s
}

// checkViolations lists every way s breaks the rules, given what the clients
// were told (records) and the totals seeded (data): each order is in all
// three databases with the figures its client sent, or in none; one told
// committed is there, one told aborted is not; money and stock are
// conserved; nothing is prepared; and the coordinator's answer about a
// transaction, when it has one, matches the databases.
//
// An order of a transaction a branch of which was rolled back by hand
// (lost) may be in some databases only, if that is reported: its client
// was told, or the coordinator says, it is a heuristic hazard. Before the
// coordinator is asked (final false), one whose client heard "unknown"
// may still become so; once asked (final true), one not reported as a
// hazard is a silent violation.
func checkViolations(s *shopdb.State, data shopData, records []*record, lost map[ids.TxID]bool, final bool) []string {
	var out []string
	for _, svc := range services {
		if n := len(s.Prepared[svc]); n > 0 {
			out = append(out, fmt.Sprintf("%d transactions left prepared in the %s database: %v", n, svc, s.Prepared[svc]))
		}
	}
	if s.Balances+s.Paid != data.money {
		out = append(out, fmt.Sprintf("money not conserved: balances %d + payments %d = %d, seeded %d", s.Balances, s.Paid, s.Balances+s.Paid, data.money))
	}
	if s.Stock+s.Reserved != data.stock {
		out = append(out, fmt.Sprintf("stock not conserved: stock %d + reserved %d = %d, seeded %d", s.Stock, s.Reserved, s.Stock+s.Reserved, data.stock))
	}
	byID := map[string]*record{}
	for _, rec := range records {
		byID[rec.order.id] = rec
	}
	for _, id := range s.IDs() {
		rec := byID[id]
		what := "order " + id + " (placed by no client)"
		if rec != nil {
			what = rec.describe()
		}
		switch {
		case !s.Whole(id) && rec != nil && lost[rec.txid] && rec.hazard(final):
			// Reported: an operator must look.
		case !s.Whole(id):
			out = append(out, fmt.Sprintf("atomicity: %s is in some databases only: %s", what, holds(s, id, rec)))
		case !s.Agree(id):
			out = append(out, fmt.Sprintf("%s: the databases disagree: %s", what, holds(s, id, rec)))
		case rec == nil:
			out = append(out, fmt.Sprintf("%s: %s", what, holds(s, id, rec)))
		case s.Orders[id] != shopdb.Order{Customer: rec.order.customer, Item: rec.order.item, Qty: rec.order.qty, Amount: rec.order.amount}:
			out = append(out, fmt.Sprintf("%s: the databases hold other figures than sent (%+v): %s", what, rec.order, holds(s, id, rec)))
		}
	}
	for _, rec := range records {
		id := rec.order.id
		inO, inP, inR := s.Where(id)
		in := inO || inP || inR
		switch {
		case rec.told == client.Committed && !in:
			out = append(out, fmt.Sprintf("%s but is in no database: %s", rec.describe(), holds(s, id, rec)))
		case rec.told == client.Aborted && in:
			out = append(out, fmt.Sprintf("%s but is in the databases: %s", rec.describe(), holds(s, id, rec)))
		}
		switch {
		case rec.askErr != nil:
		case rec.asked == client.Committed && !in:
			out = append(out, fmt.Sprintf("%s; the coordinator says committed, but it is in no database: %s", rec.describe(), holds(s, id, rec)))
		case rec.asked == client.Aborted && in:
			out = append(out, fmt.Sprintf("%s; the coordinator says aborted, but it is in the databases: %s", rec.describe(), holds(s, id, rec)))
		}
	}
	return out
}
