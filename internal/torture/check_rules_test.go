package torture

import (
	"errors"
	"strings"
	"testing"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/shopdb"
)

// TestViolationsFindEveryBrokenRule feeds the checker databases that break
// one rule each: a clean result of a run means something only if each is
// caught.
func TestViolationsFindEveryBrokenRule(t *testing.T) {
	data := shopData{money: 1000, stock: 100}
	txid, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	o := order{id: "o00-000001", customer: "cust-01", item: "item-01", qty: 2, amount: 30}
	committed := &record{order: o, txid: txid, told: client.Committed}
	clean := func() *shopdb.State {
		return &shopdb.State{
			Prepared:     map[string][]string{},
			Orders:       map[string]shopdb.Order{o.id: {Customer: o.customer, Item: o.item, Qty: o.qty, Amount: o.amount}},
			Payments:     map[string]shopdb.Payment{o.id: {Customer: o.customer, Amount: o.amount}},
			Reservations: map[string]shopdb.Reservation{o.id: {Item: o.item, Qty: o.qty}},
			Balances:     970, Paid: 30, Stock: 98, Reserved: 2,
		}
	}
	if v := checkViolations(clean(), data, []*record{committed}, nil, true); len(v) != 0 {
		t.Fatalf("a clean state has violations: %v", v)
	}
	for _, c := range []struct {
		name    string
		mutate  func(s *shopdb.State, recs []*record) []*record
		mention string
	}{
		{"an order in some databases only", func(s *shopdb.State, recs []*record) []*record {
			delete(s.Reservations, o.id)
			s.Stock, s.Reserved = 100, 0
			return recs
		}, "atomicity"},
		{"databases disagreeing on an order", func(s *shopdb.State, recs []*record) []*record {
			s.Payments[o.id] = shopdb.Payment{Customer: o.customer, Amount: 31}
			s.Balances = 969
			s.Paid = 31
			return recs
		}, "disagree"},
		{"other figures than the client sent", func(s *shopdb.State, recs []*record) []*record {
			recs[0] = &record{order: order{id: o.id, customer: o.customer, item: o.item, qty: 2, amount: 29}, txid: txid, told: client.Committed}
			return recs
		}, "other figures"},
		{"an order no client placed", func(s *shopdb.State, recs []*record) []*record { return nil }, "placed by no client"},
		{"an order told committed and missing", func(s *shopdb.State, recs []*record) []*record {
			return append(recs, &record{order: order{id: "o00-000002"}, told: client.Committed})
		}, "in no database"},
		{"an order told aborted and present", func(s *shopdb.State, recs []*record) []*record {
			return []*record{{order: o, txid: txid, told: client.Aborted, err: errors.New("aborted")}}
		}, "is in the databases"},
		{"the coordinator saying aborted of a present order", func(s *shopdb.State, recs []*record) []*record {
			return []*record{{order: o, txid: txid, told: client.Unknown, asked: client.Aborted}}
		}, "coordinator says aborted"},
		{"the coordinator saying committed of a missing order", func(s *shopdb.State, recs []*record) []*record {
			return append(recs, &record{order: order{id: "o00-000003"}, txid: txid, told: client.Unknown, asked: client.Committed})
		}, "coordinator says committed"},
		{"a branch left prepared", func(s *shopdb.State, recs []*record) []*record {
			s.Prepared["payment"] = []string{"txc.torture." + txid.String() + ".payment-1"}
			return recs
		}, "left prepared"},
		{"money created", func(s *shopdb.State, recs []*record) []*record { s.Balances++; return recs }, "money not conserved"},
		{"stock lost", func(s *shopdb.State, recs []*record) []*record { s.Stock--; return recs }, "stock not conserved"},
	} {
		s := clean()
		recs := c.mutate(s, []*record{committed})
		v := checkViolations(s, data, recs, map[ids.TxID]bool{}, true)
		if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), c.mention) {
			t.Errorf("%s: violations %q, want one mentioning %q", c.name, v, c.mention)
		}
	}
}

// A partial order of a transaction that lost a branch behind the
// coordinator's back is no violation once reported as a hazard, and is one
// when nobody reported it.
func TestAReportedHazardIsNoViolationAndASilentOneIs(t *testing.T) {
	data := shopData{money: 1000, stock: 100}
	txid, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	o := order{id: "o00-000001", customer: "cust-01", item: "item-01", qty: 2, amount: 30}
	partial := func() *shopdb.State {
		return &shopdb.State{
			Prepared:     map[string][]string{},
			Orders:       map[string]shopdb.Order{o.id: {Customer: o.customer, Item: o.item, Qty: o.qty, Amount: o.amount}},
			Payments:     map[string]shopdb.Payment{o.id: {Customer: o.customer, Amount: o.amount}},
			Reservations: map[string]shopdb.Reservation{},
			Balances:     970, Paid: 30, Stock: 100, Reserved: 0,
		}
	}
	lost := map[ids.TxID]bool{txid: true}
	for _, c := range []struct {
		name      string
		told      client.Outcome
		asked     client.Outcome
		final     bool
		violation bool
	}{
		{"told hazard", client.Hazard, client.Unknown, true, false},
		{"told unknown, coordinator says hazard", client.Unknown, client.Hazard, true, false},
		{"told unknown, not yet asked", client.Unknown, client.Unknown, false, false},
		{"told unknown, coordinator says unknown", client.Unknown, client.Unknown, true, true},
		{"told committed", client.Committed, client.Committed, true, true},
		{"told committed, before asking", client.Committed, client.Unknown, false, true},
	} {
		rec := &record{order: o, txid: txid, told: c.told, asked: c.asked}
		v := checkViolations(partial(), data, []*record{rec}, lost, c.final)
		if got := len(v) > 0; got != c.violation {
			t.Errorf("%s: violations %q, want a violation: %v", c.name, v, c.violation)
		}
	}
	// The same partial order without a branch rolled back by hand is a
	// violation whatever was reported.
	rec := &record{order: o, txid: txid, told: client.Hazard}
	if v := checkViolations(partial(), data, []*record{rec}, nil, true); len(v) == 0 {
		t.Error("a partial order with no branch lost is no violation")
	}
}
