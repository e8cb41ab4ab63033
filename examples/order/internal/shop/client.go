package shop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	shopv1 "github.com/txcoord/txcoord/examples/order/proto/shop/v1"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	"github.com/txcoord/txcoord/pki"
)

// Failure is how an order is meant to fail, if at all.
type Failure int

const (
	// NoFailure: the order should commit.
	NoFailure Failure = iota
	// FailFunds: the charge exceeds any balance; the payment service
	// refuses it.
	FailFunds
	// FailStock: the quantity exceeds any stock; the inventory service
	// refuses it.
	FailStock
	// FailClient: every service accepts, then the client changes its mind
	// and rolls back.
	FailClient
)

func (f Failure) String() string {
	switch f {
	case NoFailure:
		return "none"
	case FailFunds:
		return "insufficient funds"
	case FailStock:
		return "out of stock"
	case FailClient:
		return "client abort"
	}
	return fmt.Sprintf("Failure(%d)", int(f))
}

// errChangedMind is the client's own reason to roll an order back.
var errChangedMind = errors.New("the customer changed their mind")

// Order is one order as the client places it.
type Order struct {
	ID       string
	Customer string
	Item     string
	Qty      int64
	Amount   int64 // cents
}

// Result is what became of one order.
type Result struct {
	Order Order
	// Meant is the failure the order was built for.
	Meant Failure
	// TxID is the order's global transaction (zero if none was begun).
	TxID ids.TxID
	// AtCommit is the outcome the transaction reported; Outcome is the
	// final one, after asking the coordinator about an unknown one.
	AtCommit, Outcome client.Outcome
	// Err is the error of the transaction, nil if it committed at once.
	Err error
	// Reason classifies an aborted order: a Failure's name, or "other".
	Reason string
}

// ClientConfig configures PlaceOrders.
type ClientConfig struct {
	// Addresses (host:port) of the coordinator and the three services.
	Coordinator, OrdersAddr, PaymentAddr, InventoryAddr string
	// TLS, when set, makes every call over mutual TLS.
	TLS TLSFiles
	// Orders is how many orders to place, by Workers concurrent workers.
	Orders, Workers int
	// FailRate is the share of orders meant to fail, in equal parts
	// insufficient funds, out of stock and client abort.
	FailRate float64
	// Seed makes the orders reproducible: order i is the same for the same
	// seed, whichever worker places it.
	Seed uint64
	// IDPrefix starts every order id; the sequence number follows.
	IDPrefix string
	// OrderTimeout bounds one order's transaction, commit included
	// (default 30s).
	OrderTimeout time.Duration
	// ResolveTimeout bounds the time spent asking the coordinator about an
	// order whose outcome was unknown at commit (default 1m).
	ResolveTimeout time.Duration
	// Progress, if set, is called after each order, one call at a time.
	Progress func(Result)
}

// Report is the result of PlaceOrders.
type Report struct {
	Results []Result
	// Final outcomes.
	Committed, Aborted, Unknown int
	// UnknownAtCommit counts orders whose commit answered "outcome
	// unknown", before asking the coordinator.
	UnknownAtCommit int
	// Reasons counts aborted orders by reason.
	Reasons map[string]int
	Elapsed time.Duration
}

// PlaceOrders places cfg.Orders orders, each one global transaction across
// the three services, and reports the outcome of each. When an order's
// outcome is unknown at commit (the coordinator became unreachable, say),
// its worker asks the coordinator about it until the coordinator knows or
// ResolveTimeout passes, before it places the next order.
func PlaceOrders(ctx context.Context, cfg ClientConfig) (*Report, error) {
	if cfg.Orders < 0 || cfg.Workers < 1 || cfg.FailRate < 0 || cfg.FailRate > 1 {
		return nil, errors.New("shop: want orders >= 0, workers >= 1 and a fail rate within 0..1")
	}
	if err := cfg.TLS.check(); err != nil {
		return nil, fmt.Errorf("shop: %w", err)
	}
	if cfg.OrderTimeout <= 0 {
		cfg.OrderTimeout = 30 * time.Second
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = time.Minute
	}
	tlsr, err := cfg.TLS.reloader(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return nil, err
	}
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for _, d := range []struct {
		name, addr string
		opts       []grpc.DialOption
	}{
		// A call to a peer that is unreachable fails at once: the order
		// aborts (nothing of it can commit) instead of waiting. The
		// interceptor carries the transaction in ctx to the services.
		{"coordinator", cfg.Coordinator, dialOptions(tlsr, false)},
		{"orders", cfg.OrdersAddr, serviceDialOptions(tlsr)},
		{"payment", cfg.PaymentAddr, serviceDialOptions(tlsr)},
		{"inventory", cfg.InventoryAddr, serviceDialOptions(tlsr)},
	} {
		var c *grpc.ClientConn
		var err error
		if d.name == "coordinator" {
			// Every address of the coordinator id (a primary and its
			// standbys): the connection lands on the one that serves.
			c, err = client.DialCoordinators(strings.Split(d.addr, ","), d.opts...)
		} else {
			c, err = grpc.NewClient(d.addr, d.opts...)
		}
		if err != nil {
			return nil, fmt.Errorf("shop: %s at %q: %w", d.name, d.addr, err)
		}
		conns[d.name] = c
	}
	p := &placer{
		cfg:       cfg,
		tc:        client.New(conns["coordinator"]),
		orders:    shopv1.NewOrdersClient(conns["orders"]),
		payments:  shopv1.NewPaymentsClient(conns["payment"]),
		inventory: shopv1.NewInventoryClient(conns["inventory"]),
	}

	start := time.Now()
	results := make([]Result, cfg.Orders)
	var next atomic.Int64
	var progress sync.Mutex
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Orders || ctx.Err() != nil {
					return
				}
				results[i] = p.place(ctx, i)
				if cfg.Progress != nil {
					progress.Lock()
					cfg.Progress(results[i])
					progress.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	rep := &Report{Results: results, Reasons: map[string]int{}, Elapsed: time.Since(start)}
	for _, r := range results {
		if r.AtCommit == client.Unknown {
			rep.UnknownAtCommit++
		}
		switch r.Outcome {
		case client.Committed:
			rep.Committed++
		case client.Aborted:
			rep.Aborted++
			rep.Reasons[r.Reason]++
		default:
			rep.Unknown++
		}
	}
	return rep, nil
}

func serviceDialOptions(tlsr *pki.Reloader) []grpc.DialOption {
	return append(dialOptions(tlsr, false), grpc.WithUnaryInterceptor(client.UnaryClientInterceptor()))
}

type placer struct {
	cfg       ClientConfig
	tc        *client.Client
	orders    shopv1.OrdersClient
	payments  shopv1.PaymentsClient
	inventory shopv1.InventoryClient
}

// newOrder makes order number i; the share cfg.FailRate of them is meant
// to fail, the three ways in turn.
func (p *placer) newOrder(i int) (Order, Failure) {
	r := rand.New(rand.NewPCG(p.cfg.Seed, uint64(i)))
	o := Order{
		ID:       fmt.Sprintf("%s%06d", p.cfg.IDPrefix, i),
		Customer: Customer(r.IntN(NumCustomers)),
		Item:     Item(r.IntN(NumItems)),
		Qty:      1 + r.Int64N(3),
		Amount:   100 + r.Int64N(9900),
	}
	meant := NoFailure
	if r.Float64() < p.cfg.FailRate {
		meant = Failure(1 + i%3)
	}
	switch meant {
	case FailFunds:
		o.Amount = InitialBalance + 1 + r.Int64N(1000)
	case FailStock:
		o.Qty = InitialStock + 1 + r.Int64N(10)
	}
	return o, meant
}

// place runs one order as a global transaction: the order row, the
// charge and the reservation commit together or not at all.
func (p *placer) place(ctx context.Context, i int) Result {
	o, meant := p.newOrder(i)
	res := Result{Order: o, Meant: meant}
	octx, cancel := context.WithTimeout(ctx, p.cfg.OrderTimeout)
	defer cancel()
	err := p.tc.Run(octx, func(ctx context.Context) error {
		if tx, ok := remote.FromContext(ctx); ok {
			res.TxID = tx.ID
		}
		// One call after the other, always in this order: a charge's row
		// lock is taken before a reservation's, so two orders never wait
		// for each other across the two databases.
		if _, err := p.orders.Create(ctx, &shopv1.CreateOrderRequest{
			OrderId: o.ID, Customer: o.Customer, Item: o.Item, Qty: o.Qty, Amount: o.Amount,
		}); err != nil {
			return &callError{Orders, err}
		}
		if _, err := p.payments.Charge(ctx, &shopv1.ChargeRequest{OrderId: o.ID, Customer: o.Customer, Amount: o.Amount}); err != nil {
			return &callError{Payment, err}
		}
		if _, err := p.inventory.Reserve(ctx, &shopv1.ReserveRequest{OrderId: o.ID, Item: o.Item, Qty: o.Qty}); err != nil {
			return &callError{Inventory, err}
		}
		if meant == FailClient {
			return errChangedMind
		}
		return nil
	})
	res.Err = err
	res.AtCommit = client.OutcomeOf(err)
	res.Outcome = res.AtCommit
	if res.Outcome == client.Unknown && !res.TxID.IsZero() {
		p.learn(ctx, &res)
	}
	if res.Outcome == client.Aborted && res.Reason == "" {
		res.Reason = reason(err)
	}
	return res
}

// callError is a service call that failed inside an order's transaction.
type callError struct {
	service Kind
	err     error
}

func (e *callError) Error() string { return fmt.Sprintf("%v: %v", e.service, e.err) }
func (e *callError) Unwrap() error { return e.err }

// reason names why an order aborted.
func reason(err error) string {
	var ce *callError
	switch {
	case errors.Is(err, errChangedMind):
		return FailClient.String()
	case errors.As(err, &ce):
		code := status.Code(ce.err)
		switch {
		case code == codes.FailedPrecondition && ce.service == Payment:
			return FailFunds.String()
		case code == codes.FailedPrecondition && ce.service == Inventory:
			return FailStock.String()
		}
		return fmt.Sprintf("%v: %v", ce.service, code)
	}
	if code := status.Code(err); code != codes.Unknown {
		return "coordinator: " + code.String()
	}
	return "aborted at commit"
}

// learn asks the coordinator about an order whose outcome was unknown at
// commit, soon and again, until it knows or ResolveTimeout passes.
func (p *placer) learn(ctx context.Context, res *Result) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ResolveTimeout)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		out, err := p.tc.Outcome(cctx, res.TxID)
		ccancel()
		if err == nil && out != client.Unknown {
			res.Outcome = out
			if out == client.Aborted {
				res.Reason = "aborted, learnt later"
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Print writes a summary of the report.
func (rep *Report) Print(w io.Writer) {
	n := len(rep.Results)
	rate := 0.0
	if s := rep.Elapsed.Seconds(); s > 0 {
		rate = float64(n) / s
	}
	fmt.Fprintf(w, "orders:    %d in %v (%.1f/s)\n", n, rep.Elapsed.Round(time.Millisecond), rate)
	fmt.Fprintf(w, "committed: %d\n", rep.Committed)
	reasons := make([]string, 0, len(rep.Reasons))
	for r := range rep.Reasons {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	fmt.Fprintf(w, "aborted:   %d", rep.Aborted)
	for i, r := range reasons {
		sep := ", "
		if i == 0 {
			sep = " ("
		}
		fmt.Fprintf(w, "%s%s %d", sep, r, rep.Reasons[r])
	}
	if len(reasons) > 0 {
		fmt.Fprint(w, ")")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "unknown:   %d", rep.Unknown)
	if rep.UnknownAtCommit > 0 {
		fmt.Fprintf(w, " (%d unknown at commit; the coordinator settled %d since)", rep.UnknownAtCommit, rep.UnknownAtCommit-rep.Unknown)
	}
	fmt.Fprintln(w)
}
