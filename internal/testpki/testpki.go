// Package testpki writes a throwaway certificate authority and
// certificates signed by it, for tests of TLS and mutual TLS.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose files live in Dir.
type CA struct {
	Dir    string
	CAFile string // the CA certificate (PEM)
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
	t      testing.TB
}

// New makes a CA in a temporary directory of t.
func New(t testing.TB) *CA {
	t.Helper()
	dir := t.TempDir()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Dir: dir, cert: cert, key: key, serial: 1, t: t}
	ca.CAFile = ca.write("ca.pem", "CERTIFICATE", der)
	return ca
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (ca *CA) write(name, typ string, b []byte) string {
	p := filepath.Join(ca.Dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// Server writes a server certificate for 127.0.0.1 and returns its
// certificate and key files.
func (ca *CA) Server(name string) (certFile, keyFile string) {
	return ca.leaf(name, x509.ExtKeyUsageServerAuth)
}

// Client writes a client certificate with common name cn.
func (ca *CA) Client(cn string) (certFile, keyFile string) {
	return ca.leaf(cn, x509.ExtKeyUsageClientAuth)
}

// Identity writes a certificate (client and server) for 127.0.0.1 whose
// URI SAN is the SPIFFE ID id, valid until notAfter (a day if zero).
func (ca *CA) Identity(name, id string, notAfter time.Time) (certFile, keyFile string) {
	u, err := url.Parse(id)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.make(name, []*url.URL{u}, notAfter, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth)
}

func (ca *CA) leaf(cn string, usage x509.ExtKeyUsage) (string, string) {
	return ca.make(cn, nil, time.Time{}, usage)
}

func (ca *CA) make(cn string, uris []*url.URL, notAfter time.Time, usage ...x509.ExtKeyUsage) (string, string) {
	ca.t.Helper()
	ca.serial++
	k := newKey(ca.t)
	if notAfter.IsZero() {
		notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter: notAfter, ExtKeyUsage: usage, URIs: uris, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(cn+".pem", "CERTIFICATE", der), ca.write(cn+"-key.pem", "EC PRIVATE KEY", kb)
}

// ServerConfig is a TLS config serving certFile/keyFile and, with
// mutual, requiring client certificates signed by the CA.
func (ca *CA) ServerConfig(certFile, keyFile string, mutual bool) *tls.Config {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		ca.t.Fatal(err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if mutual {
		c.ClientCAs, c.ClientAuth = ca.Pool(), tls.RequireAndVerifyClientCert
	}
	return c
}

// ClientConfig trusts the CA and presents certFile/keyFile if given.
func (ca *CA) ClientConfig(certFile, keyFile string) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			ca.t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

// Pool holds the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}
