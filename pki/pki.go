// Package pki issues the certificates of txcoord's trust model (a CA, and
// leaf certificates whose identity is a SPIFFE ID in a URI SAN) and serves
// TLS configurations that pick up rotated certificate and CA files without
// a restart.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// CA is a certificate authority: its certificate and signing key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed CA named name, valid for validity from now.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(validity),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA's certificate and key (PEM).
func LoadCA(certFile, keyFile string) (*CA, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCerts(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM key", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, eerr := x509.ParseECPrivateKey(blk.Bytes); eerr == nil {
			k = ek
		} else {
			return nil, fmt.Errorf("%s: %w", keyFile, err)
		}
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", keyFile)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", certFile)
	}
	return &CA{Cert: certs[0], Key: signer}, nil
}

// Leaf says what a leaf certificate is for.
type Leaf struct {
	// ID is the SPIFFE ID of the holder (spiffe://trust-domain/path).
	ID string
	// DNSNames and IPs are the names a server certificate is valid for.
	DNSNames []string
	IPs      []net.IP
	// Server and Client set the extended key usages (both if neither).
	Server, Client bool
	// NotBefore and NotAfter bound its validity (default: now, plus 90
	// days).
	NotBefore, NotAfter time.Time
}

// Issue signs a new key's certificate for l; it returns both in PEM.
func (ca *CA) Issue(l Leaf) (certPEM, keyPEM []byte, err error) {
	u, err := ParseSPIFFE(l.ID)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	if l.NotBefore.IsZero() {
		l.NotBefore = time.Now().Add(-5 * time.Minute)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = time.Now().Add(90 * 24 * time.Hour)
	}
	var usage []x509.ExtKeyUsage
	if l.Server || !l.Client {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client || !l.Server {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: u.Path},
		NotBefore: l.NotBefore, NotAfter: l.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usage, URIs: []*url.URL{u}, DNSNames: l.DNSNames, IPAddresses: l.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

// CertPEM is the CA's certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM is the CA's key in PEM (PKCS #8).
func (ca *CA) KeyPEM() ([]byte, error) {
	kb, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

// ParseCerts reads every certificate of a PEM bundle (at least one).
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// ParseSPIFFE checks that id is a SPIFFE ID: spiffe://trust-domain/path,
// lower-case trust domain, a non-empty path of non-empty segments, no
// query, fragment, port or user.
func ParseSPIFFE(id string) (*url.URL, error) {
	if len(id) > 2048 {
		return nil, errors.New("SPIFFE ID longer than 2048 bytes")
	}
	u, err := url.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("SPIFFE ID %q: not a URI", id)
	}
	switch {
	case u.Scheme != "spiffe":
		return nil, fmt.Errorf("SPIFFE ID %q: want spiffe://trust-domain/path", id)
	case u.Host == "" || u.Port() != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("SPIFFE ID %q: want spiffe://trust-domain/path (no port, user, query or fragment)", id)
	case strings.ToLower(u.Host) != u.Host || strings.Trim(u.Host, "abcdefghijklmnopqrstuvwxyz0123456789.-_") != "":
		return nil, fmt.Errorf("SPIFFE ID %q: the trust domain is lower-case letters, digits, '.', '-' and '_'", id)
	case u.Path == "" || u.Path == "/" || strings.HasSuffix(u.Path, "/") || strings.Contains(u.Path, "//") || u.RawPath != "":
		return nil, fmt.Errorf("SPIFFE ID %q: want a path of non-empty segments after the trust domain", id)
	}
	for _, seg := range strings.Split(u.Path[1:], "/") {
		if seg == "." || seg == ".." || strings.Trim(seg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "" {
			return nil, fmt.Errorf("SPIFFE ID %q: path segment %q: want letters, digits, '.', '-' and '_'", id, seg)
		}
	}
	return u, nil
}

// SPIFFEID is the single SPIFFE ID among cert's URI SANs ("" if none; an
// error if several).
func SPIFFEID(cert *x509.Certificate) (string, error) {
	var id string
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if id != "" {
			return "", errors.New("the certificate carries more than one SPIFFE ID")
		}
		if _, err := ParseSPIFFE(u.String()); err != nil {
			return "", err
		}
		id = u.String()
	}
	return id, nil
}

// TrustDomain is the trust domain of a valid SPIFFE ID.
func TrustDomain(id string) string {
	u, err := url.Parse(id)
	if err != nil {
		return ""
	}
	return u.Host
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}
