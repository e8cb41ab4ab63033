package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeLeaf(t *testing.T, ca *CA, id, cert, key string) {
	t.Helper()
	c, k, err := ca.Issue(Leaf{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, c, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, k, 0o600); err != nil {
		t.Fatal(err)
	}
}

func servedID(t *testing.T, r *Reloader) string {
	t.Helper()
	c, err := r.ServerConfig(tls.RequireAndVerifyClientCert).GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	id, err := SPIFFEID(leaf)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A rotated certificate is served without a restart; a file that does not
// load leaves the previous one in use and is reported.
func TestReloaderPicksUpRotatedFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	writeLeaf(t, ca, "spiffe://a.b/one", cert, key)
	var reported []error
	r, err := NewReloader(Files{Cert: cert, Key: key, CA: caFile}, func(err error) { reported = append(reported, err) })
	if err != nil {
		t.Fatal(err)
	}
	r.every = 0
	if id := servedID(t, r); id != "spiffe://a.b/one" {
		t.Fatalf("served %s", id)
	}
	time.Sleep(10 * time.Millisecond) // a later modification time
	writeLeaf(t, ca, "spiffe://a.b/two", cert, key)
	if id := servedID(t, r); id != "spiffe://a.b/two" {
		t.Fatalf("after rotation served %s", id)
	}
	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if id := servedID(t, r); id != "spiffe://a.b/two" || len(reported) == 0 {
		t.Fatalf("a broken file: served %s, reported %v", id, reported)
	}
	if _, err := NewReloader(Files{Cert: cert, Key: key}, nil); err == nil {
		t.Fatal("a broken certificate loaded at start")
	}
}

func TestParseSPIFFE(t *testing.T) {
	for _, ok := range []string{"spiffe://example.org/svc/pay", "spiffe://a-b_c.d/x.y/z-1"} {
		if _, err := ParseSPIFFE(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "spiffe://", "spiffe://a.b", "spiffe://a.b/", "spiffe://a.b//x", "spiffe://a.b/x/", "spiffe://A.b/x",
		"spiffe://a.b:80/x", "spiffe://u@a.b/x", "spiffe://a.b/x?q=1", "spiffe://a.b/x#f", "spiffe://a.b/../x", "spiffe://a.b/x%2Fy", "https://a.b/x", "spiffe:a.b/x"} {
		if _, err := ParseSPIFFE(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	c, _, err := mustCA(t).Issue(Leaf{ID: "nope"})
	if err == nil || c != nil {
		t.Fatal("a certificate for a malformed id")
	}
}

func mustCA(t *testing.T) *CA {
	ca, err := NewCA("t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// ClientConfigFor asks the expected identity at each handshake: when the
// answer changes (a reloaded policy), the next connection to a server with
// the old identity is refused, and one with the new identity is accepted.
func TestClientConfigForAsksTheIdentityAtEachHandshake(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	reloader := func(id, name string) *Reloader {
		cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writeLeaf(t, ca, id, cert, key)
		r, err := NewReloader(Files{Cert: cert, Key: key, CA: caFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	server := reloader("spiffe://a.b/payment", "server")
	client := reloader("spiffe://a.b/coordinator", "client")
	want := "spiffe://a.b/payment"
	cfg := client.ClientConfigFor("", func() string { return want })
	handshake := func(cfg *tls.Config) error {
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		done := make(chan error, 1)
		go func() {
			err := tls.Server(s, server.ServerConfig(tls.RequireAndVerifyClientCert)).Handshake()
			s.Close()
			done <- err
		}()
		err := tls.Client(c, cfg).Handshake()
		c.Close()
		<-done
		return err
	}
	if err := handshake(cfg); err != nil {
		t.Fatalf("the expected identity: %v", err)
	}
	want = "spiffe://a.b/someone-else"
	if err := handshake(cfg); err == nil || !strings.Contains(err.Error(), "someone-else") {
		t.Fatalf("after the expected identity changed: %v, want a refusal", err)
	}
	// With no identity expected, the host name is checked, and the
	// server's certificate names no host.
	want = ""
	if err := handshake(client.ClientConfigFor("payment.example", func() string { return want })); err == nil {
		t.Fatal("with no identity expected, a certificate without the host name was accepted")
	}
}
