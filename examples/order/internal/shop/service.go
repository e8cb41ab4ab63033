package shop

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shopv1 "github.com/txcoord/txcoord/examples/order/proto/shop/v1"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/sdk"
)

// Errors of the services' own rules; toStatus maps them to status codes.
var (
	ErrInsufficientFunds = errors.New("shop: insufficient funds")
	ErrOutOfStock        = errors.New("shop: out of stock")
	ErrUnknownCustomer   = errors.New("shop: unknown customer")
	ErrUnknownItem       = errors.New("shop: unknown item")
	ErrDuplicateOrder    = errors.New("shop: order id already used")
	ErrBadRequest        = errors.New("shop: bad request")
)

// uniqueViolation is PostgreSQL's SQLSTATE for a duplicate key.
const uniqueViolation = "23505"

// register serves the API of service k on s; every handler writes through
// p.Branch.
func register(s grpc.ServiceRegistrar, k Kind, p *sdk.Participant) error {
	switch k {
	case Orders:
		shopv1.RegisterOrdersServer(s, &ordersServer{p: p})
	case Payment:
		shopv1.RegisterPaymentsServer(s, &paymentsServer{p: p})
	case Inventory:
		shopv1.RegisterInventoryServer(s, &inventoryServer{p: p})
	default:
		return fmt.Errorf("shop: no service %v", k)
	}
	return nil
}

type ordersServer struct {
	shopv1.UnimplementedOrdersServer
	p *sdk.Participant
}

func (s *ordersServer) Create(ctx context.Context, req *shopv1.CreateOrderRequest) (*shopv1.CreateOrderResponse, error) {
	if req.GetOrderId() == "" || req.GetCustomer() == "" || req.GetItem() == "" || req.GetQty() <= 0 || req.GetAmount() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: an order needs an id, a customer, an item, a positive quantity and a positive amount", ErrBadRequest))
	}
	err := s.p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
		_, err := b.ExecContext(ctx,
			`INSERT INTO orders (order_id, customer, item, qty, amount) VALUES ($1, $2, $3, $4, $5)`,
			req.GetOrderId(), req.GetCustomer(), req.GetItem(), req.GetQty(), req.GetAmount())
		if postgres.SQLState(err) == uniqueViolation {
			return fmt.Errorf("%w: %s", ErrDuplicateOrder, req.GetOrderId())
		}
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &shopv1.CreateOrderResponse{}, nil
}

type paymentsServer struct {
	shopv1.UnimplementedPaymentsServer
	p *sdk.Participant
}

func (s *paymentsServer) Charge(ctx context.Context, req *shopv1.ChargeRequest) (*shopv1.ChargeResponse, error) {
	if req.GetOrderId() == "" || req.GetCustomer() == "" || req.GetAmount() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: a charge needs an order id, a customer and a positive amount", ErrBadRequest))
	}
	var balance int64
	err := s.p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
		err := b.QueryRowContext(ctx,
			`UPDATE accounts SET balance = balance - $1 WHERE customer = $2 AND balance >= $1 RETURNING balance`,
			req.GetAmount(), req.GetCustomer()).Scan(&balance)
		if errors.Is(err, sql.ErrNoRows) {
			var exists bool
			if err := b.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM accounts WHERE customer = $1)`, req.GetCustomer()).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				return fmt.Errorf("%w: %s", ErrUnknownCustomer, req.GetCustomer())
			}
			return fmt.Errorf("%w: %s cannot pay %d", ErrInsufficientFunds, req.GetCustomer(), req.GetAmount())
		}
		if err != nil {
			return err
		}
		_, err = b.ExecContext(ctx, `INSERT INTO payments (order_id, customer, amount) VALUES ($1, $2, $3)`,
			req.GetOrderId(), req.GetCustomer(), req.GetAmount())
		if postgres.SQLState(err) == uniqueViolation {
			return fmt.Errorf("%w: %s", ErrDuplicateOrder, req.GetOrderId())
		}
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &shopv1.ChargeResponse{Balance: balance}, nil
}

type inventoryServer struct {
	shopv1.UnimplementedInventoryServer
	p *sdk.Participant
}

func (s *inventoryServer) Reserve(ctx context.Context, req *shopv1.ReserveRequest) (*shopv1.ReserveResponse, error) {
	if req.GetOrderId() == "" || req.GetItem() == "" || req.GetQty() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: a reservation needs an order id, an item and a positive quantity", ErrBadRequest))
	}
	var stock int64
	err := s.p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error {
		err := b.QueryRowContext(ctx,
			`UPDATE stock SET quantity = quantity - $1 WHERE item = $2 AND quantity >= $1 RETURNING quantity`,
			req.GetQty(), req.GetItem()).Scan(&stock)
		if errors.Is(err, sql.ErrNoRows) {
			var exists bool
			if err := b.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM stock WHERE item = $1)`, req.GetItem()).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				return fmt.Errorf("%w: %s", ErrUnknownItem, req.GetItem())
			}
			return fmt.Errorf("%w: %s has fewer than %d left", ErrOutOfStock, req.GetItem(), req.GetQty())
		}
		if err != nil {
			return err
		}
		_, err = b.ExecContext(ctx, `INSERT INTO reservations (order_id, item, qty) VALUES ($1, $2, $3)`,
			req.GetOrderId(), req.GetItem(), req.GetQty())
		if postgres.SQLState(err) == uniqueViolation {
			return fmt.Errorf("%w: %s", ErrDuplicateOrder, req.GetOrderId())
		}
		return err
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &shopv1.ReserveResponse{Stock: stock}, nil
}

// toStatus maps a handler's error to its gRPC status. Whatever the code,
// the caller's transaction must not commit: the branch was rolled back,
// or (UNAVAILABLE after ErrRegistrationUnknown) it stays prepared until
// the coordinator's outcome, an abort, is known.
func toStatus(err error) error {
	switch {
	case errors.Is(err, ErrBadRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrInsufficientFunds), errors.Is(err, ErrOutOfStock):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrUnknownCustomer), errors.Is(err, ErrUnknownItem):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrDuplicateOrder):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, sdk.ErrNoTransaction):
		return status.Error(codes.InvalidArgument, err.Error()+": call it through a txcoord client")
	case errors.Is(err, sdk.ErrRefused), errors.Is(err, sdk.ErrVotedNo):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, sdk.ErrRegistrationUnknown):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}
