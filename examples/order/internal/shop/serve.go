package shop

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/pki"
	"github.com/txcoord/txcoord/sdk"
)

// ServiceConfig configures one service process.
type ServiceConfig struct {
	Kind Kind
	// Name is the service's participant name at the coordinator.
	Name string
	// Listen is where the gRPC server listens (host:port).
	Listen string
	// Advertise is where the coordinator reaches this service (default:
	// Listen).
	Advertise string
	// DSN is the service's database: a PostgreSQL URL, or
	// mysql://user:password@host:port/database for MariaDB (through XA).
	DSN string
	// Coordinator is the txcoord server's address (host:port), or the
	// addresses of a primary and its standbys, comma-separated.
	Coordinator string
	// InDoubtTimeout and CheckInterval: see sdk.Config.
	InDoubtTimeout, CheckInterval time.Duration
	// StopTimeout bounds the graceful stop; calls still running after it
	// are cut.
	StopTimeout time.Duration
	// DBWait is how long start-up waits for a database server that is
	// down or still starting (0: do not wait).
	DBWait time.Duration
	// TLS, when set, serves and calls over mutual TLS; CoordinatorID is
	// then the SPIFFE ID of the only caller the participant API takes.
	// Without TLS the service listens on loopback only.
	TLS           TLSFiles
	CoordinatorID string
	Logger        *slog.Logger
}

// TLSFiles are a process's certificate, key and CA (PEM files), for
// example from txctl certs issue.
type TLSFiles struct{ Cert, Key, CA string }

func (f TLSFiles) enabled() bool { return f.Cert != "" }

// bindTLS adds the TLS flags to fs.
func bindTLS(fs *flag.FlagSet, f *TLSFiles) {
	fs.StringVar(&f.Cert, "tls-cert", "", "certificate (PEM) with this process's spiffe:// identity; turns mutual TLS on")
	fs.StringVar(&f.Key, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&f.CA, "tls-ca", "", "CA (PEM) every peer's certificate must chain to")
}

func (f TLSFiles) check() error {
	if f.Cert == "" && f.Key == "" && f.CA == "" {
		return nil
	}
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return errors.New("--tls-cert, --tls-key and --tls-ca go together")
	}
	return nil
}

// reloader loads f (nil without TLS).
func (f TLSFiles) reloader(logger *slog.Logger) (*pki.Reloader, error) {
	if !f.enabled() {
		return nil, nil
	}
	return pki.NewReloader(pki.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}, func(err error) { logger.Error("tls", "err", err) })
}

// Default listen addresses of the services.
var defaultListen = map[Kind]string{
	Orders:    "127.0.0.1:7101",
	Payment:   "127.0.0.1:7102",
	Inventory: "127.0.0.1:7103",
}

// ParseServiceFlags parses the command line of service k. Errors (and
// flag.ErrHelp) have been reported on stderr already.
func ParseServiceFlags(k Kind, args []string) (ServiceConfig, error) {
	cfg := ServiceConfig{Kind: k}
	fs := flag.NewFlagSet(k.String(), flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", defaultListen[k], "host:port of the gRPC server")
	fs.StringVar(&cfg.Advertise, "advertise", "", "host:port where the coordinator reaches this service (default: --listen)")
	fs.StringVar(&cfg.DSN, "dsn", "", "database URL (required): PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/"+k.String()+"?sslmode=disable, or MariaDB, e.g. mysql://root@127.0.0.1:3306/"+k.String())
	fs.StringVar(&cfg.Coordinator, "coordinator", "127.0.0.1:7070", "host:port of the txcoord server (host:port,host:port for a primary and its standbys)")
	fs.StringVar(&cfg.Name, "name", k.String(), "participant name at the coordinator")
	fs.DurationVar(&cfg.InDoubtTimeout, "in-doubt-timeout", 10*time.Second, "a branch prepared longer than this asks the coordinator for its outcome")
	fs.DurationVar(&cfg.CheckInterval, "check-interval", 2*time.Second, "how often to look for branches in doubt")
	fs.DurationVar(&cfg.StopTimeout, "stop-timeout", 10*time.Second, "how long a graceful stop waits for calls in flight")
	fs.DurationVar(&cfg.DBWait, "db-wait", time.Minute, "how long start-up waits for a database server that is down or starting (0: fail at once)")
	bindTLS(fs, &cfg.TLS)
	fs.StringVar(&cfg.CoordinatorID, "coordinator-id", "", "with TLS: the coordinator's spiffe:// identity, the only caller of the participant API")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments: %q", fs.Args())
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	if cfg.DSN == "" {
		err := errors.New("--dsn is required")
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	if cfg.DBWait < 0 {
		err := fmt.Errorf("--db-wait %v: want a duration of 0 or more", cfg.DBWait)
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	if err := cfg.TLS.check(); err == nil && cfg.TLS.enabled() && cfg.CoordinatorID == "" {
		err = errors.New("--coordinator-id is required with TLS: the participant API takes calls from the coordinator only")
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	} else if err != nil {
		fmt.Fprintln(fs.Output(), err)
		return cfg, err
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Listen
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", cfg.Name)
	return cfg, nil
}

// Serve runs a service until ctx ends, then stops gracefully: the gRPC
// server finishes the calls in flight (within StopTimeout), then the
// participant stops and the database is closed. Branches left prepared are
// settled when the service starts again.
func Serve(ctx context.Context, cfg ServiceConfig) (err error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Listen
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	res, err := openDatabase(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, res.Close()) }()
	// Every call the participant makes to the coordinator has a deadline
	// (sdk.Config.CallTimeout): a branch registered while txcoord restarts
	// waits for it rather than being left in doubt.
	tlsr, err := cfg.TLS.reloader(logger)
	if err != nil {
		return err
	}
	pcfg := sdk.Config{
		Name: cfg.Name, Address: cfg.Advertise, Resource: res,
		InDoubtTimeout: cfg.InDoubtTimeout, CheckInterval: cfg.CheckInterval, Logger: logger,
	}
	srvOpts := []grpc.ServerOption{grpc.UnaryInterceptor(sdk.UnaryServerInterceptor())}
	switch {
	case tlsr != nil:
		// Only the coordinator may finish or list this service's
		// branches.
		if pcfg.Authorizer, err = authz.ForCoordinator(cfg.CoordinatorID); err != nil {
			return err
		}
		srvOpts = append(srvOpts, grpc.Creds(credentials.NewTLS(tlsr.ServerConfig(tls.RequireAndVerifyClientCert))))
	case loopbackAddr(cfg.Listen):
		pcfg.InsecureAnyCaller = true
	default:
		return fmt.Errorf("shop: refusing to listen on %s without TLS: the participant API would take Commit and Rollback from anyone (give --tls-cert, --tls-key, --tls-ca and --coordinator-id)", cfg.Listen)
	}
	coord, err := client.DialCoordinators(strings.Split(cfg.Coordinator, ","), dialOptions(tlsr, true)...)
	if err != nil {
		return fmt.Errorf("shop: coordinator %s: %w", cfg.Coordinator, err)
	}
	defer func() { err = errors.Join(err, coord.Close()) }()
	pcfg.Coordinator = coord
	p, err := sdk.New(pcfg)
	if err != nil {
		return err
	}

	srv := grpc.NewServer(srvOpts...)
	if err := register(srv, cfg.Kind, p, dialectOf(cfg.DSN)); err != nil {
		return err
	}
	p.Register(srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("shop: %w", err)
	}
	pctx, stopParticipant := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = p.Run(pctx) })
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	logger.Info("serving", "kind", cfg.Kind, "listen", lis.Addr().String(), "advertise", cfg.Advertise,
		"coordinator", cfg.Coordinator, "database", res.Database())

	select {
	case <-ctx.Done():
		logger.Info("stopping")
	case err = <-served:
		err = fmt.Errorf("shop: serve: %w", err)
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(cfg.StopTimeout):
		logger.Warn("calls still running after the stop timeout; cutting them")
		srv.Stop()
		<-stopped
	}
	stopParticipant()
	wg.Wait()
	st := p.Stats()
	logger.Info("stopped", "prepared", st.Prepared, "registered", st.Registered, "committed", st.Committed,
		"aborted", st.Aborted, "rolled_back", st.RolledBack, "resolved_in_doubt", st.Resolved)
	return err
}

// database is a service's database, of either kind.
type database interface {
	sdk.Resource
	Close() error
	Database() string
}

// openDatabase opens the service's database and creates its tables. A
// server that is down or still starting (it may be restarting together
// with the service) is waited for, up to cfg.DBWait; any other error (a
// bad DSN, max_prepared_transactions at 0) fails at once.
func openDatabase(ctx context.Context, cfg ServiceConfig, logger *slog.Logger) (database, error) {
	deadline := time.Now().Add(cfg.DBWait)
	d := dialectOf(cfg.DSN)
	unreachable := postgres.Unreachable
	if d.mysql {
		unreachable = mysql.Unreachable
	}
	onWait := func(err error, retryIn time.Duration) {
		logger.Warn("database not reachable; waiting for it", "err", err, "retry_in", retryIn)
	}
	for {
		var res database
		var err error
		if d.mysql {
			res, err = mysql.OpenWait(ctx, cfg.Name, cfg.DSN, mysql.Options{}, time.Until(deadline), onWait)
		} else {
			res, err = postgres.OpenWait(ctx, cfg.Name, postgres.DriverPQ, cfg.DSN, postgres.Options{}, time.Until(deadline), onWait)
		}
		if err != nil {
			if unreachable(err) {
				return nil, fmt.Errorf("shop: the database server did not accept connections within --db-wait %v: %w", cfg.DBWait, err)
			}
			return nil, err
		}
		err = d.createSchema(ctx, cfg.Kind, res.DB())
		if err == nil {
			return res, nil
		}
		_ = res.Close()
		if !unreachable(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return nil, err
		}
	}
}

// dialOptions are the options of the connections the example makes:
// mutual TLS with tlsr's certificate (plaintext when nil: loopback only),
// and reconnection backoff from 100ms to a second, so that a restarted
// peer is reached again soon. With waitForReady, a call made while the peer is
// unreachable waits for it (within the call's deadline) instead of failing
// at once.
func dialOptions(tlsr *pki.Reloader, waitForReady bool) []grpc.DialOption {
	bo := backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}
	creds := insecure.NewCredentials()
	if tlsr != nil {
		creds = credentials.NewTLS(tlsr.ClientConfig("", ""))
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 2 * time.Second}),
	}
	if waitForReady {
		opts = append(opts, grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	}
	return opts
}

// Main runs the service of kind k as a command with args (its flags) and
// returns the exit code: 0 after a graceful stop (SIGTERM or SIGINT), 2
// for bad flags, 1 for any other failure.
func Main(k Kind, args []string) int {
	cfg, err := ParseServiceFlags(k, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := Serve(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", k, err)
		return 1
	}
	return 0
}

// loopbackAddr reports whether host:port listens on loopback only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}
