package server_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/authz"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
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

func start(t testing.TB, log wal.Log, resources []participant.Resource, cfg server.Config) *env {
	t.Helper()
	return startWith(t, log, resources, cfg, nil)
}

// startWith is start with the coordinator's configuration changed by mod.
func startWith(t testing.TB, log wal.Log, resources []participant.Resource, cfg server.Config, mod func(*coordinator.Config)) *env {
	t.Helper()
	ctx := context.Background()
	if log == nil {
		log = wal.NewMem()
	}
	ccfg := coordinator.Config{ID: "c1", Log: log, Resources: resources, RecoveryInterval: -1,
		InDoubtTimeout: time.Second, CallTimeout: 5 * time.Second, RetryBase: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond}
	if mod != nil {
		mod(&ccfg)
	}
	c, err := coordinator.New(ctx, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Coordinator = c
	cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if cfg.Authorizer == nil {
		cfg.Authorizer = authz.Insecure()
	}
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
	// The same gid from another participant is refused: the branch is
	// not named for it.
	other := &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: req.Gid, Participant: "inv", Address: "127.0.0.1:2"}
	_, err := e.api.RegisterBranch(ctx, other)
	wantCode(t, err, codes.PermissionDenied, "not named for participant inv")
	// The same gid again from its participant, at another address:
	// registered already.
	again := &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: req.Gid, Participant: "pay", Address: "127.0.0.1:2"}
	_, err = e.api.RegisterBranch(ctx, again)
	if err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatalf("the same branch from its participant at a new address: %v", err)
	}
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

// holderEnv is a served coordinator whose decision holder is the fake
// resource h, beside the fake resource a. Rows of finished decisions are
// kept (the forgetter waits an hour) so that they can be read.
type holderEnv struct {
	*env
	h *fake.Holder
	a *fake.Resource
}

func startHolder(t *testing.T) *holderEnv {
	t.Helper()
	h, a := fake.NewHolder("h"), fake.New("a")
	e := startWith(t, nil, []participant.Resource{h, a}, server.Config{}, func(c *coordinator.Config) {
		c.Holder, c.ForgetInterval = "h", time.Hour
	})
	return &holderEnv{env: e, h: h, a: a}
}

// holderGID is the gid of branch n of transaction id when holder keeps its
// decision.
func holderGID(t *testing.T, id ids.TxID, n int, holder string) ids.GID {
	t.Helper()
	b, err := ids.HolderBranch(n, holder)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID(ids.DefaultPrefix, "c1", id, b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func listed(t *testing.T, resp *txcoordv1.ListTransactionsResponse, id string) *txcoordv1.Transaction {
	t.Helper()
	for _, tx := range resp.GetTransactions() {
		if tx.GetTxid() == id {
			return tx
		}
	}
	t.Fatalf("%s is not listed: %v", id, resp)
	return nil
}

// A holder transaction says where its decision lives while live, and
// once its decision is noted in the log.
func TestHolderTransactionNamesItsDecisionHolder(t *testing.T) {
	e := startHolder(t)
	ctx := context.Background()
	tx, err := e.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []participant.Resource{e.h, e.a} {
		if _, err := tx.Enlist(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	id := tx.ID().String()
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id})
	if err != nil || !got.GetLive() || got.GetDecisionHolder() != "h" || got.GetHeldDecision() != "none" {
		t.Fatalf("live holder transaction: %v %v", got, err)
	}
	list, err := e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if l := listed(t, list, id); l.GetDecisionHolder() != "h" {
		t.Fatalf("listed without its holder: %v", l)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := e.log.Lookup(tx.ID()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the holder's decision was never noted in the log")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err = e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetDecisionHolder() != "h" || got.GetHeldDecision() != "commit" || got.GetDecision().GetHolder() != "h" || got.GetDecision().GetDecision() != txcoordv1.Decision_DECISION_COMMIT {
		t.Fatalf("committed holder transaction: %v", got)
	}
	if len(got.GetRecords()) != 1 || got.GetRecords()[0].GetHolder() != "h" {
		t.Fatalf("log records: %v", got.GetRecords())
	}
	// Once the row is forgotten, the holder says so and the log's note
	// still tells where the decision lived.
	if err := e.h.Forget(ctx, []ids.TxID{tx.ID()}); err != nil {
		t.Fatal(err)
	}
	got, err = e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id})
	if err != nil || got.GetDecisionHolder() != "h" || got.GetHeldDecision() != "none" {
		t.Fatalf("after the row is forgotten: %v %v", got, err)
	}
}

// A transaction neither live nor logged, with no prepared branch, is
// found by the row its holder keeps: a commit row reads as committing, an
// abort row as aborted.
func TestGetTransactionKnownOnlyByAHolderRow(t *testing.T) {
	e := startHolder(t)
	ctx := context.Background()
	for _, c := range []struct {
		outcome participant.Outcome
		state   txcoordv1.TxState
	}{
		{participant.OutcomeCommit, txcoordv1.TxState_TX_STATE_COMMITTING},
		{participant.OutcomeAbort, txcoordv1.TxState_TX_STATE_ABORTED},
	} {
		id, _ := ids.NewTxID()
		g := holderGID(t, id, 1, "h")
		d := participant.Decision{TxID: id, Owner: "txc.c1", Outcome: c.outcome, Epoch: 1, Time: time.Now()}
		if c.outcome == participant.OutcomeCommit {
			d.Branches = []participant.BranchRef{{Resource: "a", GID: g}}
		}
		e.h.PutRow(d)
		for _, probe := range []bool{false, true} {
			got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String(), Probe: probe})
			if err != nil {
				t.Fatalf("%v row, probe %v: %v", c.outcome, probe, err)
			}
			if got.GetState() != c.state || got.GetDecisionHolder() != "h" || got.GetHeldDecision() != c.outcome.String() || got.GetLive() || got.GetDecision() != nil {
				t.Fatalf("%v row, probe %v: %v", c.outcome, probe, got)
			}
			if c.outcome == participant.OutcomeCommit && (len(got.GetBranches()) != 1 || got.GetBranches()[0].GetGid() != g.String()) {
				t.Fatalf("branches named by the row: %v", got.GetBranches())
			}
		}
	}
	id, _ := ids.NewTxID()
	_, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String(), Probe: true})
	wantCode(t, err, codes.NotFound, "no decision logged or held")
}

// I3 at the holder: a resolution that contradicts the holder's row is
// refused as one contradicting the log is; one that agrees is carried
// out, nothing heuristic is logged, and the response names the holder.
func TestResolveRefusesToContradictAHolderRow(t *testing.T) {
	e := startHolder(t)
	ctx := context.Background()
	id, _ := ids.NewTxID()
	g := holderGID(t, id, 1, "h")
	e.a.AddPrepared(g.String())
	e.h.PutRow(participant.Decision{TxID: id, Owner: "txc.c1", Outcome: participant.OutcomeCommit, Epoch: 1, Time: time.Now(),
		Branches: []participant.BranchRef{{Resource: "a", GID: g}}})

	list, err := e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{Scan: true})
	if err != nil {
		t.Fatal(err)
	}
	if l := listed(t, list, id.String()); l.GetState() != txcoordv1.TxState_TX_STATE_IN_DOUBT || l.GetDecisionHolder() != "h" || l.GetHeldDecision() != "commit" {
		t.Fatalf("in doubt: %v", l)
	}
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String(), Probe: true})
	if err != nil || got.GetState() != txcoordv1.TxState_TX_STATE_IN_DOUBT || got.GetDecisionHolder() != "h" || got.GetHeldDecision() != "commit" {
		t.Fatalf("show in doubt: %v %v", got, err)
	}

	_, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "test"})
	wantCode(t, err, codes.FailedPrecondition, "decision holder h keeps commit")
	wantCode(t, err, codes.FailedPrecondition, "never contradicted")
	if !e.a.IsPrepared(g.String()) || e.a.IsRolledBack(g.String()) {
		t.Fatal("a refused resolution touched the branch")
	}
	resp, err := e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "test", Operator: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecisionHolder() != "h" || resp.GetHeuristic() || !strings.Contains(resp.GetAction(), "committed as decision holder h's row says") {
		t.Fatalf("resolve that agrees with the row: %v", resp)
	}
	if !e.a.IsCommitted(g.String()) {
		t.Fatal("the branch was not committed")
	}
	if d, err := e.log.Lookup(id); err != nil || d.Heuristic || d.Holder != "h" {
		t.Fatalf("logged %+v %v: want the holder's note, not a heuristic decision", d, err)
	}
	if resp.GetTransaction().GetDecision().GetHolder() != "h" || resp.GetTransaction().GetDecisionHolder() != "h" {
		t.Fatalf("the resolved transaction: %v", resp.GetTransaction())
	}
	// The log now holds the note: contradicting it is refused and names
	// the holder too.
	_, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "test"})
	wantCode(t, err, codes.FailedPrecondition, "decision holder h")

	// No row: the holder's fence records an abort, so a commit is refused
	// and an abort carried out.
	id2, _ := ids.NewTxID()
	g2 := holderGID(t, id2, 1, "h")
	e.a.AddPrepared(g2.String())
	_, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id2.String(), Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "test"})
	wantCode(t, err, codes.FailedPrecondition, "decision holder h keeps abort")
	if !e.a.IsPrepared(g2.String()) {
		t.Fatal("a refused resolution touched the branch")
	}
	resp, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id2.String(), Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "test"})
	if err != nil || resp.GetDecisionHolder() != "h" || resp.GetHeuristic() || !strings.Contains(resp.GetAction(), "rolled back as decision holder h's row says") {
		t.Fatalf("abort that agrees with the fence: %v %v", resp, err)
	}
	if !e.a.IsRolledBack(g2.String()) {
		t.Fatal("the branch was not rolled back")
	}
}

// Recover reports what decision holders' rows decided.
func TestRecoverCountsHolderDecisions(t *testing.T) {
	e := startHolder(t)
	ctx := context.Background()
	id, _ := ids.NewTxID()
	g := holderGID(t, id, 1, "h")
	e.a.AddPrepared(g.String())
	e.h.PutRow(participant.Decision{TxID: id, Owner: "txc.c1", Outcome: participant.OutcomeCommit, Time: time.Now().Add(-time.Hour),
		Branches: []participant.BranchRef{{Resource: "a", GID: g}}})
	rep, err := e.api.Recover(ctx, &txcoordv1.RecoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GetHeld() != 1 || rep.GetForgotten() != 1 || rep.GetCommitted() != 1 || len(rep.GetErrors()) != 0 {
		t.Fatalf("recover: %v", rep)
	}
	if !e.a.IsCommitted(g.String()) || e.h.Rows() != 0 {
		t.Fatal("the held commit was not driven to the end")
	}
}

// F7: while the start-up recovery pass runs, the server already answers:
// transaction calls get UNAVAILABLE, outcome questions are answered.
func TestTransactionCallsWaitForTheStartUpPass(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	e.srv.Starting()
	_, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{})
	wantCode(t, err, codes.Unavailable, "start-up recovery pass")
	id, _ := ids.NewTxID()
	if _, err := e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: id.String()}); err != nil {
		t.Fatalf("GetOutcome while starting: %v", err)
	}
	e.srv.Ready()
	if _, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{}); err != nil {
		t.Fatalf("Begin once ready: %v", err)
	}
}

// F6: a call naming another coordinator's transaction (two coordinators
// behind one address, a client that asks the wrong one) gets
// PERMISSION_DENIED, never an outcome: this coordinator would have said
// "aborted" for a transaction it never saw.
func TestCallsForAnotherCoordinatorsTransactionGetNoOutcome(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	id, _ := ids.NewTxID()
	other := "txc.other-1." + id.String()
	_, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: id.String(), Gtrid: other})
	wantCode(t, err, codes.PermissionDenied, "coordinator txc.other-1")
	_, err = e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: id.String(), Gtrid: other})
	wantCode(t, err, codes.PermissionDenied, "coordinator txc.other-1")
	_, err = e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: id.String(), Gtrid: other})
	wantCode(t, err, codes.PermissionDenied, "coordinator txc.other-1")
	// Its own gtrid is accepted.
	if _, err := e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: id.String(), Gtrid: "txc.c1." + id.String()}); err != nil {
		t.Fatal(err)
	}
}

// Finished transactions are remembered for Retain, and never more than
// MaxRetained of them: the oldest go first, at once, so that memory stays
// bounded at any rate of transactions. A live one is never forgotten.
func TestFinishedTransactionsAreForgottenPastRetainOrTheCap(t *testing.T) {
	e := start(t, nil, nil, server.Config{Retain: 1500 * time.Millisecond, MaxRetained: 3})
	ctx := context.Background()
	live := begin(t, e)
	var ended []string
	for range 5 {
		b := begin(t, e)
		if _, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid}); err != nil {
			t.Fatal(err)
		}
		ended = append(ended, b.Txid)
	}
	if n := e.srv.Live(); n != 1+3 {
		t.Fatalf("tracking %d transactions, want the live one and the 3 latest finished", n)
	}
	for i, id := range ended {
		_, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id})
		if remembered := err == nil; remembered != (i >= 2) {
			t.Fatalf("finished transaction %d of 5: GetTransaction %v", i+1, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.srv.Live() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("tracking %d transactions past Retain, want the live one", e.srv.Live())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: live.Txid}); err != nil {
		t.Fatalf("the live transaction: %v", err)
	}
}

// Begin and Rollback through the server while it remembers `retained`
// finished transactions: the cost per transaction must not grow with
// them (the bookkeeping is O(live)).
func BenchmarkBeginRollbackWithRetained(b *testing.B) {
	for _, retained := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("retained=%d", retained), func(b *testing.B) {
			e := start(b, nil, nil, server.Config{MaxRetained: retained + 1})
			ctx := context.Background()
			for range retained {
				r, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: r.Txid}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				r, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: r.Txid}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A remembered transaction is settled (its coordinator.Tx dropped, its
// status and outcome kept) once the coordinator is done with it: it is
// still described, and a repeated Commit or Rollback is still answered.
func TestSettledTransactionsAreStillAnswered(t *testing.T) {
	e := start(t, nil, nil, server.Config{SettleAfter: 10 * time.Millisecond})
	ctx := context.Background()
	b := begin(t, e)
	if r, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: b.Txid}); err != nil || r.GetOutcome() != txcoordv1.Outcome_OUTCOME_COMMITTED {
		t.Fatalf("Commit: %v %v", r, err)
	}
	time.Sleep(2500 * time.Millisecond) // two ticks of Run
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: b.Txid})
	if err != nil || got.GetLive() || got.GetTxid() != b.Txid {
		t.Fatalf("GetTransaction of a settled transaction: %v %v", got, err)
	}
	if r, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: b.Txid}); err != nil || r.GetOutcome() != txcoordv1.Outcome_OUTCOME_COMMITTED {
		t.Fatalf("a repeated Commit of a settled transaction: %v %v", r, err)
	}
	_, err = e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid})
	wantCode(t, err, codes.FailedPrecondition, "committed")
	_, err = e.api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".p1-1", Participant: "p1", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.FailedPrecondition, "")
	if !e.srv.Settled(b.Txid) {
		t.Fatal("the transaction was not settled")
	}
}

// A transaction rolled back as asked reads as aborted once settled too:
// a repeated Rollback answers aborted, a Commit is refused.
func TestSettledRollbackIsStillAborted(t *testing.T) {
	e := start(t, nil, nil, server.Config{SettleAfter: 10 * time.Millisecond})
	ctx := context.Background()
	b := begin(t, e)
	if r, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid}); err != nil || r.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		t.Fatalf("Rollback: %v %v", r, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !e.srv.Settled(b.Txid) {
		if time.Now().After(deadline) {
			t.Fatal("not settled")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: b.Txid}); err != nil || r.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED {
		t.Fatalf("a repeated Rollback of a settled rollback: %v %v", r, err)
	}
	_, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: b.Txid})
	wantCode(t, err, codes.FailedPrecondition, "rolled back")
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: b.Txid})
	if err != nil || got.GetState() != txcoordv1.TxState_TX_STATE_ABORTED {
		t.Fatalf("GetTransaction: %v %v", got, err)
	}
}
