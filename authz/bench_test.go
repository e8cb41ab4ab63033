package authz_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/internal/testpki"
	"github.com/txcoord/txcoord/pki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// The check's cost per call, beside a call that skips it (baseline):
// a certificate's identity looked up in a policy of 1,000 identities, and
// a token's.
func BenchmarkAuthorize(b *testing.B) {
	ca := testpki.New(b)
	const me = "spiffe://example.org/svc/order-7"
	cf, _ := ca.Identity("me", me, time.Time{})
	raw, err := os.ReadFile(cf)
	if err != nil {
		b.Fatal(err)
	}
	certs, err := pki.ParseCerts(raw)
	if err != nil {
		b.Fatal(err)
	}
	pol := &authz.Policy{TrustDomain: "example.org"}
	for i := range 1000 {
		id := "spiffe://example.org/svc/other-" + string(rune('a'+i%26)) + "-" + strconv.Itoa(i)
		pol.Identities = append(pol.Identities, authz.Entry{ID: id, Roles: []authz.Role{authz.Client}})
	}
	pol.Identities = append(pol.Identities, authz.Entry{ID: me, Roles: []authz.Role{authz.Client}, TokenSHA256: []string{authz.TokenDigest("tok-0123456789")}})
	a, err := authz.New(authz.Config{Policy: pol})
	if err != nil {
		b.Fatal(err)
	}
	tlsPeer := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: certs, VerifiedChains: [][]*x509.Certificate{certs}}}})
	withToken := metadata.NewIncomingContext(peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1},
		AuthInfo: credentials.TLSInfo{}}), metadata.Pairs("authorization", "Bearer tok-0123456789"))
	method := txcoordv1.Coordinator_Begin_FullMethodName
	b.Run("baseline-no-check", func(b *testing.B) {
		for b.Loop() {
			_ = authz.NewContext(tlsPeer, nil)
		}
	})
	b.Run("certificate", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Authorize(tlsPeer, method); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("token", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Authorize(withToken, method); err != nil {
				b.Fatal(err)
			}
		}
	})
}
