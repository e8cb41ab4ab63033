package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a coordinator served over gRPC on loopback.
type env struct {
	c    *coordinator.Coordinator
	srv  *server.Server
	log  wal.Log
	addr string
	conn *grpc.ClientConn
	api  txcoordv1.CoordinatorClient
}

func start(t *testing.T, log wal.Log, resources []participant.Resource, cfg server.Config) *env {
	t.Helper()
	ctx := context.Background()
	if log == nil {
		log = wal.NewMem()
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: "c1", Log: log, Resources: resources, RecoveryInterval: -1,
		InDoubtTimeout: time.Second, CallTimeout: 5 * time.Second, RetryBase: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Coordinator = c
	cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	runCtx, stop := context.WithCancel(ctx)
	swept := make(chan struct{})
	go func() { defer close(swept); srv.Run(runCtx) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
		stop()
		<-swept
		c.Close()
		srv.Close()
		for _, r := range resources {
			if cl, ok := r.(interface{ Close() error }); ok {
				cl.Close()
			}
		}
	})
	return &env{c: c, srv: srv, log: log, addr: lis.Addr().String(), conn: conn, api: txcoordv1.NewCoordinatorClient(conn)}
}

func wantCode(t *testing.T, err error, code codes.Code, msgPart string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("want %v, got %v (%v)", code, st.Code(), err)
	}
	if msgPart != "" && !strings.Contains(st.Message(), msgPart) {
		t.Fatalf("message %q does not say %q", st.Message(), msgPart)
	}
}

func begin(t *testing.T, e *env) *txcoordv1.BeginResponse {
	t.Helper()
	b, err := e.api.Begin(context.Background(), &txcoordv1.BeginRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGRPCUnknownTransaction(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	id, _ := ids.NewTxID()
	_, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: id.String()})
	wantCode(t, err, codes.NotFound, "unknown transaction")
	_, err = e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String()})
	wantCode(t, err, codes.NotFound, "unknown transaction")
	gid := "txc.c1." + id.String() + ".pay-1"
	_, err = e.api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: id.String(), Gid: gid, Participant: "pay", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.NotFound, "unknown transaction")
	// Not live, no decision: a participant asking is told to roll back.
	out, err := e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Gid: gid})
	if err != nil || out.GetState() != txcoordv1.TxState_TX_STATE_ABORTED {
		t.Fatalf("outcome of an unknown transaction: %v %v; want aborted (presumed abort)", out, err)
	}
	// Rolling back an unknown transaction is a no-op that reports aborted.
	rb, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: id.String()})
	if err != nil || rb.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		t.Fatalf("rollback of an unknown transaction: %v %v", rb, err)
	}
}

func TestGRPCMalformedInput(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	b := begin(t, e)
	other, _ := ids.NewTxID()
	cases := []struct {
		name string
		req  *txcoordv1.RegisterBranchRequest
		msg  string
	}{
		{"empty txid", &txcoordv1.RegisterBranchRequest{Gid: b.Gtrid + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}, "txid is required"},
		{"txid not a uuid", &txcoordv1.RegisterBranchRequest{Txid: "tx-1", Gid: b.Gtrid + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}, "malformed txid"},
		{"gid with a quote", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".x'; DROP TABLE t; --", Participant: "pay", Address: "127.0.0.1:1"}, "malformed gid"},
		{"gid with too few parts", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Txid, Participant: "pay", Address: "127.0.0.1:1"}, "malformed gid"},
		{"gid of another transaction", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: "txc.c1." + other.String() + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}, "belongs to transaction"},
		{"gid of another coordinator", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: "txc.c2." + b.Txid + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}, "not issued by this coordinator"},
		{"participant name", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".pay-1", Participant: "pay ment", Address: "127.0.0.1:1"}, "participant name"},
		{"address", &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".pay-1", Participant: "pay", Address: "no port"}, "host:port"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.api.RegisterBranch(ctx, c.req)
			wantCode(t, err, codes.InvalidArgument, c.msg)
		})
	}
	_, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{Timeout: durationpb.New(-time.Second)})
	wantCode(t, err, codes.InvalidArgument, "timeout")
	_, err = e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Gid: "txc.c1.zz.b"})
	wantCode(t, err, codes.InvalidArgument, "malformed gid")
	_, err = e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Gid: "txc.other." + b.Txid + ".b"})
	wantCode(t, err, codes.FailedPrecondition, "ask that one")
	_, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: b.Txid})
	wantCode(t, err, codes.InvalidArgument, "decision must be")
	_, err = e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{States: []txcoordv1.TxState{42}})
	wantCode(t, err, codes.InvalidArgument, "unknown state")
	// Nothing above changed the transaction: it is still active, with no
	// branch.
	tx, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: b.Txid})
	if err != nil || tx.GetState() != txcoordv1.TxState_TX_STATE_ACTIVE || len(tx.GetBranches()) != 0 {
		t.Fatalf("after refused requests: %v %v", tx, err)
	}
}

func TestGRPCBranchRegisteredTwice(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	b := begin(t, e)
	req := &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}
	if _, err := e.api.RegisterBranch(ctx, req); err != nil {
		t.Fatal(err)
	}
	// The same registration again (a retry after a lost reply) succeeds
	// and changes nothing: answering an error would make the participant
	// roll back a branch the coordinator holds (I6).
	if _, err := e.api.RegisterBranch(ctx, req); err != nil {
		t.Fatalf("the same registration delivered twice: %v", err)
	}
	// The same gid from another participant is refused.
	other := &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: req.Gid, Participant: "inv", Address: "127.0.0.1:2"}
	_, err := e.api.RegisterBranch(ctx, other)
	wantCode(t, err, codes.AlreadyExists, "already registered")
	tx, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: b.Txid})
	if err != nil || len(tx.GetBranches()) != 1 {
		t.Fatalf("want one branch, got %v %v", tx, err)
	}
}

func TestGRPCCommitAfterRollback(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	b := begin(t, e)
	rb, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid, Reason: "test"})
	if err != nil || rb.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		t.Fatalf("rollback: %v %v", rb, err)
	}
	_, err = e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: b.Txid})
	wantCode(t, err, codes.FailedPrecondition, "rolled back")
	_, err = e.api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.FailedPrecondition, "cannot join")
	// A second rollback is idempotent.
	if rb, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid}); err != nil || rb.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		t.Fatalf("second rollback: %v %v", rb, err)
	}
}

func TestGRPCTimeoutRollsBack(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	b, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{Timeout: durationpb.New(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		tx, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: b.Txid})
		if err != nil {
			t.Fatal(err)
		}
		if tx.GetState() == txcoordv1.TxState_TX_STATE_ABORTED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %v 5s after a 300ms timeout", tx.GetState())
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: b.Txid})
	wantCode(t, err, codes.FailedPrecondition, "timeout")
}
