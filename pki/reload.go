package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of one side of a TLS connection: its own
// certificate and key, and the CA its peers' certificates must chain to.
type Files struct {
	Cert, Key, CA string
}

// Reloader keeps a certificate pair and a CA pool read from Files, and
// reads them again when a file changes (checked at most once per Every on
// a handshake), so that rotated certificates take effect without a
// restart. A file that fails to load keeps the last good version in use
// and is reported to OnError.
type Reloader struct {
	files   Files
	every   time.Duration
	onError func(error)

	mu      sync.Mutex
	checked time.Time
	stamp   string
	cert    *tls.Certificate
	pool    *x509.CertPool
}

// NewReloader loads f at once: a file that cannot be read is an error.
func NewReloader(f Files, onError func(error)) (*Reloader, error) {
	if onError == nil {
		onError = func(error) {}
	}
	r := &Reloader{files: f, every: 5 * time.Second, onError: onError}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) stampOf() string {
	s := ""
	for _, p := range []string{r.files.Cert, r.files.Key, r.files.CA} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			s += p + ":missing;"
			continue
		}
		s += fmt.Sprintf("%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return s
}

func (r *Reloader) load() error {
	stamp := r.stampOf()
	var cert *tls.Certificate
	if r.files.Cert != "" {
		c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
		if err != nil {
			return fmt.Errorf("tls certificate %s: %w", r.files.Cert, err)
		}
		cert = &c
	}
	var pool *x509.CertPool
	if r.files.CA != "" {
		b, err := os.ReadFile(r.files.CA)
		if err != nil {
			return fmt.Errorf("tls CA: %w", err)
		}
		certs, err := ParseCerts(b)
		if err != nil {
			return fmt.Errorf("tls CA %s: %w", r.files.CA, err)
		}
		pool = x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	r.mu.Lock()
	r.cert, r.pool, r.stamp, r.checked = cert, pool, stamp, time.Now()
	r.mu.Unlock()
	return nil
}

// refresh reloads the files if they changed since the last load.
func (r *Reloader) refresh() {
	r.mu.Lock()
	due := time.Since(r.checked) >= r.every
	if due {
		r.checked = time.Now()
	}
	old := r.stamp
	r.mu.Unlock()
	if !due || r.stampOf() == old {
		return
	}
	if err := r.load(); err != nil {
		r.onError(fmt.Errorf("reloading rotated TLS files: %w (the previous ones stay in use)", err))
	}
}

// Reload reads the files now.
func (r *Reloader) Reload() error { return r.load() }

func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.refresh()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert, r.pool
}

// ServerConfig serves the certificate; with a CA, it verifies client
// certificates chaining to it (mutual TLS) with clientAuth:
// tls.RequireAndVerifyClientCert, or tls.VerifyClientCertIfGiven when
// callers may also present a token instead.
func (r *Reloader) ServerConfig(clientAuth tls.ClientAuthType) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		c := &tls.Config{MinVersion: tls.VersionTLS12}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		if pool != nil {
			c.ClientCAs, c.ClientAuth = pool, clientAuth
		}
		return c, nil
	}
	return base
}

// ClientConfig verifies servers against the CA (the system pool if none)
// and presents the certificate (if any). With wantID, the server's
// certificate must carry that SPIFFE ID; the host name is then not
// checked, as the identity is what is trusted.
func (r *Reloader) ClientConfig(serverName, wantID string) *tls.Config {
	if wantID == "" && r.files.CA == "" {
		return r.clientConfig(serverName, nil)
	}
	return r.clientConfig(serverName, func() string { return wantID })
}

// ClientConfigFor is ClientConfig with the expected identity asked of want
// at each handshake (for example from a policy that is reloaded): "" means
// no identity is expected, and the host name is checked instead.
func (r *Reloader) ClientConfigFor(serverName string, want func() string) *tls.Config {
	return r.clientConfig(serverName, want)
}

func (r *Reloader) clientConfig(serverName string, want func() string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, _ := r.current()
		if cert == nil {
			return &tls.Certificate{}, nil
		}
		return cert, nil
	}
	if want == nil {
		return c
	}
	// Verify by hand so that the CA can rotate.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		wantID := want()
		_, pool := r.current()
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("tls: the server sent no certificate")
		}
		opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if wantID == "" {
			opts.DNSName = cs.ServerName
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		if wantID != "" {
			got, err := SPIFFEID(cs.PeerCertificates[0])
			if err != nil {
				return fmt.Errorf("tls: the server's certificate: %w", err)
			}
			if got != wantID {
				return fmt.Errorf("tls: the server is %q, not the expected %q", got, wantID)
			}
		}
		return nil
	}
	return c
}
