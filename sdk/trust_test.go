package sdk_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/testpki"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/participant/remote"
	"github.com/txcoord/txcoord/pki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/sdk"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

var trustIDs = map[string]string{
	"coordinator": "spiffe://example.org/txcoord/c1",
	"bank_a":      "spiffe://example.org/svc/bank-a",
	"bank_b":      "spiffe://example.org/svc/bank-b",
	"client":      "spiffe://example.org/svc/teller",
	"attacker":    "spiffe://example.org/svc/intruder",
}

// creds is TLS presenting name's certificate and trusting ca.
func creds(t *testing.T, ca *testpki.CA, name string) *pki.Reloader {
	t.Helper()
	cf, kf := ca.Identity(name, trustIDs[name], time.Time{})
	r, err := pki.NewReloader(pki.Files{Cert: cf, Key: kf, CA: ca.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func dialAs(t *testing.T, r *pki.Reloader, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(r.ClientConfig("", ""))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Everything over mutual TLS under a policy: transfers commit, and the
// attacks of F1 (a service's Participant API called by others), F3 (another
// identity commits, rolls back or lists a client's transaction) and F4
// (another identity moves a participant) are refused and change nothing;
// the coordinator checks each participant's certificate against the
// identity bound to its name.
func TestMutualTLSTransfersAndAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	_, dsns := setupDBs(t)
	ca := testpki.New(t)
	pol := fmt.Sprintf(`trust_domain: example.org
identities:
  - {id: %s, roles: [coordinator]}
  - {id: %s, roles: [participant], participant: bank_a}
  - {id: %s, roles: [participant], participant: bank_b}
  - {id: %s, roles: [client]}
  - {id: %s, roles: [client]}
`, trustIDs["coordinator"], trustIDs["bank_a"], trustIDs["bank_b"], trustIDs["client"], trustIDs["attacker"])
	polFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(polFile, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := authz.New(authz.Config{PolicyFile: polFile})
	if err != nil {
		t.Fatal(err)
	}

	// The coordinator: its server certificate, and its client
	// certificate to participants, checked per name.
	coordTLS := creds(t, ca, "coordinator")
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	c, err := coordinator.New(context.Background(), coordinator.Config{ID: "c1", Log: log, RecoveryInterval: -1,
		InDoubtTimeout: time.Second, CallTimeout: 3 * time.Second, RetryBase: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := server.New(server.Config{Coordinator: c, Authorizer: a,
		ParticipantDial: func(name string) []grpc.DialOption {
			want, _ := a.ParticipantID(name)
			return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(coordTLS.ClientConfig("", want)))}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(coordTLS.ServerConfig(tls.VerifyClientCertIfGiven))))
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	coordAddr := lis.Addr().String()

	// The services: the Participant API for the coordinator only.
	type svc struct {
		*service
		tls *pki.Reloader
	}
	start := func(name, dsn string) svc {
		r := creds(t, ca, name)
		pa, err := authz.ForCoordinator(trustIDs["coordinator"])
		if err != nil {
			t.Fatal(err)
		}
		s := startTLSService(t, name, dsn, dialAs(t, r, coordAddr), r, pa)
		return svc{s, r}
	}
	ba, bb := start("bank_a", dsns[0]), start("bank_b", dsns[1])
	defer ba.close()
	defer bb.close()

	cl := client.New(dialAs(t, creds(t, ca, "client"), coordAddr))
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		err := cl.Run(ctx, func(ctx context.Context) error {
			if err := move(ctx, ba.service, 1, -10); err != nil {
				return err
			}
			return move(ctx, bb.service, 1, 10)
		})
		if err != nil {
			t.Fatalf("transfer %d over mutual TLS: %v", i, err)
		}
	}

	// A transaction held prepared at bank_a while attacks run.
	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), ba.service, 2, -7); err != nil {
		t.Fatal(err)
	}
	if err := move(tx.Context(ctx), bb.service, 2, 7); err != nil {
		t.Fatal(err)
	}
	gidA := prepGID(t, ba.service)
	intruder := creds(t, ca, "attacker")
	wantRefused := func(what string, err error, code codes.Code) {
		t.Helper()
		if status.Code(err) != code {
			t.Errorf("%s: got %v, want %s", what, err, code)
		}
	}
	// F1: the service's Participant API, called by a client, by another
	// participant, and by a caller with no certificate.
	for _, who := range []struct {
		name string
		r    *pki.Reloader
	}{{"attacker", intruder}, {"bank_b", bb.tls}} {
		p := txcoordv1.NewParticipantClient(dialAs(t, who.r, ba.addr))
		_, err := p.ListPrepared(ctx, &txcoordv1.ListPreparedRequest{})
		wantRefused("F1 ListPrepared at bank_a by "+who.name, err, codes.PermissionDenied)
		_, err = p.Rollback(ctx, &txcoordv1.RollbackBranchRequest{Gid: gidA})
		wantRefused("F1 Rollback at bank_a by "+who.name, err, codes.PermissionDenied)
		_, err = p.Commit(ctx, &txcoordv1.CommitBranchRequest{Gid: gidA})
		wantRefused("F1 Commit at bank_a by "+who.name, err, codes.PermissionDenied)
	}
	// F3: another client commits, rolls back, reads or lists.
	evil := txcoordv1.NewCoordinatorClient(dialAs(t, intruder, coordAddr))
	_, err = evil.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: tx.ID().String()})
	wantRefused("F3 Rollback of another's transaction", err, codes.PermissionDenied)
	_, err = evil.Commit(ctx, &txcoordv1.CommitRequest{Txid: tx.ID().String()})
	wantRefused("F3 Commit of another's transaction", err, codes.PermissionDenied)
	_, err = evil.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: tx.ID().String()})
	wantRefused("F3 GetTransaction of another's transaction", err, codes.PermissionDenied)
	_, err = evil.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{})
	wantRefused("F3/F14 ListTransactions by a client", err, codes.PermissionDenied)
	// F4: another participant, and a client, move bank_a.
	asB := txcoordv1.NewCoordinatorClient(dialAs(t, bb.tls, coordAddr))
	_, err = asB.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "bank_a", Address: "127.0.0.1:9"})
	wantRefused("F4 Announce of bank_a by bank_b", err, codes.PermissionDenied)
	_, err = evil.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "bank_a", Address: "127.0.0.1:9"})
	wantRefused("F4 Announce of bank_a by a client", err, codes.PermissionDenied)
	_, err = asB.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: tx.ID().String(), Gid: remoteGTRID(tx) + ".bank_a-9", Participant: "bank_a", Address: "127.0.0.1:9"})
	wantRefused("F4 RegisterBranch as bank_a by bank_b", err, codes.PermissionDenied)
	if r, ok := c.Resource("bank_a"); !ok || r.(*remote.Resource).Address() != ba.addr {
		t.Fatalf("bank_a moved by an attack: %v", r)
	}
	// Still prepared, and the client's commit commits both.
	if n := prepared(t, ba.service); n != 1 {
		t.Fatalf("bank_a holds %d prepared branches after the attacks, want 1", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after the attacks: %v", err)
	}
	if got := total(t, ba.service, bb.service); got != 2*accounts*initial {
		t.Fatalf("total %d, want %d", got, 2*accounts*initial)
	}
	if n := prepared(t, ba.service, bb.service); n != 0 {
		t.Fatalf("%d branches left prepared", n)
	}

	// The coordinator checks a participant's certificate against its
	// name: bank_a's name pointed at bank_b's port is refused by TLS.
	if _, err := srv.AddParticipant("bank_a", bb.addr); err != nil {
		t.Fatal(err)
	}
	r, _ := c.Resource("bank_a")
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = r.Prepared(cctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "not the expected") {
		t.Fatalf("bank_a's name at bank_b's port: %v", err)
	}
	if _, err := srv.AddParticipant("bank_a", ba.addr); err != nil {
		t.Fatal(err)
	}
	ref := a.Refusals()
	if ref["role"] == 0 || ref["not-owner"] == 0 || ref["participant-name"] == 0 {
		t.Errorf("refusals by kind: %v", ref)
	}
}

// F1: the SDK refuses to serve its Participant API without an authorizer
// unless told it may.
func TestSDKRefusesToServeWithoutAnAuthorizer(t *testing.T) {
	_, err := sdk.New(sdk.Config{Name: "x", Address: "127.0.0.1:1", Coordinator: &grpc.ClientConn{}, Resource: &postgres.Resource{}})
	if err == nil || !strings.Contains(err.Error(), "no Authorizer") {
		t.Fatalf("want a refusal naming the missing Authorizer, got %v", err)
	}
}

func remoteGTRID(tx *client.Tx) string { return "txc.c1." + tx.ID().String() }

// prepGID is the gid of the one branch prepared at s.
func prepGID(t *testing.T, s *service) string {
	t.Helper()
	list, err := s.res.Prepared(context.Background())
	if err != nil || len(list) != 1 {
		t.Fatalf("want one prepared branch, got %v %v", list, err)
	}
	return list[0].Raw
}

// startTLSService is startService over mutual TLS, its Participant API
// behind pa.
func startTLSService(t *testing.T, name, dsn string, coordConn *grpc.ClientConn, r *pki.Reloader, pa *authz.Authorizer) *service {
	t.Helper()
	return startServiceWith(t, name, dsn, coordConn, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(r.ServerConfig(tls.RequireAndVerifyClientCert)))},
		func(c *sdk.Config) { c.InsecureAnyCaller, c.Authorizer = false, pa })
}
