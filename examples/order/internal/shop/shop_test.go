package shop

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/sdk"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHandlerErrorsMapToTheirStatusCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("%w: no id", ErrBadRequest), codes.InvalidArgument},
		{fmt.Errorf("%w: cust-01", ErrInsufficientFunds), codes.FailedPrecondition},
		{fmt.Errorf("%w: item-01", ErrOutOfStock), codes.FailedPrecondition},
		{fmt.Errorf("%w: cust-99", ErrUnknownCustomer), codes.NotFound},
		{fmt.Errorf("%w: item-99", ErrUnknownItem), codes.NotFound},
		{fmt.Errorf("%w: o-1", ErrDuplicateOrder), codes.AlreadyExists},
		{sdk.ErrNoTransaction, codes.InvalidArgument},
		{fmt.Errorf("%w: gid", sdk.ErrRefused), codes.Aborted},
		{fmt.Errorf("%w: gid", sdk.ErrVotedNo), codes.Aborted},
		{fmt.Errorf("%w: gid", sdk.ErrRegistrationUnknown), codes.Unavailable},
		{fmt.Errorf("query: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("query: %w", context.Canceled), codes.Canceled},
		{errors.New("pq: something else"), codes.Internal},
	} {
		if got := status.Code(toStatus(tc.err)); got != tc.want {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestAbortReasonsNameTheServiceAndTheRule(t *testing.T) {
	// As client.Run wraps the function's error.
	aborted := func(err error) error { return fmt.Errorf("%w (tx): %w", client.ErrAborted, err) }
	for _, tc := range []struct {
		err  error
		want string
	}{
		{aborted(&callError{Payment, status.Error(codes.FailedPrecondition, "low")}), "insufficient funds"},
		{aborted(&callError{Inventory, status.Error(codes.FailedPrecondition, "none left")}), "out of stock"},
		{aborted(errChangedMind), "client abort"},
		{aborted(&callError{Payment, status.Error(codes.Unavailable, "down")}), "payment: Unavailable"},
		{aborted(&callError{Orders, status.Error(codes.FailedPrecondition, "?")}), "orders: FailedPrecondition"},
		{fmt.Errorf("%w: %w", client.ErrAborted, status.Error(codes.Unavailable, "no coordinator")), "coordinator: Unavailable"},
		{fmt.Errorf("%w (tx): a branch voted no", client.ErrAborted), "aborted at commit"},
	} {
		if got := reason(tc.err); got != tc.want {
			t.Errorf("reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestAnOrderDependsOnlyOnTheSeedAndItsNumber(t *testing.T) {
	p := &placer{cfg: ClientConfig{Seed: 42, FailRate: 0.5, IDPrefix: "x-"}}
	for i := range 50 {
		a, fa := p.newOrder(i)
		b, fb := p.newOrder(i)
		if a != b || fa != fb {
			t.Fatalf("order %d: %+v (%v) then %+v (%v)", i, a, fa, b, fb)
		}
		if want := fmt.Sprintf("x-%06d", i); a.ID != want {
			t.Errorf("order %d has id %q, want %q", i, a.ID, want)
		}
	}
	other := &placer{cfg: ClientConfig{Seed: 43, FailRate: 0.5}}
	same := 0
	for i := range 50 {
		a, _ := p.newOrder(i)
		b, _ := other.newOrder(i)
		a.ID, b.ID = "", ""
		if a == b {
			same++
		}
	}
	if same == 50 {
		t.Error("another seed made the same orders")
	}
}

func TestOrdersMeantToFailCannotSucceed(t *testing.T) {
	p := &placer{cfg: ClientConfig{Seed: 7, FailRate: 1}}
	seen := map[Failure]int{}
	for i := range 300 {
		o, f := p.newOrder(i)
		seen[f]++
		if f != Failure(1+i%3) {
			t.Fatalf("order %d meant to fail with %v, want the three ways in turn", i, f)
		}
		switch f {
		case FailFunds:
			if o.Amount <= InitialBalance {
				t.Errorf("order %d: amount %d is within a balance of %d", i, o.Amount, InitialBalance)
			}
		case FailStock:
			if o.Qty <= InitialStock {
				t.Errorf("order %d: quantity %d is within a stock of %d", i, o.Qty, InitialStock)
			}
		}
		if o.Qty <= 0 || o.Amount <= 0 {
			t.Errorf("order %d: %+v is malformed", i, o)
		}
	}
	if len(seen) != 3 {
		t.Errorf("failures %v, want the three kinds", seen)
	}
	p.cfg.FailRate = 0
	for i := range 300 {
		if o, f := p.newOrder(i); f != NoFailure || o.Amount > 10_000 || o.Qty > 3 {
			t.Fatalf("with no failures asked for, order %d is %+v (%v)", i, o, f)
		}
	}
}

func TestReportPrintsEveryCount(t *testing.T) {
	rep := &Report{
		Results:   make([]Result, 10),
		Committed: 6, Aborted: 3, Unknown: 1, UnknownAtCommit: 2,
		Reasons: map[string]int{"out of stock": 2, "client abort": 1},
		Elapsed: 2 * time.Second,
	}
	var b strings.Builder
	rep.Print(&b)
	want := "orders:    10 in 2s (5.0/s)\n" +
		"committed: 6\n" +
		"aborted:   3 (client abort 1, out of stock 2)\n" +
		"unknown:   1 (2 unknown at commit; the coordinator settled 1 since)\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
