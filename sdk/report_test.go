package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/participant/remote"
	"github.com/txcoord/txcoord/sdk"
)

// bankDesc is a service whose methods take "<account> <delta>": Move
// moves money in the participant's database as its branch of the caller's
// transaction; MoveOwn does it in a transaction of its own, begun and
// committed through cl inside the handler.
func bankDesc(p *sdk.Participant, cl *client.Client) *grpc.ServiceDesc {
	method := func(name string, run func(ctx context.Context, acct, delta int) error) grpc.MethodDesc {
		return grpc.MethodDesc{
			MethodName: name,
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := &wrapperspb.StringValue{}
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, req any) (any, error) {
					var acct, delta int
					if _, err := fmt.Sscanf(req.(*wrapperspb.StringValue).GetValue(), "%d %d", &acct, &delta); err != nil {
						return nil, status.Error(codes.InvalidArgument, err.Error())
					}
					return &emptypb.Empty{}, run(ctx, acct, delta)
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/sdktest.Bank/" + name}, h)
			},
		}
	}
	return &grpc.ServiceDesc{
		ServiceName: "sdktest.Bank",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			method("Move", func(ctx context.Context, acct, delta int) error { return move(ctx, &service{p: p}, acct, delta) }),
			method("MoveOwn", func(ctx context.Context, acct, delta int) error {
				return cl.Run(ctx, func(ctx context.Context) error { return move(ctx, &service{p: p}, acct, delta) })
			}),
		},
	}
}

// banks starts PostgreSQL, a coordinator, and n of the services bank_a
// and bank_b, all closed when the test ends.
func banks(t *testing.T, n int) (*coord, *grpc.ClientConn, []*service) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	k := startCoord(t, t.TempDir(), "127.0.0.1:0")
	t.Cleanup(k.close)
	cc, err := grpc.NewClient(k.addr, insecureDial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	var svcs []*service
	for i, name := range []string{"bank_a", "bank_b"}[:n] {
		s := startService(t, name, dsns[i], cc)
		t.Cleanup(s.close)
		svcs = append(svcs, s)
	}
	return k, cc, svcs
}

// waitUnprepared waits until phase two has reached the services: a
// commit's answer may come before the last COMMIT PREPARED (committed,
// phase two pending).
func waitUnprepared(t *testing.T, svcs ...*service) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); prepared(t, svcs...) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d branches still prepared 10s after the commit", prepared(t, svcs...))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// callMove asks the service at conn to move delta on acct.
func callMove(ctx context.Context, conn *grpc.ClientConn, acct, delta int) error {
	return conn.Invoke(ctx, "/sdktest.Bank/Move", wrapperspb.String(fmt.Sprintf("%d %d", acct, delta)), &emptypb.Empty{})
}

// dialService is a client's connection to s, carrying transactions.
func dialService(t *testing.T, s *service, more ...grpc.UnaryClientInterceptor) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, insecureDial, grpc.WithChainUnaryInterceptor(append([]grpc.UnaryClientInterceptor{client.UnaryClientInterceptor()}, more...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func balance(t *testing.T, s *service, acct int) int {
	t.Helper()
	var n int
	if err := s.res.DB().QueryRow("SELECT balance FROM accounts WHERE id = $1", acct).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Services called through gRPC by the client package report their
// prepared branches in their replies, and Commit and Rollback carry them:
// no RegisterBranch call, and every transfer lands in both databases or
// in neither, with nothing left prepared and no recovery pass run.
func TestBranchesReportedInTheReplyCommitWithTheTransaction(t *testing.T) {
	k, cc, svcs := banks(t, 2)
	a, b := svcs[0], svcs[1]
	ca, cb := dialService(t, a), dialService(t, b)
	cl := client.New(cc)
	ctx := context.Background()

	transfer := func(n int, fail bool) error {
		return cl.Run(ctx, func(ctx context.Context) error {
			if err := callMove(ctx, ca, 1+n%accounts, -1); err != nil {
				return err
			}
			if err := callMove(ctx, cb, 1+n%accounts, 1); err != nil {
				return err
			}
			if fail {
				return errors.New("cancelled on purpose")
			}
			return nil
		})
	}
	// The first call may come before the service has announced itself:
	// it registers its branch, and learns the coordinator's instance.
	if err := transfer(0, false); err != nil {
		t.Fatal(err)
	}
	sa, sb := a.p.Stats(), b.p.Stats()
	committed := 1
	for n := 1; n <= 20; n++ {
		err := transfer(n, n%5 == 0)
		switch o := client.OutcomeOf(err); {
		case n%5 == 0 && o != client.Aborted, n%5 != 0 && o != client.Committed:
			t.Fatalf("transfer %d: %v (%v)", n, o, err)
		case o == client.Committed:
			committed++
		}
	}
	// A rollback's answer does not wait for the participants' ROLLBACK
	// PREPARED: the last ones may still be on their way.
	settled := func() bool {
		return prepared(t, a, b) == 0 && a.p.Stats().Aborted-sa.Aborted >= 4 && b.p.Stats().Aborted-sb.Aborted >= 4
	}
	for deadline := time.Now().Add(10 * time.Second); !settled() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		name        string
		before, now sdk.Stats
	}{{"bank_a", sa, a.p.Stats()}, {"bank_b", sb, b.p.Stats()}} {
		if c.now.Registered != c.before.Registered || c.now.Reported-c.before.Reported != 20 {
			t.Errorf("%s: %d registered and %d reported over 20 calls; want 0 and 20", c.name,
				c.now.Registered-c.before.Registered, c.now.Reported-c.before.Reported)
		}
		// A commit or rollback the coordinator sent again (its answer
		// late under load) is counted again.
		if c.now.Committed-c.before.Committed < 16 || c.now.Aborted-c.before.Aborted < 4 {
			t.Errorf("%s: %d committed and %d rolled back by the coordinator; want at least 16 and 4", c.name,
				c.now.Committed-c.before.Committed, c.now.Aborted-c.before.Aborted)
		}
	}
	// The rolled back transfers' branches were rolled back by Rollback,
	// which carried them: the coordinator runs no recovery pass here and
	// the services ask about nothing (InDoubtTimeout an hour).
	if n := prepared(t, a, b); n != 0 {
		t.Fatalf("%d branches left prepared 10s after the last rollback", n)
	}
	if got := total(t, a); got != accounts*initial-committed {
		t.Fatalf("bank_a holds %d, want %d after %d transfers", got, accounts*initial-committed, committed)
	}
	if got := total(t, b); got != accounts*initial+committed {
		t.Fatalf("bank_b holds %d, want %d after %d transfers", got, accounts*initial+committed, committed)
	}
	if st := k.c.Stats(); int(st.Committed) != committed {
		t.Fatalf("coordinator counted %d commits, clients %d", st.Committed, committed)
	}
}

// A client built WithoutReports leaves the services to register their
// branches, as clients that do not collect reports do.
func TestWithoutReportsServicesRegister(t *testing.T) {
	_, cc, svcs := banks(t, 1)
	a := svcs[0]
	ca := dialService(t, a)
	ctx := context.Background()
	for _, c := range []struct {
		cl                   *client.Client
		registered, reported uint64
	}{{client.New(cc, client.WithoutReports()), 1, 0}, {client.New(cc), 0, 1}} {
		before := a.p.Stats()
		if err := c.cl.Run(ctx, func(ctx context.Context) error { return callMove(ctx, ca, 1, -1) }); err != nil {
			t.Fatal(err)
		}
		now := a.p.Stats()
		if now.Registered-before.Registered != c.registered || now.Reported-before.Reported != c.reported {
			t.Fatalf("%d registered, %d reported; want %d and %d", now.Registered-before.Registered, now.Reported-before.Reported, c.registered, c.reported)
		}
	}
	if got := balance(t, a, 1); got != initial-2 {
		t.Fatalf("balance %d, want %d", got, initial-2)
	}
}

// loseReply drops a call's reply after the service answered it: the
// client hears UNAVAILABLE, and the branch the service reported in it
// never reaches the client.
func loseReply(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var kept []grpc.CallOption
	for _, o := range opts {
		if _, ok := o.(grpc.TrailerCallOption); !ok {
			kept = append(kept, o)
		}
	}
	if err := invoker(ctx, method, req, reply, cc, kept...); err != nil {
		return err
	}
	return status.Error(codes.Unavailable, "reply lost")
}

// A branch whose report was lost with its reply is not the transaction's,
// even if the client commits after the failed call: the client is told
// committed for what the coordinator holds (bank_b's branch), and the
// lost branch, prepared at bank_a, is rolled back when bank_a asks.
func TestBranchOfALostReplyIsNotCommitted(t *testing.T) {
	_, cc, svcs := banks(t, 2)
	a, b := svcs[0], svcs[1]
	cl := client.New(cc)
	ctx := context.Background()
	// Both services learn the coordinator's instance first.
	if err := cl.Run(ctx, func(ctx context.Context) error {
		if err := callMove(ctx, dialService(t, a), 1, 0); err != nil {
			return err
		}
		return callMove(ctx, dialService(t, b), 1, 0)
	}); err != nil {
		t.Fatal(err)
	}
	lossy, cb := dialService(t, a, loseReply), dialService(t, b)
	before := a.p.Stats()

	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := callMove(tx.Context(ctx), lossy, 2, -10); status.Code(err) != codes.Unavailable {
		t.Fatalf("the call whose reply is lost: %v", err)
	}
	if a.p.Stats().Reported-before.Reported != 1 || prepared(t, a) != 1 {
		t.Fatalf("want bank_a's branch prepared and reported, got %+v and %d prepared", a.p.Stats(), prepared(t, a))
	}
	if err := callMove(tx.Context(ctx), cb, 2, 10); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); client.OutcomeOf(err) != client.Committed {
		t.Fatalf("commit: %v", err)
	}
	waitUnprepared(t, b)
	if n, err := a.p.Settle(ctx); err != nil || n != 1 {
		t.Fatalf("bank_a settles its lost branch: %d %v", n, err)
	}
	if st := a.p.Stats(); st.Aborted+st.Resolved == 0 || prepared(t, a, b) != 0 {
		t.Fatalf("the lost branch was not rolled back: %+v, %d prepared", st, prepared(t, a, b))
	}
	if ga, gb := balance(t, a, 2), balance(t, b, 2); ga != initial || gb != initial+10 {
		t.Fatalf("bank_a holds %d (want %d: its branch was never the transaction's), bank_b %d (want %d: committed)", ga, initial, gb, initial+10)
	}
}

// A service that forwards its incoming metadata to another method (here,
// a client that sends the report request of another method) leaves the
// called service registering its branch: the report would be lost with a
// reply nobody reads.
func TestReportAskedOfAnotherMethodRegisters(t *testing.T) {
	_, cc, svcs := banks(t, 1)
	a := svcs[0]
	cl := client.New(cc)
	ctx := context.Background()
	if err := cl.Run(ctx, func(ctx context.Context) error { return callMove(ctx, dialService(t, a), 1, 0) }); err != nil {
		t.Fatal(err)
	}
	plain, err := grpc.NewClient(a.addr, insecureDial) // no interceptor: the metadata is written by hand
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := a.p.Stats()
	own, _ := remote.FromContext(tx.Context(ctx))
	fwd := metadata.AppendToOutgoingContext(ctx, remote.MetadataKey, own.GTRID(), remote.ReportMetadataKey, remote.FormatReport(own.Report, "/front.Shop/Order"))
	if err := plain.Invoke(fwd, "/sdktest.Bank/Move", wrapperspb.String("3 -5"), &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if st := a.p.Stats(); st.Registered-before.Registered != 1 || st.Reported != before.Reported {
		t.Fatalf("want the branch registered, not reported: %+v", st)
	}
	if err := tx.Commit(ctx); client.OutcomeOf(err) != client.Committed {
		t.Fatal(err)
	}
	waitUnprepared(t, a)
	if got := balance(t, a, 3); got != initial-5 {
		t.Fatalf("balance %d, want %d: the registered branch committed with the transaction", got, initial-5)
	}
}

// A handler answering a call in one transaction that runs a branch in a
// transaction of its own registers that branch with its own transaction:
// it is not reported in the reply of the caller's.
func TestHandlersOwnTransactionIsNotReportedToTheCaller(t *testing.T) {
	_, cc, svcs := banks(t, 1)
	a := svcs[0]
	ca := dialService(t, a)
	cl := client.New(cc)
	ctx := context.Background()
	if err := cl.Run(ctx, func(ctx context.Context) error { return callMove(ctx, ca, 1, 0) }); err != nil {
		t.Fatal(err)
	}
	before := a.p.Stats()
	err := cl.Run(ctx, func(ctx context.Context) error {
		return ca.Invoke(ctx, "/sdktest.Bank/MoveOwn", wrapperspb.String("4 -7"), &emptypb.Empty{})
	})
	if err != nil {
		t.Fatalf("the caller's transaction: %v", err)
	}
	if st := a.p.Stats(); st.Registered-before.Registered != 1 || st.Reported != before.Reported {
		t.Fatalf("want the handler's own branch registered: %+v", st)
	}
	waitUnprepared(t, a)
	if got := balance(t, a, 4); got != initial-7 {
		t.Fatalf("balance %d (want %d): the handler's own transaction did not commit its branch", got, initial-7)
	}
}
