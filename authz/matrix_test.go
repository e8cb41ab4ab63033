package authz_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/testpki"
	"github.com/txcoord/txcoord/pki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

const td = "example.org"

// The callers of the matrix.
const (
	anonymous    = "anonymous"
	clientA      = "client A"
	clientB      = "client B"
	partX        = "participant X"
	partY        = "participant Y"
	coord        = "coordinator"
	observer     = "observer"
	operator     = "operator"
	admin        = "admin"
	otherCA      = "certificate from another CA"
	expired      = "expired certificate"
	unknownTok   = "unknown token"
	plaintextTok = "token over plaintext"
)

var callers = []string{anonymous, clientA, clientB, partX, partY, coord, observer, operator, admin, otherCA, expired, unknownTok, plaintextTok}

// ids of the policy.
var spiffe = map[string]string{
	clientA: "spiffe://example.org/svc/order-a", clientB: "spiffe://example.org/svc/order-b",
	partX: "spiffe://example.org/svc/payment", partY: "spiffe://example.org/svc/inventory",
	coord: "spiffe://example.org/txcoord/c1", observer: "spiffe://example.org/ops/watcher",
	operator: "spiffe://example.org/ops/alice", admin: "spiffe://example.org/ops/bob",
}

const operatorToken = "alice-token-0123456789abcdef"

func policy() string {
	return fmt.Sprintf(`trust_domain: example.org
identities:
  - id: %s
    roles: [client]
  - id: %s
    roles: [client]
  - id: %s
    roles: [participant]
    participant: payment
  - id: %s
    roles: [participant]
    participant: inventory
  - id: %s
    roles: [coordinator]
  - id: %s
    roles: [observer]
  - id: %s
    roles: [operator]
    token_sha256: [%s]
  - id: %s
    roles: [admin]
`, spiffe[clientA], spiffe[clientB], spiffe[partX], spiffe[partY], spiffe[coord], spiffe[observer], spiffe[operator], authz.TokenDigest(operatorToken), spiffe[admin])
}

// world is a coordinator served over TLS (and plaintext) under the policy,
// a participant service (the Participant API behind authz.ForCoordinator),
// and a connection per caller to each.
type world struct {
	t            *testing.T
	a            *authz.Authorizer
	c            *coordinator.Coordinator
	policyFile   string
	coordConn    map[string]*grpc.ClientConn
	partConn     map[string]*grpc.ClientConn
	participants *stubParticipant
}

type stubParticipant struct {
	txcoordv1.UnimplementedParticipantServer
}

func (stubParticipant) Prepare(context.Context, *txcoordv1.PrepareRequest) (*txcoordv1.PrepareResponse, error) {
	return &txcoordv1.PrepareResponse{Vote: txcoordv1.Vote_VOTE_YES}, nil
}
func (stubParticipant) Commit(context.Context, *txcoordv1.CommitBranchRequest) (*txcoordv1.CommitBranchResponse, error) {
	return &txcoordv1.CommitBranchResponse{}, nil
}
func (stubParticipant) Rollback(context.Context, *txcoordv1.RollbackBranchRequest) (*txcoordv1.RollbackBranchResponse, error) {
	return &txcoordv1.RollbackBranchResponse{}, nil
}
func (stubParticipant) ListPrepared(context.Context, *txcoordv1.ListPreparedRequest) (*txcoordv1.ListPreparedResponse, error) {
	return &txcoordv1.ListPreparedResponse{}, nil
}

func newWorld(t *testing.T, mods ...func(*server.Config)) *world {
	t.Helper()
	ca := testpki.New(t)
	other := testpki.New(t)
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(policy()), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := authz.New(authz.Config{PolicyFile: polFile})
	if err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(context.Background(), coordinator.Config{ID: "c1", Log: wal.NewMem(), RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	scfg := server.Config{Coordinator: c, Authorizer: a,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}}
	for _, m := range mods {
		m(&scfg)
	}
	srv, err := server.New(scfg)
	if err != nil {
		t.Fatal(err)
	}
	sc, sk := ca.Server("server")
	r, err := pki.NewReloader(pki.Files{Cert: sc, Key: sk, CA: ca.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(creds credentials.TransportCredentials, register func(*grpc.Server)) string {
		opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(a.UnaryInterceptor()), grpc.ChainStreamInterceptor(a.StreamInterceptor())}
		if creds != nil {
			opts = append(opts, grpc.Creds(creds))
		}
		gs := grpc.NewServer(opts...)
		register(gs)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		return lis.Addr().String()
	}
	withHealth := func(gs *grpc.Server) {
		srv.Register(gs)
		healthpb.RegisterHealthServer(gs, health.NewServer())
	}
	tlsCreds := credentials.NewTLS(r.ServerConfig(tls.VerifyClientCertIfGiven))
	coordAddr := serve(tlsCreds, withHealth)
	plainAddr := serve(nil, withHealth)
	pa, err := authz.ForCoordinator(spiffe[coord])
	if err != nil {
		t.Fatal(err)
	}
	stub := &stubParticipant{}
	partAddr := serve(tlsCreds, func(gs *grpc.Server) { pa.Register(gs, &txcoordv1.Participant_ServiceDesc, stub) })
	t.Cleanup(func() { c.Close(); srv.Close() })

	w := &world{t: t, a: a, c: c, policyFile: polFile, coordConn: map[string]*grpc.ClientConn{}, partConn: map[string]*grpc.ClientConn{}, participants: stub}
	for _, who := range callers {
		tc := ca.ClientConfig("", "")
		addr, paddr := coordAddr, partAddr
		switch who {
		case anonymous, unknownTok:
		case plaintextTok:
			addr, paddr = plainAddr, ""
		case otherCA:
			cf, kf := other.Identity("other", spiffe[operator], time.Time{})
			tc = ca.ClientConfig(cf, kf)
		case expired:
			cf, kf := ca.Identity("expired", spiffe[operator], time.Now().Add(-time.Hour))
			tc = ca.ClientConfig(cf, kf)
		default:
			cf, kf := ca.Identity(strings.ReplaceAll(who, " ", "-"), spiffe[who], time.Time{})
			tc = ca.ClientConfig(cf, kf)
		}
		creds := credentials.NewTLS(tc)
		if who == plaintextTok {
			creds = insecure.NewCredentials()
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		w.coordConn[who] = cc
		if paddr != "" {
			pc, err := grpc.NewClient(paddr, grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			w.partConn[who] = pc
		}
	}
	return w
}

func ctxFor(who string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	switch who {
	case unknownTok:
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer not-a-known-token-at-all")
	case plaintextTok:
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+operatorToken)
	}
	return ctx, cancel
}

func (w *world) api(who string) txcoordv1.CoordinatorClient {
	return txcoordv1.NewCoordinatorClient(w.coordConn[who])
}

// begin starts a transaction of client A and registers payment's branch
// in it; it returns the txid and the branch's gid.
func (w *world) begin() (string, string) {
	w.t.Helper()
	ctx, cancel := ctxFor(clientA)
	defer cancel()
	b, err := w.api(clientA).Begin(ctx, &txcoordv1.BeginRequest{})
	if err != nil {
		w.t.Fatal(err)
	}
	gid := b.GetGtrid() + ".payment-1"
	pctx, pcancel := ctxFor(partX)
	defer pcancel()
	if _, err := w.api(partX).RegisterBranch(pctx, &txcoordv1.RegisterBranchRequest{Txid: b.GetTxid(), Gid: gid, Participant: "payment", Address: "127.0.0.1:1"}); err != nil {
		w.t.Fatal(err)
	}
	return b.GetTxid(), gid
}

// ok: the call passed authorization (its handler may still refuse it for
// other reasons).
const ok = codes.OK

// Expected answers by method and caller: ok, or the exact refusal.
func expectations() map[string]map[string]codes.Code {
	tlsFail := map[string]codes.Code{otherCA: codes.Unavailable, expired: codes.Unavailable, unknownTok: codes.Unauthenticated, plaintextTok: codes.Unauthenticated, anonymous: codes.Unauthenticated}
	row := func(allowed ...string) map[string]codes.Code {
		m := map[string]codes.Code{}
		for _, who := range callers {
			m[who] = codes.PermissionDenied
		}
		for k, v := range tlsFail {
			m[k] = v
		}
		for _, who := range allowed {
			m[who] = ok
		}
		return m
	}
	public := row(anonymous, clientA, clientB, partX, partY, coord, observer, operator, admin, unknownTok, plaintextTok)
	coordOnly := row(coord)
	coordOnly[plaintextTok] = codes.Unavailable // the participant's service has no plaintext port here
	return map[string]map[string]codes.Code{
		txcoordv1.Coordinator_Begin_FullMethodName:            row(clientA, clientB),
		txcoordv1.Coordinator_RegisterBranch_FullMethodName:   row(partX),
		txcoordv1.Coordinator_Commit_FullMethodName:           row(clientA), // a live transaction: its client only
		txcoordv1.Coordinator_Rollback_FullMethodName:         row(clientA, operator, admin),
		txcoordv1.Coordinator_GetTransaction_FullMethodName:   row(clientA, observer, operator, admin),
		txcoordv1.Coordinator_ListTransactions_FullMethodName: row(observer, operator, admin),
		txcoordv1.Coordinator_GetOutcome_FullMethodName:       row(partX, observer, operator, admin), // by gid: its participant
		txcoordv1.Coordinator_Resolve_FullMethodName:          row(operator, admin),
		txcoordv1.Coordinator_Recover_FullMethodName:          row(operator, admin),
		txcoordv1.Coordinator_Announce_FullMethodName:         row(partX),
		txcoordv1.Participant_Prepare_FullMethodName:          coordOnly,
		txcoordv1.Participant_Commit_FullMethodName:           coordOnly,
		txcoordv1.Participant_CommitBatch_FullMethodName:      coordOnly,
		txcoordv1.Participant_Rollback_FullMethodName:         coordOnly,
		txcoordv1.Participant_ListPrepared_FullMethodName:     coordOnly,
		healthpb.Health_Check_FullMethodName:                  public,
		healthpb.Health_Watch_FullMethodName:                  public,
		healthpb.Health_List_FullMethodName:                   public,
		// Resolve to COMMIT is a separate row: break-glass only.
		"Resolve COMMIT": row(admin),
		// GetOutcome by txid: the transaction's client and observers.
		"GetOutcome by txid": row(clientA, observer, operator, admin),
	}
}

// call makes one call of method as who; it returns the status code, with
// refusals told apart from the handler's own answers.
func (w *world) call(method, who string) error {
	ctx, cancel := ctxFor(who)
	defer cancel()
	api := w.api(who)
	switch method {
	case txcoordv1.Coordinator_Begin_FullMethodName:
		_, err := api.Begin(ctx, &txcoordv1.BeginRequest{})
		return err
	case txcoordv1.Coordinator_RegisterBranch_FullMethodName:
		txid, _ := w.begin()
		gtrid := "txc.c1." + txid
		_, err := api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: txid, Gid: gtrid + ".payment-2", Participant: "payment", Address: "127.0.0.1:1"})
		return err
	case txcoordv1.Coordinator_Commit_FullMethodName:
		// No branch: committing one at an address nobody serves would
		// only add phase two's retries.
		ctx0, cancel0 := ctxFor(clientA)
		defer cancel0()
		b, err := w.api(clientA).Begin(ctx0, &txcoordv1.BeginRequest{})
		if err != nil {
			w.t.Fatal(err)
		}
		txid := b.GetTxid()
		_, err = api.Commit(ctx, &txcoordv1.CommitRequest{Txid: txid})
		return err
	case txcoordv1.Coordinator_Rollback_FullMethodName:
		txid, _ := w.begin()
		_, err := api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: txid})
		return err
	case txcoordv1.Coordinator_GetTransaction_FullMethodName:
		txid, _ := w.begin()
		_, err := api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: txid})
		return err
	case txcoordv1.Coordinator_ListTransactions_FullMethodName:
		_, err := api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{})
		return err
	case txcoordv1.Coordinator_GetOutcome_FullMethodName:
		_, gid := w.begin()
		_, err := api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Gid: gid, Participant: "payment"})
		return err
	case "GetOutcome by txid":
		txid, _ := w.begin()
		_, err := api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: txid})
		return err
	case txcoordv1.Coordinator_Resolve_FullMethodName:
		txid, _ := w.begin()
		_, err := api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: txid, Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "matrix"})
		return err
	case "Resolve COMMIT":
		txid, _ := w.begin()
		_, err := api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: txid, Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "matrix"})
		return err
	case txcoordv1.Coordinator_Recover_FullMethodName:
		_, err := api.Recover(ctx, &txcoordv1.RecoverRequest{})
		return err
	case txcoordv1.Coordinator_Announce_FullMethodName:
		_, err := api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "payment", Address: "127.0.0.1:2"})
		return err
	case healthpb.Health_Check_FullMethodName:
		_, err := healthpb.NewHealthClient(w.coordConn[who]).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	case healthpb.Health_List_FullMethodName:
		_, err := healthpb.NewHealthClient(w.coordConn[who]).List(ctx, &healthpb.HealthListRequest{})
		return err
	case healthpb.Health_Watch_FullMethodName:
		st, err := healthpb.NewHealthClient(w.coordConn[who]).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	pc, have := w.partConn[who]
	if !have {
		return status.Error(codes.Unavailable, "no participant port for this caller")
	}
	p := txcoordv1.NewParticipantClient(pc)
	gid := "txc.c1.01a23c86-29c2-7cec-bbf5-c489bd1e8359.payment-1"
	var err error
	switch method {
	case txcoordv1.Participant_Prepare_FullMethodName:
		_, err = p.Prepare(ctx, &txcoordv1.PrepareRequest{Gid: gid})
	case txcoordv1.Participant_Commit_FullMethodName:
		_, err = p.Commit(ctx, &txcoordv1.CommitBranchRequest{Gid: gid})
	case txcoordv1.Participant_CommitBatch_FullMethodName:
		_, err = p.CommitBatch(ctx, &txcoordv1.CommitBatchRequest{Gids: []string{gid}})
	case txcoordv1.Participant_Rollback_FullMethodName:
		_, err = p.Rollback(ctx, &txcoordv1.RollbackBranchRequest{Gid: gid})
	case txcoordv1.Participant_ListPrepared_FullMethodName:
		_, err = p.ListPrepared(ctx, &txcoordv1.ListPreparedRequest{})
	default:
		w.t.Fatalf("no call for %s", method)
	}
	return err
}

// Every RPC x every caller: allowed, or refused with the exact code. A
// method of a service without a row here, or without a rule in
// authz.Rules, fails.
func TestAuthorizationMatrix(t *testing.T) {
	w := newWorld(t)
	want := expectations()
	for _, desc := range []grpc.ServiceDesc{txcoordv1.Coordinator_ServiceDesc, txcoordv1.Participant_ServiceDesc, healthpb.Health_ServiceDesc} {
		var names []string
		for _, m := range desc.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range desc.Streams {
			names = append(names, s.StreamName)
		}
		for _, n := range names {
			full := "/" + desc.ServiceName + "/" + n
			if _, ok := want[full]; !ok {
				t.Errorf("%s has no row in the authorization matrix", full)
			}
			if _, ok := authz.Rules[full]; !ok {
				t.Errorf("%s has no rule in authz.Rules", full)
			}
		}
	}
	methods := make([]string, 0, len(want))
	for m := range want {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	for _, m := range methods {
		for _, who := range callers {
			err := w.call(m, who)
			code := status.Code(err)
			exp := want[m][who]
			refused := code == codes.Unauthenticated || code == codes.PermissionDenied || code == codes.Unavailable
			switch {
			case exp == ok && refused:
				t.Errorf("%s as %s: refused (%v), want allowed", m, who, err)
			case exp != ok && code != exp:
				t.Errorf("%s as %s: got %v, want %s", m, who, err, exp)
			}
		}
	}
	if r := w.a.Refusals(); r["anonymous"] == 0 || r["role"] == 0 || r["token-over-plaintext"] == 0 || r["unknown-token"] == 0 || r["not-owner"] == 0 || r["participant-name"] == 0 {
		t.Errorf("refusals by kind: %v", r)
	}
}
