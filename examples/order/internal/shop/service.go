package shop

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	gomysql "github.com/go-sql-driver/mysql"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shopv1 "github.com/txcoord/txcoord/examples/order/proto/shop/v1"
	"github.com/txcoord/txcoord/participant/mysql"
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

// dialect is what differs between a service on PostgreSQL and one on
// MariaDB: the placeholders, the schema, a duplicate key's error, and the
// branch type.
type dialect struct{ mysql bool }

func dialectOf(dsn string) dialect {
	return dialect{mysql: strings.HasPrefix(dsn, "mysql://") || strings.HasPrefix(dsn, "mariadb://")}
}

// sql writes q's $1, $2, ... placeholders as MariaDB's ?.
func (d dialect) sql(q string) string {
	if !d.mysql {
		return q
	}
	for i := 9; i >= 1; i-- {
		q = strings.ReplaceAll(q, "$"+strconv.Itoa(i), "?")
	}
	return q
}

// duplicate reports a duplicate key.
func (d dialect) duplicate(err error) bool {
	var me *gomysql.MySQLError
	return postgres.SQLState(err) == "23505" || errors.As(err, &me) && me.Number == 1062
}

// branch is what a handler does its work with: a PostgreSQL or a MariaDB
// branch.
type branch interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// work runs fn as the service's branch of the caller's transaction.
func (d dialect) work(ctx context.Context, p *sdk.Participant, fn func(ctx context.Context, b branch) error) error {
	if d.mysql {
		return sdk.Work(ctx, p, func(ctx context.Context, b *mysql.Branch) error { return fn(ctx, b) })
	}
	return p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error { return fn(ctx, b) })
}

// take subtracts n from a row's quantity column, refusing to go below
// zero, and returns what is left: ok is false if no row has the key or
// it has less than n.
func (d dialect) take(ctx context.Context, b branch, table, column, key string, keyValue any, n int64) (left int64, ok bool, err error) {
	res, err := b.ExecContext(ctx, d.sql(`UPDATE `+table+` SET `+column+` = `+column+` - $1 WHERE `+key+` = $2 AND `+column+` >= $3`), n, keyValue, n)
	if err != nil {
		return 0, false, err
	}
	if changed, err := res.RowsAffected(); err != nil || changed == 0 {
		return 0, false, err
	}
	rows, err := b.QueryContext(ctx, d.sql(`SELECT `+column+` FROM `+table+` WHERE `+key+` = $1`), keyValue)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return 0, false, errors.Join(errors.New("shop: the row just changed is gone"), rows.Err())
	}
	if err := rows.Scan(&left); err != nil {
		return 0, false, err
	}
	return left, true, rows.Close()
}

// exists reports whether table has a row with key = keyValue.
func (d dialect) exists(ctx context.Context, b branch, table, key string, keyValue any) (bool, error) {
	rows, err := b.QueryContext(ctx, d.sql(`SELECT 1 FROM `+table+` WHERE `+key+` = $1`), keyValue)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	found := rows.Next()
	return found, errors.Join(rows.Err(), rows.Close())
}

// register serves the API of service k on s; every handler writes through
// the participant's branch.
func register(s grpc.ServiceRegistrar, k Kind, p *sdk.Participant, d dialect) error {
	switch k {
	case Orders:
		shopv1.RegisterOrdersServer(s, &ordersServer{p: p, d: d})
	case Payment:
		shopv1.RegisterPaymentsServer(s, &paymentsServer{p: p, d: d})
	case Inventory:
		shopv1.RegisterInventoryServer(s, &inventoryServer{p: p, d: d})
	default:
		return fmt.Errorf("shop: no service %v", k)
	}
	return nil
}

type ordersServer struct {
	shopv1.UnimplementedOrdersServer
	p *sdk.Participant
	d dialect
}

func (s *ordersServer) Create(ctx context.Context, req *shopv1.CreateOrderRequest) (*shopv1.CreateOrderResponse, error) {
	if req.GetOrderId() == "" || req.GetCustomer() == "" || req.GetItem() == "" || req.GetQty() <= 0 || req.GetAmount() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: an order needs an id, a customer, an item, a positive quantity and a positive amount", ErrBadRequest))
	}
	err := s.d.work(ctx, s.p, func(ctx context.Context, b branch) error {
		_, err := b.ExecContext(ctx,
			s.d.sql(`INSERT INTO orders (order_id, customer, item, qty, amount) VALUES ($1, $2, $3, $4, $5)`),
			req.GetOrderId(), req.GetCustomer(), req.GetItem(), req.GetQty(), req.GetAmount())
		if s.d.duplicate(err) {
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
	d dialect
}

func (s *paymentsServer) Charge(ctx context.Context, req *shopv1.ChargeRequest) (*shopv1.ChargeResponse, error) {
	if req.GetOrderId() == "" || req.GetCustomer() == "" || req.GetAmount() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: a charge needs an order id, a customer and a positive amount", ErrBadRequest))
	}
	var balance int64
	err := s.d.work(ctx, s.p, func(ctx context.Context, b branch) error {
		left, ok, err := s.d.take(ctx, b, "accounts", "balance", "customer", req.GetCustomer(), req.GetAmount())
		if err != nil {
			return err
		}
		if !ok {
			exists, err := s.d.exists(ctx, b, "accounts", "customer", req.GetCustomer())
			if err != nil {
				return err
			}
			if !exists {
				return fmt.Errorf("%w: %s", ErrUnknownCustomer, req.GetCustomer())
			}
			return fmt.Errorf("%w: %s cannot pay %d", ErrInsufficientFunds, req.GetCustomer(), req.GetAmount())
		}
		balance = left
		_, err = b.ExecContext(ctx, s.d.sql(`INSERT INTO payments (order_id, customer, amount) VALUES ($1, $2, $3)`),
			req.GetOrderId(), req.GetCustomer(), req.GetAmount())
		if s.d.duplicate(err) {
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
	d dialect
}

func (s *inventoryServer) Reserve(ctx context.Context, req *shopv1.ReserveRequest) (*shopv1.ReserveResponse, error) {
	if req.GetOrderId() == "" || req.GetItem() == "" || req.GetQty() <= 0 {
		return nil, toStatus(fmt.Errorf("%w: a reservation needs an order id, an item and a positive quantity", ErrBadRequest))
	}
	var stock int64
	err := s.d.work(ctx, s.p, func(ctx context.Context, b branch) error {
		left, ok, err := s.d.take(ctx, b, "stock", "quantity", "item", req.GetItem(), req.GetQty())
		if err != nil {
			return err
		}
		if !ok {
			exists, err := s.d.exists(ctx, b, "stock", "item", req.GetItem())
			if err != nil {
				return err
			}
			if !exists {
				return fmt.Errorf("%w: %s", ErrUnknownItem, req.GetItem())
			}
			return fmt.Errorf("%w: %s has fewer than %d left", ErrOutOfStock, req.GetItem(), req.GetQty())
		}
		stock = left
		_, err = b.ExecContext(ctx, s.d.sql(`INSERT INTO reservations (order_id, item, qty) VALUES ($1, $2, $3)`),
			req.GetOrderId(), req.GetItem(), req.GetQty())
		if s.d.duplicate(err) {
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
