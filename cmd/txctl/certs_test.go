package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/pki"
)

// txctl certs makes a CA and certificates that carry a SPIFFE ID, keys and
// tokens with mode 0600, and never overwrites a file.
func TestCertsIssueIdentities(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, _, errOut := txctl(t, "certs", "ca", "--dir", dir); code != 0 {
		t.Fatalf("certs ca: %d %s", code, errOut)
	}
	if code, _, _ := txctl(t, "certs", "ca", "--dir", dir); code != exitRefused {
		t.Fatalf("a second CA in the same directory: exit %d", code)
	}
	const id = "spiffe://example.org/svc/payment"
	if code, _, errOut := txctl(t, "certs", "issue", "--dir", dir, "--name", "payment", "--id", id); code != 0 {
		t.Fatalf("certs issue: %d %s", code, errOut)
	}
	b, err := os.ReadFile(filepath.Join(dir, "payment.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := pki.SPIFFEID(certs[0]); err != nil || got != id {
		t.Fatalf("the certificate's identity: %q %v", got, err)
	}
	for _, f := range []string{"ca-key.pem", "payment-key.pem"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if code, _, _ := txctl(t, "certs", "issue", "--dir", dir, "--name", "payment", "--id", id); code != exitRefused {
		t.Fatalf("overwriting a certificate: exit %d", code)
	}
	for _, bad := range []string{"https://example.org/x", "spiffe://Example.org/x", "spiffe://example.org"} {
		if code, _, _ := txctl(t, "certs", "issue", "--dir", dir, "--name", "x", "--id", bad); code != exitUsage {
			t.Fatalf("--id %s: exit %d", bad, code)
		}
	}
	tok := filepath.Join(t.TempDir(), "alice.token")
	code, out, errOut := txctl(t, "certs", "token", "--out", tok)
	if code != 0 {
		t.Fatalf("certs token: %d %s", code, errOut)
	}
	tb, err := os.ReadFile(tok)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(tok); fi.Mode().Perm() != 0o600 || !strings.Contains(out, authz.TokenDigest(strings.TrimSpace(string(tb)))) || strings.Contains(out, strings.TrimSpace(string(tb))) {
		t.Fatalf("token file mode %v; printed %q: want the digest, never the token", fi.Mode(), out)
	}
}

// F10: txctl does not send a token over a connection without TLS.
func TestTokenIsNotSentInPlaintext(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tok, []byte("some-admin-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := txctl(t, "recover", "--server", "127.0.0.1:1", "--token-file", tok)
	if code != exitUsage || !strings.Contains(errOut, "without TLS") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// F13: what participants say is shown with control characters escaped and
// its length bounded.
func TestOutputEscapesParticipantStrings(t *testing.T) {
	got := dash("ok\x1b[2K\rCOMMIT\x07\u009b\ttab\nline")
	if strings.ContainsAny(got, "\x1b\r\x07\u009b\n\t") || !strings.Contains(got, `\x1b`) || !strings.Contains(got, `\x9b`) {
		t.Fatalf("escaped: %q", got)
	}
	if long := dash(strings.Repeat("x", 5000)); len(long) > maxShown+10 {
		t.Fatalf("a 5000-byte string is shown as %d bytes", len(long))
	}
}
