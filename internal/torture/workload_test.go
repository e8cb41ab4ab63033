package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	shopv1 "github.com/txcoord/txcoord/examples/order/proto/shop/v1"
	"github.com/txcoord/txcoord/ids"
)

// failure is how an order is meant to fail, if at all.
type failure int

const (
	noFailure  failure = iota
	failFunds          // the charge exceeds any balance: payment refuses
	failStock          // the quantity exceeds any stock: inventory refuses
	failClient         // every service accepts, then the client rolls back
)

func (f failure) String() string {
	switch f {
	case noFailure:
		return "none"
	case failFunds:
		return "insufficient funds"
	case failStock:
		return "out of stock"
	case failClient:
		return "client abort"
	}
	return fmt.Sprintf("failure(%d)", int(f))
}

// errChangedMind is the client's own reason to roll an order back.
var errChangedMind = errors.New("the customer changed their mind")

// order is one order as the client places it.
type order struct {
	id             string
	customer, item string
	qty, amount    int64
}

// record is what became of one order, as its client saw it.
type record struct {
	order order
	meant failure
	txid  ids.TxID // zero if no transaction was begun
	// told is the outcome client.Run reported.
	told client.Outcome
	err  error
	// asked is the coordinator's answer about txid after recovery, and
	// askErr the error asking, if any.
	asked  client.Outcome
	askErr error
}

// shopData is what the services seeded: the customers and items, and the
// largest balance and stock, to build orders that must fail.
type shopData struct {
	customers, items     []string
	maxBalance, maxStock int64
	money, stock         int64 // totals, balances and payments included
}

// workload places orders through the links to the coordinator and the
// services.
type workload struct {
	seed    uint64
	data    shopData
	timeout time.Duration

	conns     []*grpc.ClientConn
	tc        *client.Client
	orders    shopv1.OrdersClient
	payments  shopv1.PaymentsClient
	inventory shopv1.InventoryClient

	mu      sync.Mutex
	records []*record
}

// dialOptions: mutual TLS as the client (clientCreds; plaintext before
// they are made), reconnection backoff from 100ms to a second, and no
// waiting for a connection: a call to an unreachable peer fails at once and
// its order aborts.
func dialOptions() []grpc.DialOption {
	bo := backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}
	creds := clientCreds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 2 * time.Second}),
	}
}

// newWorkload connects to the coordinators (whichever serves) and the
// services at the given addresses (service name -> host:port).
func newWorkload(seed uint64, data shopData, coords []string, svc map[string]string) (*workload, error) {
	w := &workload{seed: seed, data: data, timeout: 10 * time.Second}
	dial := func(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
		c, err := grpc.NewClient(addr, append(dialOptions(), opts...)...)
		if err != nil {
			return nil, err
		}
		w.conns = append(w.conns, c)
		return c, nil
	}
	c, err := client.DialCoordinators(coords, dialOptions()...)
	if err != nil {
		w.close()
		return nil, err
	}
	w.conns = append(w.conns, c)
	w.tc = client.New(c, client.WithRollbackTimeout(3*time.Second))
	conns := map[string]*grpc.ClientConn{}
	for _, s := range services {
		c, err := dial(svc[s], grpc.WithUnaryInterceptor(client.UnaryClientInterceptor()))
		if err != nil {
			w.close()
			return nil, err
		}
		conns[s] = c
	}
	w.orders = shopv1.NewOrdersClient(conns["orders"])
	w.payments = shopv1.NewPaymentsClient(conns["payment"])
	w.inventory = shopv1.NewInventoryClient(conns["inventory"])
	return w, nil
}

func (w *workload) close() {
	for _, c := range w.conns {
		_ = c.Close()
	}
	w.conns = nil
}

// newOrder makes order n of worker; it depends on the seed, worker and n
// only.
func (w *workload) newOrder(prefix string, worker, n int, failRate float64) (order, failure) {
	r := rand.New(rand.NewPCG(w.seed, uint64(worker)<<32|uint64(n)))
	o := order{
		id:       fmt.Sprintf("%s%02d-%06d", prefix, worker, n),
		customer: w.data.customers[r.IntN(len(w.data.customers))],
		item:     w.data.items[r.IntN(len(w.data.items))],
		qty:      1 + r.Int64N(3),
		amount:   1 + r.Int64N(100),
	}
	meant := noFailure
	if r.Float64() < failRate {
		meant = failure(1 + r.IntN(3))
	}
	switch meant {
	case failFunds:
		o.amount = w.data.maxBalance + 1 + r.Int64N(1000)
	case failStock:
		o.qty = w.data.maxStock + 1 + r.Int64N(10)
	}
	return o, meant
}

// run places orders one after the other until ctx ends; the order in
// flight then finishes on its own deadline.
func (w *workload) run(ctx context.Context, worker int) {
	failed := 0
	for n := 0; ctx.Err() == nil; n++ {
		o, meant := w.newOrder("o", worker, n, 0.15)
		rec := w.place(o, meant)
		w.add(rec)
		if rec.told == client.Committed || meant != noFailure {
			failed = 0
			continue
		}
		// Something is down: do not spin.
		failed++
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(failed)*50*time.Millisecond, time.Second)):
		}
	}
}

func (w *workload) add(rec *record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.records = append(w.records, rec)
}

// place runs one order as a global transaction: the order row, the charge
// and the reservation commit together or not at all.
func (w *workload) place(o order, meant failure) *record {
	rec := &record{order: o, meant: meant}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	// Half the orders keep their decision at the coordinator's ledger
	// database (the server's --holder), half in its log.
	var opts []client.TxOption
	if o.id[len(o.id)-1]%2 == 1 {
		opts = append(opts, client.WithLoggedDecision())
	}
	err := w.tc.Run(ctx, func(ctx context.Context) error {
		if id, ok := client.TxID(ctx); ok {
			rec.txid = id
		}
		// Always in this order, so that two orders never wait for each
		// other's row locks across two databases.
		if _, err := w.orders.Create(ctx, &shopv1.CreateOrderRequest{
			OrderId: o.id, Customer: o.customer, Item: o.item, Qty: o.qty, Amount: o.amount,
		}); err != nil {
			return fmt.Errorf("orders: %w", err)
		}
		if _, err := w.payments.Charge(ctx, &shopv1.ChargeRequest{OrderId: o.id, Customer: o.customer, Amount: o.amount}); err != nil {
			return fmt.Errorf("payment: %w", err)
		}
		if _, err := w.inventory.Reserve(ctx, &shopv1.ReserveRequest{OrderId: o.id, Item: o.item, Qty: o.qty}); err != nil {
			return fmt.Errorf("inventory: %w", err)
		}
		if meant == failClient {
			return errChangedMind
		}
		return nil
	}, opts...)
	rec.err = err
	rec.told = client.OutcomeOf(err)
	return rec
}

// refusedAsMeant reports whether rec aborted the way its order was built
// to.
func (rec *record) refusedAsMeant() bool {
	if rec.told != client.Aborted {
		return false
	}
	switch rec.meant {
	case failFunds, failStock:
		return status.Code(rec.err) == codes.FailedPrecondition
	case failClient:
		return errors.Is(rec.err, errChangedMind)
	}
	return false
}

// snapshot returns the records so far, sorted by order id.
func (w *workload) snapshot() []*record {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]*record(nil), w.records...)
	sort.Slice(out, func(i, j int) bool { return out[i].order.id < out[j].order.id })
	return out
}
