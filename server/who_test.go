package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/testpki"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/pki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
)

// asCertificate is a call context from a mutual TLS peer whose
// certificate carries SPIFFE ID id.
func asCertificate(t *testing.T, ca *testpki.CA, id string) context.Context {
	t.Helper()
	cf, _ := ca.Identity(strings.ReplaceAll(id[len("spiffe://"):], "/", "_"), id, time.Time{})
	b, err := os.ReadFile(cf)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	st := tls.ConnectionState{PeerCertificates: certs, VerifiedChains: [][]*x509.Certificate{certs}}
	return peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.0.0.9"), Port: 4000},
		AuthInfo: credentials.TLSInfo{State: st}})
}

// F10: a heuristic decision records the authenticated identity, with what
// the operator typed only as a note; an operator may not resolve to
// COMMIT, an admin may.
func TestResolveRecordsTheAuthenticatedIdentity(t *testing.T) {
	ca := testpki.New(t)
	const alice, bob = "spiffe://example.org/ops/alice", "spiffe://example.org/ops/bob"
	az, err := authz.New(authz.Config{Policy: &authz.Policy{Identities: []authz.Entry{
		{ID: alice, Roles: []authz.Role{authz.Operator}}, {ID: bob, Roles: []authz.Role{authz.Admin}}}}})
	if err != nil {
		t.Fatal(err)
	}
	// A transaction begun before the log (F5: only then may it be
	// committed heuristically).
	id, _ := ids.NewTxID()
	time.Sleep(5 * time.Millisecond)
	a := fake.New("a")
	e := start(t, nil, []participant.Resource{a}, server.Config{Authorizer: az})
	g, err := ids.NewGID(ids.DefaultPrefix, "c1", id, "a-1")
	if err != nil {
		t.Fatal(err)
	}
	a.AddPrepared(g.String())
	req := &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "confirmed by phone", Operator: "root"}

	_, err = e.srv.Resolve(asCertificate(t, ca, alice), req)
	wantCode(t, err, codes.PermissionDenied, "break-glass")
	if !a.IsPrepared(g.String()) {
		t.Fatal("a refused resolution touched the branch")
	}
	resp, err := e.srv.Resolve(asCertificate(t, ca, bob), req)
	if err != nil || !resp.GetHeuristic() {
		t.Fatalf("an admin's heuristic commit: %v %v", resp, err)
	}
	d, err := e.log.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Heuristic || !strings.HasPrefix(d.Who, bob) || !strings.Contains(d.Who, "says: root") {
		t.Fatalf("recorded who %q: want %s first, the typed name only as a note", d.Who, bob)
	}
}
