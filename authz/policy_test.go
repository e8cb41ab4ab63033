package authz_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func TestPolicyRefusesNonsense(t *testing.T) {
	good := "trust_domain: example.org\nidentities:\n  - {id: spiffe://example.org/ops/alice, roles: [operator]}\n"
	if _, err := authz.ParsePolicy([]byte(good)); err != nil {
		t.Fatalf("a good policy: %v", err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "identites: []\n", "identites"},
		{"unknown role", "identities:\n  - {id: spiffe://a.b/x, roles: [root]}\n", `unknown role "root"`},
		{"no roles", "identities:\n  - {id: spiffe://a.b/x}\n", "has no roles"},
		{"not spiffe", "identities:\n  - {id: https://a.b/x, roles: [client]}\n", "want spiffe://"},
		{"no path", "identities:\n  - {id: spiffe://a.b, roles: [client]}\n", "path"},
		{"upper-case domain", "identities:\n  - {id: spiffe://A.b/x, roles: [client]}\n", "trust domain"},
		{"dot segment", "identities:\n  - {id: spiffe://a.b/x/../y, roles: [client]}\n", "segment"},
		{"outside the domain", "trust_domain: a.b\nidentities:\n  - {id: spiffe://c.d/x, roles: [client]}\n", "outside the trust domain"},
		{"twice", "identities:\n  - {id: spiffe://a.b/x, roles: [client]}\n  - {id: spiffe://a.b/x, roles: [observer]}\n", "listed twice"},
		{"participant without name", "identities:\n  - {id: spiffe://a.b/x, roles: [participant]}\n", "names no participant"},
		{"name without role", "identities:\n  - {id: spiffe://a.b/x, roles: [client], participant: pay}\n", "lacks the role participant"},
		{"one name two identities", "identities:\n  - {id: spiffe://a.b/x, roles: [participant], participant: pay}\n  - {id: spiffe://a.b/y, roles: [participant], participant: pay}\n", "bound to both"},
		{"bad name", "identities:\n  - {id: spiffe://a.b/x, roles: [participant], participant: p.y}\n", "participant name"},
		{"bad digest", "identities:\n  - {id: spiffe://a.b/x, roles: [client], token_sha256: [abc]}\n", "64 hex digits"},
		{"one token two identities", "identities:\n  - {id: spiffe://a.b/x, roles: [client], token_sha256: [" + authz.TokenDigest("t") + "]}\n  - {id: spiffe://a.b/y, roles: [client], token_sha256: [" + authz.TokenDigest("t") + "]}\n", "bound to one identity"},
		{"not yaml", "identities: [\n", "policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := authz.ParsePolicy([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error saying %q, got %v", tc.want, err)
			}
		})
	}
}

// A changed policy file is reloaded (Watch, or Reload as on SIGHUP); one
// that does not load leaves the previous policy in force.
func TestPolicyReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file+".new", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	alice := authz.TokenDigest("alice-token")
	write("identities:\n  - {id: spiffe://a.b/alice, roles: [observer], token_sha256: [" + alice + "]}\n")
	a, err := authz.New(authz.Config{PolicyFile: file})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Watch(ctx, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	if n := a.Identities(); n != 1 {
		t.Fatalf("identities %d", n)
	}
	write("identities:\n  - {id: spiffe://a.b/alice, roles: [operator]}\n  - {id: spiffe://a.b/bob, roles: [admin]}\n")
	waitFor(t, func() bool { return a.Identities() == 2 })
	write("identities: [\n") // broken
	time.Sleep(100 * time.Millisecond)
	if n := a.Identities(); n != 2 {
		t.Fatalf("a broken policy replaced the good one: %d identities", n)
	}
	if err := a.Reload(); err == nil {
		t.Fatal("Reload of a broken policy succeeded")
	}
	write("")
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "no identities") {
		t.Fatalf("an empty policy file: %v", err)
	}
	if id, ok := a.ParticipantID("pay"); ok {
		t.Fatalf("no participant is bound, got %s", id)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// F10: a loopback caller with no credential has no role unless the
// configuration grants loopback roles, and then only from loopback.
func TestLoopbackIsNotAnIdentity(t *testing.T) {
	local := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("127.0.0.6"), Port: 1}})
	remote := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 1}})
	secure, err := authz.New(authz.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secure.Authorize(local, txcoordv1.Coordinator_Recover_FullMethodName); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a loopback caller recovered without a credential: %v", err)
	}
	if _, err := secure.Authorize(local, txcoordv1.Coordinator_Begin_FullMethodName); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a loopback caller began without a credential: %v", err)
	}
	asked, err := authz.New(authz.Config{Loopback: []authz.Role{authz.Admin}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := asked.Authorize(local, txcoordv1.Coordinator_Recover_FullMethodName); err != nil {
		t.Fatalf("loopback admin asked for: %v", err)
	}
	if _, err := asked.Authorize(remote, txcoordv1.Coordinator_Recover_FullMethodName); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a remote caller got the loopback role: %v", err)
	}
	if _, err := secure.Authorize(local, "/txcoord.v1.Coordinator/Unheard"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a method without a rule: %v", err)
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("trust_domain: example.org\nidentities:\n  - {id: spiffe://example.org/svc/pay, roles: [participant], participant: pay, token_sha256: [" + authz.TokenDigest("x") + "]}\n"))
	f.Add([]byte("identities: [{id: spiffe://a.b/c, roles: [admin]}]"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := authz.ParsePolicy(b)
		if err != nil {
			return
		}
		// What parses is valid, and an Authorizer takes it.
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed but invalid: %v", err)
		}
		if _, err := authz.New(authz.Config{Policy: p}); err != nil {
			t.Fatalf("parsed, but an Authorizer refuses it: %v", err)
		}
	})
}
