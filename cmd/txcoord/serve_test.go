package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/testpki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigRefusesNonsense(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data-dir is required"},
		{"listen", func(c *Config) { c.Listen = "7070" }, "listen"},
		{"id", func(c *Config) { c.ID = "a.b" }, "id"},
		{"negative timeout", func(c *Config) { c.TxTimeout = -time.Second }, "tx-timeout must be positive"},
		{"max below default", func(c *Config) { c.MaxTxTimeout = time.Second }, "max-tx-timeout"},
		{"half a key pair", func(c *Config) { c.TLS.Cert = "x.pem" }, "tls-cert and tls-key go together"},
		{"client CA without TLS", func(c *Config) { c.TLS.CA = "ca.pem" }, "tls-client-ca needs tls-cert"},
		{"participant address", func(c *Config) { c.Participants = map[string]string{"pay": "nowhere"} }, "participant pay"},
		{"name both ways", func(c *Config) {
			c.Participants = map[string]string{"pay": "h:1"}
			c.Resources = map[string]string{"pay": "dbname=x"}
		}, "both a resource and a participant"},
		{"log format", func(c *Config) { c.LogFormat = "xml" }, "log-format"},
		{"tracing", func(c *Config) { c.Tracing = "zipkin" }, "tracing"},
		{"negative db wait", func(c *Config) { c.DBWait = -time.Second }, "db-wait"},
		{"holder not a resource", func(c *Config) { c.Holder = "ledger" }, "holder \"ledger\": not one of the resources"},
		{"holder on MariaDB", func(c *Config) {
			c.Holder = "shop"
			c.Resources = map[string]string{"shop": "mysql://app@db:3306/shop"}
		}, "a decision holder is a PostgreSQL database"},
		{"holder name with the mark", func(c *Config) {
			c.Holder = "a-h-b"
			c.Resources = map[string]string{"a-h-b": "dbname=x"}
		}, "holder"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			c.DataDir = t.TempDir()
			tc.mod(&c)
			err := c.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error saying %q, got %v", tc.want, err)
			}
		})
	}
	c := defaultConfig()
	c.DataDir = "d"
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "id is required") {
		t.Fatalf("defaults without an id: %v", err)
	}
	c.ID = "orders-1"
	if err := c.validate(); err != nil {
		t.Fatalf("defaults with a data dir and an id: %v", err)
	}
}

// testConfig is the defaults with an id.
func testConfig() Config {
	c := defaultConfig()
	c.ID = "test-1"
	return c
}

func TestConfigFileThenFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "txcoord.yaml")
	if err := os.WriteFile(file, []byte("listen: 127.0.0.1:1\ndata_dir: /nonexistent/x\nid: from-file\ntx_timeout: 45s\nparticipants:\n  pay: 127.0.0.1:2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newServeCmd()
	cmd.SetArgs([]string{"--config", file, "--id", "from-flag", "--listen", "bad-address"})
	cmd.SetOut(io.Discard)
	err := cmd.Execute()
	// The flag's listen wins over the file's, and is refused; the file's
	// other settings are read (no "data-dir is required").
	if err == nil || !strings.Contains(err.Error(), `listen "bad-address"`) || strings.Contains(err.Error(), "data-dir is required") {
		t.Fatalf("got %v", err)
	}
	c := defaultConfig()
	if err := loadFile(file, &c); err != nil {
		t.Fatal(err)
	}
	if c.ID != "from-file" || c.TxTimeout != 45*time.Second || c.Participants["pay"] != "127.0.0.1:2" {
		t.Fatalf("file read as %+v", c)
	}
	if err := os.WriteFile(file, []byte("lisen: 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := loadFile(file, &c); err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Fatalf("a misspelt key: %v", err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The server with mutual TLS: a client without a certificate is refused,
// one with a certificate signed by the CA begins a transaction; health and
// metrics answer; cancelling (SIGTERM) stops it cleanly.
func TestServeMutualTLSHealthMetricsAndStop(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.New(t)
	caPath := ca.CAFile
	sc, sk := ca.Server("server")
	cc, ck := ca.Client("client")
	cfg := testConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listen, cfg.MetricsListen = freeAddr(t), freeAddr(t)
	cfg.TLS = TLSConfig{Cert: sc, Key: sk, CA: caPath}
	cfg.LogLevel = "warn"
	cfg.InitLog = true
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	defer func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop within 20s of its context ending")
		}
	}()

	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(caPath)
	pool.AppendCertsFromPEM(caPEM)
	call := func(withCert bool) error {
		tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if withCert {
			cert, err := tls.LoadX509KeyPair(cc, ck)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			return err
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		hs, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: "txcoord.v1.Coordinator"}, grpc.WaitForReady(true))
		if err != nil {
			return err
		}
		if hs.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health: %v", hs.GetStatus())
		}
		_, err = txcoordv1.NewCoordinatorClient(conn).Begin(cctx, &txcoordv1.BeginRequest{})
		return err
	}
	if err := call(true); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	if err := call(false); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	resp, err := http.Get("http://" + cfg.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "txcoord_transactions_begun_total 1") {
		t.Fatalf("metrics do not count the Begin:\n%s", body)
	}
}

// Admin calls with an admin token file configured: refused without the
// token, served with it over TLS; Begin needs none (no policy: open).
func TestServeAdminToken(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "admin-tokens")
	const tok = "s3cr3t-admin-token-0123"
	if err := os.WriteFile(tokFile, []byte("# operators\n"+tok+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ca := testpki.New(t)
	sc, sk := ca.Server("server")
	cfg := testConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.AdminTokenFile = tokFile
	cfg.TLS = TLSConfig{Cert: sc, Key: sk}
	cfg.LogLevel = "error"
	cfg.InitLog = true
	if err := serve(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a token file others can read: %v", err)
	}
	if err := os.Chmod(tokFile, 0o600); err != nil {
		t.Fatal(err)
	}
	plain := cfg
	plain.TLS = TLSConfig{}
	if err := plain.validate(); err == nil || !strings.Contains(err.Error(), "admin-token-file needs TLS") {
		t.Fatalf("a token file without TLS: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(credentials.NewTLS(ca.ClientConfig("", ""))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := txcoordv1.NewCoordinatorClient(conn)
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	_, err = api.Recover(cctx, &txcoordv1.RecoverRequest{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("recover without the token: %v", err)
	}
	if _, err := api.Recover(metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer wrong-token-0123456789"), &txcoordv1.RecoverRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("recover with an unknown token: %v", err)
	}
	if _, err := api.Recover(metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+tok), &txcoordv1.RecoverRequest{}); err != nil {
		t.Fatalf("recover with the token: %v", err)
	}
	if _, err := api.Begin(cctx, &txcoordv1.BeginRequest{}); err != nil {
		t.Fatalf("begin needs no admin token: %v", err)
	}
	// F12: a request past --max-recv-msg-size (64 KiB) is refused.
	big := &txcoordv1.ResolveRequest{Txid: "x", Reason: strings.Repeat("r", 100<<10)}
	if _, err := api.Resolve(metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+tok), big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 100 KiB request: %v", err)
	}
}

// Secure by default: a non-loopback listen address without TLS exits with
// a one-line reason; with --insecure it starts (and warns).
func TestServeRefusesPlaintextBeyondLoopback(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	cfg.Listen, cfg.MetricsListen = "0.0.0.0:"+port, "off"
	cfg.LogLevel = "error"
	cfg.InitLog = true
	err := serve(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "without TLS") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("want a one-line refusal, got %v", err)
	}
	ca := testpki.New(t)
	sc, sk := ca.Server("server")
	cfg.TLS = TLSConfig{Cert: sc, Key: sk, CA: ca.CAFile}
	if err := serve(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--policy") {
		t.Fatalf("mutual TLS but no policy: %v", err)
	}
	cfg.TLS = TLSConfig{}
	cfg.Insecure = true
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	conn, err := grpc.NewClient("127.0.0.1:"+port, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	if _, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("--insecure did not start: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	c := testConfig()
	c.DataDir = "d"
	c.AdminCNs = []string{"ops"}
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "SPIFFE") {
		t.Fatalf("--admin-cn: %v", err)
	}
	c.AdminCNs = nil
	c.Grants = []string{"operator"}
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "--grant") {
		t.Fatalf("a malformed grant: %v", err)
	}
}

// A DSN's password never appears in what serve says about a resource it
// cannot reach.
func TestServeKeepsDSNSecrets(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.LogLevel = "error"
	cfg.InitLog = true
	cfg.DBWait = 300 * time.Millisecond
	cfg.RequireResources = true
	dsnFile := filepath.Join(t.TempDir(), "ledger.dsn")
	if err := os.WriteFile(dsnFile, []byte("host=127.0.0.1 port=1 user=app password=hunter9-secret dbname=x connect_timeout=2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Resources = map[string]string{
		"ledger": "postgres://app:hunter2-secret@" + freeAddr(t) + "/ledger?sslmode=disable&connect_timeout=2",
		"stock":  "host=127.0.0.1 port=1 user=app password=hunter3-secret dbname=stock sslmode=disable connect_timeout=2",
		// F11's forms: a password in the query, spaces around '=', a
		// quoted password with a space, an invalid escape that makes
		// the URL parser quote the whole DSN.
		"query":  "postgres://" + freeAddr(t) + "/ledger?user=app&password=hunter5-secret&sslmode=disable&connect_timeout=2",
		"spaced": "host=127.0.0.1 port=1 user=app password = hunter6-secret dbname=stock sslmode=disable connect_timeout=2",
		"quoted": "host=127.0.0.1 port=1 user=app password='hunter7 secret' dbname=stock sslmode=disable connect_timeout=2",
		"escape": "postgres://app:hunter8%zz@" + freeAddr(t) + "/ledger",
		// A DSN kept off the command line, in a file.
		"filed": "@" + dsnFile,
	}
	for name, dsn := range cfg.Resources {
		c := cfg
		c.Resources = map[string]string{name: dsn}
		err := serve(context.Background(), c)
		if err == nil {
			t.Fatalf("%s: serve started with an unreachable database", name)
		}
		if strings.Contains(err.Error(), "hunter") {
			t.Fatalf("the password leaked: %v", err)
		}
	}
	if _, err := adminTokens(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing admin token file was accepted")
	}
	short := filepath.Join(t.TempDir(), "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := adminTokens(short); err == nil || strings.Contains(err.Error(), "abc") {
		t.Fatalf("a short token: %v", err)
	}
}

// F8: a missing or empty decision log refuses to start without --init-log:
// a new log would presume abort for whatever the lost one decided.
func TestServeRefusesAMissingLogWithoutInitLog(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.LogLevel = "error"
	for _, empty := range []bool{false, true} {
		if empty {
			if err := os.WriteFile(filepath.Join(cfg.DataDir, "txcoord.wal"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		err := serve(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "--init-log") {
			t.Fatalf("empty file %v: %v", empty, err)
		}
	}
}

// A resource whose database is down at start does not keep the server
// from serving: the health service reports it NOT_SERVING under
// txcoord.v1.Coordinator/resource/NAME, and the server SERVING.
func TestServeStartsWithAResourceDown(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.LogLevel = "error"
	cfg.InitLog = true
	cfg.Resources = map[string]string{"ledger": "postgres://app@" + freeAddr(t) + "/ledger?sslmode=disable&connect_timeout=2"}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		all, err1 := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: "txcoord.v1.Coordinator"}, grpc.WaitForReady(true))
		res, err2 := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: "txcoord.v1.Coordinator/resource/ledger"})
		ccancel()
		if err1 == nil && err2 == nil && all.GetStatus() == healthpb.HealthCheckResponse_SERVING && res.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %v %v, resource %v %v: want SERVING with the resource NOT_SERVING", all, err1, res, err2)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A stop while the server starts (here waiting for a resource's database
// that is down, as a standby that has just won the election may be) is a
// clean stop, not a failure.
func TestServeStoppedWhileStartingIsClean(t *testing.T) {
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.LogLevel = "error"
	cfg.InitLog = true
	cfg.RequireResources = true
	cfg.DBWait = time.Minute
	cfg.Resources = map[string]string{"ledger": "postgres://app@" + freeAddr(t) + "/ledger?sslmode=disable&connect_timeout=2"}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serve stopped while waiting for a database: %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// A MariaDB database given as a mysql:// URL is a resource like a
// PostgreSQL one: opened, checked (its marker table created) and reported
// serving.
func TestServeTakesAMariaDBResource(t *testing.T) {
	db := mariadbtest.StartT(t, mariadbtest.Options{NoFsync: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := db.CreateDB(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen, cfg.MetricsListen = freeAddr(t), "off"
	cfg.LogLevel = "error"
	cfg.InitLog = true
	cfg.Resources = map[string]string{"shop": db.URL("shop")}
	served := make(chan error, 1)
	go func() { served <- serve(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: "txcoord.v1.Coordinator/resource/shop"}, grpc.WaitForReady(true))
		ccancel()
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resource shop: %v %v, want SERVING", res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := db.Exec(ctx, "shop", "SELECT 1 FROM txcoord_markers LIMIT 1"); err != nil {
		t.Fatalf("the marker table was not created: %v", err)
	}
}

// Two coordinators with one id on etcd: the first is the primary and
// serves; a second without --standby refuses to start; one with --standby
// waits, not listening, and takes over when the primary stops.
func TestServeFailsOverToAStandby(t *testing.T) {
	cluster, err := etcdtest.Start(1)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	base := testConfig()
	base.ID = "ha-1"
	base.MetricsListen = "off"
	base.LogLevel = "error"
	base.Etcd.Endpoints = cluster.Endpoints
	base.Etcd.Lease = 2 * time.Second
	a, b, c := base, base, base
	a.Listen, b.Listen, c.Listen = freeAddr(t), freeAddr(t), freeAddr(t)
	b.Standby = true
	for _, cfg := range []Config{a, b, c} {
		if err := cfg.validate(); err != nil {
			t.Fatal(err)
		}
	}
	ctxA, stopA := context.WithCancel(context.Background())
	servedA := make(chan error, 1)
	go func() { servedA <- serve(ctxA, a) }()
	defer func() { stopA(); <-servedA }()
	serving := func(addr string, wait time.Duration) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		for {
			hs, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "txcoord.v1.Coordinator"}, grpc.WaitForReady(true))
			if err == nil && hs.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("not serving within %v: %v %v", wait, hs, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := serving(a.Listen, 20*time.Second); err != nil {
		t.Fatalf("the primary: %v", err)
	}
	if err := serve(context.Background(), c); err == nil || !strings.Contains(err.Error(), "--standby") {
		t.Fatalf("a second primary for the id: %v", err)
	}
	ctxB, stopB := context.WithCancel(context.Background())
	servedB := make(chan error, 1)
	go func() { servedB <- serve(ctxB, b) }()
	defer func() { stopB(); <-servedB }()
	if err := serving(b.Listen, time.Second); err == nil {
		t.Fatal("the standby serves while the primary does")
	}
	// A client given both addresses reaches whichever serves.
	both, err := client.DialCoordinators([]string{b.Listen, a.Listen}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer both.Close()
	cl := client.New(both)
	run := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for {
			err := cl.Run(ctx, func(context.Context) error { return nil })
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%s: a transaction through DialCoordinators: %v", when, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	run("before the failover")
	began := time.Now()
	stopA()
	if err := <-servedA; err != nil {
		t.Fatalf("the primary's stop: %v", err)
	}
	servedA <- nil
	if err := serving(b.Listen, 20*time.Second); err != nil {
		t.Fatalf("the standby after the primary stopped: %v", err)
	}
	t.Logf("the standby served %v after the primary stopped", time.Since(began).Round(time.Millisecond))
	run("after the failover")
	conn, err := grpc.NewClient(b.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	api := txcoordv1.NewCoordinatorClient(conn)
	bt, err := api.Begin(ctx, &txcoordv1.BeginRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Commit(ctx, &txcoordv1.CommitRequest{Txid: bt.GetTxid()}); err != nil {
		t.Fatalf("a transaction at the new primary: %v", err)
	}

	// The primary's lease ends under it (revoked here; a partition or a
	// pause does the same once it expires): it stops with an error, and
	// a standby takes over.
	a.Standby = true
	ctxA2, stopA2 := context.WithCancel(context.Background())
	servedA2 := make(chan error, 1)
	go func() { servedA2 <- serve(ctxA2, a) }()
	defer func() { stopA2(); <-servedA2 }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var leaders *clientv3.GetResponse
	for deadline := time.Now().Add(10 * time.Second); ; {
		// The primary's key, and the standby's campaigning behind it.
		leaders, err = cli.Get(ctx, base.Etcd.Prefix+base.Prefix+"."+base.ID+"/primary", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
		if err == nil && len(leaders.Kvs) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("election keys: %v %v", leaders, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(leaders.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-servedB:
		if !errors.Is(err, errLostPrimary) {
			t.Fatalf("the primary whose lease ended: %v, want errLostPrimary", err)
		}
		servedB <- nil
	case <-time.After(20 * time.Second):
		t.Fatal("the primary kept serving after its lease ended")
	}
	if err := serving(a.Listen, 20*time.Second); err != nil {
		t.Fatalf("the standby after the primary's lease ended: %v", err)
	}
}

// The decision log and the election on an etcd cluster that takes clients
// only over mutual TLS: with --etcd-ca, --etcd-cert and --etcd-key the
// coordinator serves; without a client certificate it does not start, and
// says why.
func TestServeOnEtcdOverMutualTLS(t *testing.T) {
	ca := testpki.New(t)
	srvCert, srvKey := ca.Server("etcd")
	cluster, err := etcdtest.StartTLS(1, etcdtest.TLS{Cert: srvCert, Key: srvKey, CA: ca.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	if !strings.HasPrefix(cluster.Endpoints[0], "https://") {
		t.Fatalf("endpoint %s is not TLS", cluster.Endpoints[0])
	}
	cliCert, cliKey := ca.Client("txcoord")
	cfg := testConfig()
	cfg.ID = "tls-1"
	cfg.MetricsListen = "off"
	cfg.LogLevel = "error"
	cfg.Listen = freeAddr(t)
	cfg.Etcd.Endpoints = cluster.Endpoints
	cfg.Etcd.Lease = 2 * time.Second
	cfg.Etcd.CA, cfg.Etcd.Cert, cfg.Etcd.Key = ca.CAFile, cliCert, cliKey
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}

	noCert := cfg
	noCert.Etcd.Cert, noCert.Etcd.Key = "", ""
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = serve(ctx, noCert)
	if err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("serve without a client certificate for etcd: %v, want a refusal that names etcd", err)
	}
	if b, rerr := os.ReadFile(cliKey); rerr == nil && strings.Contains(err.Error(), strings.TrimSpace(string(b))) {
		t.Fatal("the error shows the key")
	}
	t.Logf("without a client certificate: %v", err)

	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- serve(sctx, cfg) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	conn, err := grpc.NewClient(cfg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := txcoordv1.NewCoordinatorClient(conn)
	var bt *txcoordv1.BeginResponse
	for deadline := time.Now().Add(20 * time.Second); ; {
		bt, err = api.Begin(ctx, &txcoordv1.BeginRequest{}, grpc.WaitForReady(true))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Begin at a coordinator on etcd over TLS: %v", err)
	}
	if _, err := api.Commit(ctx, &txcoordv1.CommitRequest{Txid: bt.GetTxid()}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}
