package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/sdk"
)

// Transfers between a service on PostgreSQL and a service on MariaDB
// through a txcoord server: every transfer commits in both or in neither,
// and the MariaDB service records the coordinator it serves as the
// PostgreSQL one does.
func TestTransfersBetweenAPostgreSQLAndAMariaDBService(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and MariaDB")
	}
	_, dsns := setupDBs(t)
	ctx := context.Background()
	my := mariadbtest.StartT(t, mariadbtest.Options{NoFsync: true})
	if err := my.CreateDB(ctx, "bank_b"); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for i := 1; i <= accounts; i++ {
		rows = append(rows, fmt.Sprintf("(%d, %d)", i, initial))
	}
	if err := my.Exec(ctx, "bank_b", "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0)) ENGINE=InnoDB",
		"INSERT INTO accounts VALUES "+strings.Join(rows, ", ")); err != nil {
		t.Fatal(err)
	}
	k := startCoord(t, t.TempDir(), "127.0.0.1:0")
	defer k.close()
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a := startService(t, "bank_a", dsns[0], cc)
	defer a.close()

	res, err := mysql.Open(ctx, "bank_b", my.URL("bank_b"), mysql.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := sdk.New(sdk.Config{Name: "bank_b", Address: lis.Addr().String(), Coordinator: cc, Resource: res,
		InDoubtTimeout: time.Hour, CheckInterval: time.Hour, CallTimeout: 3 * time.Second, InsecureAnyCaller: true})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(sdk.UnaryServerInterceptor()))
	p.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(rctx) }()
	defer func() { stop(); <-done }()

	moveB := func(ctx context.Context, acct, delta int) error {
		return sdk.Work(ctx, p, func(ctx context.Context, b *mysql.Branch) error {
			_, err := b.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", delta, acct)
			return err
		})
	}
	cl := client.New(cc)
	outcomes := map[client.Outcome]int{}
	for n := range 40 {
		amount := 10 + n%7*10
		err := cl.Run(ctx, func(ctx context.Context) error {
			if err := move(ctx, a, 1+n%accounts, -amount); err != nil {
				return err
			}
			if err := moveB(ctx, 1+(n*3)%accounts, amount); err != nil {
				return err
			}
			if n%5 == 0 {
				return errors.New("cancelled on purpose")
			}
			return nil
		})
		outcomes[client.OutcomeOf(err)]++
		if client.OutcomeOf(err) == client.Unknown {
			t.Fatalf("transfer %d: outcome unknown: %v", n, err)
		}
	}
	if outcomes[client.Committed] == 0 || outcomes[client.Aborted] < 8 {
		t.Fatalf("want commits and the 8 aborts on purpose, got %v", outcomes)
	}
	var sumB, served int
	if err := res.DB().QueryRowContext(ctx, "SELECT SUM(balance) FROM accounts").Scan(&sumB); err != nil {
		t.Fatal(err)
	}
	if got := total(t, a) + sumB; got != 2*accounts*initial {
		t.Fatalf("total %d, want %d", got, 2*accounts*initial)
	}
	if n := prepared(t, a); n != 0 {
		t.Fatalf("%d branches left prepared at bank_a", n)
	}
	if list, err := res.Prepared(ctx); err != nil || len(list) != 0 {
		t.Fatalf("left prepared at bank_b: %v %v", list, err)
	}
	if err := res.DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM "+sdk.ServedTable+" WHERE participant = 'bank_b'").Scan(&served); err != nil || served != 1 {
		t.Fatalf("bank_b's record of the coordinator it serves: %d rows, %v", served, err)
	}
	// A handler asking for the wrong kind of branch is told so, and the
	// branch it began is rolled back.
	err = cl.Run(ctx, func(ctx context.Context) error {
		return p.Branch(ctx, func(ctx context.Context, b *postgres.Branch) error { return nil })
	})
	if err == nil || !strings.Contains(err.Error(), "*mysql.Branch") {
		t.Fatalf("a PostgreSQL handler on a MariaDB participant: %v", err)
	}
}
