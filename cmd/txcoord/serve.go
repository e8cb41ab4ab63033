package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/dsn"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/mysql"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"

	_ "github.com/lib/pq"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "txcoord",
		Short:         "The txcoord two-phase commit coordinator server",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd())
	return root
}

func newServeCmd() *cobra.Command {
	cfg := defaultConfig()
	var configFile string
	var resources, participants []string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the Coordinator gRPC API, health and metrics",
		Long: `Serve the Coordinator gRPC API (proto/txcoord/v1), the gRPC health service
and Prometheus metrics. Decisions are logged in DATA_DIR/txcoord.wal; a
restart with the same data directory recovers every transaction left
unfinished. SIGTERM or SIGINT stops it gracefully: new work is refused,
calls in flight finish (within --shutdown-timeout), and phase two that is
still running stays in the log for the next start.`,
		Example: `  txcoord serve --data-dir /var/lib/txcoord --id orders-1 \
      --participant payment=10.0.0.7:7002 --participant inventory=10.0.0.8:7003
  txcoord serve --config /etc/txcoord.yaml
  txcoord serve --data-dir ./data --resource ledger='postgres://txc@db1/ledger' \
      --tls-cert server.pem --tls-key server-key.pem --tls-client-ca clients-ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				fileCfg := defaultConfig()
				if err := loadFile(configFile, &fileCfg); err != nil {
					return err
				}
				// Flags given on the command line win over the file.
				fs := pflag.NewFlagSet("file", pflag.ContinueOnError)
				bindFlags(fs, &fileCfg)
				var setErr error
				cmd.Flags().Visit(func(f *pflag.Flag) {
					if fs.Lookup(f.Name) != nil {
						setErr = errors.Join(setErr, fs.Set(f.Name, f.Value.String()))
					}
				})
				if setErr != nil {
					return setErr
				}
				cfg = fileCfg
			}
			r, err := parsePairs("resource", resources)
			if err != nil {
				return err
			}
			p, err := parsePairs("participant", participants)
			if err != nil {
				return err
			}
			cfg.Resources = merge(cfg.Resources, r)
			cfg.Participants = merge(cfg.Participants, p)
			if err := cfg.validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (keys as the flags, dashes as underscores)")
	bindFlags(f, &cfg)
	f.StringArrayVar(&resources, "resource", nil, "resource NAME=DSN that recovery scans (repeatable): a PostgreSQL DSN, or mysql://user:password@host:port/database for MariaDB/MySQL through XA; NAME=@/path reads the DSN from a file, NAME=env:VAR from the environment")
	f.StringArrayVar(&participants, "participant", nil, "remote participant NAME=HOST:PORT known before it announces itself (repeatable)")
	return cmd
}

// bindFlags binds the scalar settings of cfg to fs, with cfg's values as
// defaults.
func bindFlags(f *pflag.FlagSet, cfg *Config) {
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC listen address")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "HTTP address of /metrics and /healthz, or off")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the decision log (created if missing)")
	f.StringVar(&cfg.ID, "id", cfg.ID, "coordinator id in every gid: unique among coordinators sharing a database")
	f.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "gid prefix")
	f.StringVar(&cfg.Holder, "holder", cfg.Holder, "--resource NAME whose database keeps the transactions' commit decisions (a decision holder: no log write on the commit path)")
	f.DurationVar(&cfg.TxTimeout, "tx-timeout", cfg.TxTimeout, "roll back a transaction not finished this long after Begin")
	f.DurationVar(&cfg.MaxTxTimeout, "max-tx-timeout", cfg.MaxTxTimeout, "the longest timeout a Begin may ask for")
	f.DurationVar(&cfg.PrepareTimeout, "prepare-timeout", cfg.PrepareTimeout, "bound on phase one")
	f.DurationVar(&cfg.CallTimeout, "call-timeout", cfg.CallTimeout, "bound on each phase-two or rollback call")
	f.DurationVar(&cfg.InDoubtTimeout, "in-doubt-timeout", cfg.InDoubtTimeout, "resolve an orphaned prepared branch once older than this")
	f.DurationVar(&cfg.RecoveryInterval, "recovery-interval", cfg.RecoveryInterval, "period of the recovery pass (negative: off)")
	f.BoolVar(&cfg.StartupRecovery, "startup-recovery", cfg.StartupRecovery, "run a recovery pass at start (off, with a negative --recovery-interval, leaves everything in doubt for an operator)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long a graceful stop waits for calls in flight")
	f.StringSliceVar(&cfg.Etcd.Endpoints, "etcd-endpoints", cfg.Etcd.Endpoints, "etcd client URLs: keep the decision log on etcd, with one primary per coordinator id")
	f.StringVar(&cfg.Etcd.Prefix, "etcd-prefix", cfg.Etcd.Prefix, "etcd key prefix of txcoord's keys")
	f.DurationVar(&cfg.Etcd.Lease, "etcd-lease", cfg.Etcd.Lease, "the primary's lease: a standby takes over this long after the primary stops renewing it")
	f.StringVar(&cfg.Etcd.CA, "etcd-ca", cfg.Etcd.CA, "CA (PEM) of etcd's server certificates")
	f.StringVar(&cfg.Etcd.Cert, "etcd-cert", cfg.Etcd.Cert, "client certificate (PEM) for etcd")
	f.StringVar(&cfg.Etcd.Key, "etcd-key", cfg.Etcd.Key, "client key (PEM) for etcd")
	f.BoolVar(&cfg.Etcd.KeepHistory, "etcd-keep-history", cfg.Etcd.KeepHistory, "leave etcd's revision history alone (by default the primary compacts it every 5m up to the revision it saw 5m before): for a cluster whose operator compacts it")
	f.BoolVar(&cfg.Standby, "standby", cfg.Standby, "wait to become the primary of the coordinator id instead of refusing to start while another process is")
	f.BoolVar(&cfg.InitLog, "init-log", cfg.InitLog, "create the decision log if DATA_DIR has none (the first start of a new coordinator)")
	f.DurationVar(&cfg.DBWait, "db-wait", cfg.DBWait, "how long start-up waits for the decision holder's database server (every resource's with --require-resources) that is down or starting (0: fail at once)")
	f.BoolVar(&cfg.RequireResources, "require-resources", cfg.RequireResources, "refuse to start while a resource's database cannot be reached (default: start without it, reported down)")
	f.StringVar(&cfg.TLS.Cert, "tls-cert", cfg.TLS.Cert, "server certificate (PEM); with --tls-key turns TLS on")
	f.StringVar(&cfg.TLS.Key, "tls-key", cfg.TLS.Key, "server private key (PEM)")
	f.StringVar(&cfg.TLS.CA, "tls-client-ca", cfg.TLS.CA, "CA (PEM) that client certificates must chain to (mutual TLS)")
	f.StringVar(&cfg.ParticipantTLS.CA, "participant-tls-ca", cfg.ParticipantTLS.CA, "CA (PEM) that participants' certificates must chain to; turns TLS on for calls to participants")
	f.StringVar(&cfg.ParticipantTLS.Cert, "participant-tls-cert", cfg.ParticipantTLS.Cert, "client certificate (PEM) presented to participants")
	f.StringVar(&cfg.ParticipantTLS.Key, "participant-tls-key", cfg.ParticipantTLS.Key, "client private key (PEM) for participants")
	f.StringVar(&cfg.Policy, "policy", cfg.Policy, "trust model policy file (YAML: identities and roles; reloaded on change and SIGHUP)")
	f.StringArrayVar(&cfg.Grants, "grant", cfg.Grants, "give an identity a role: ROLE=spiffe://... or participant:NAME=spiffe://... (repeatable; roles: coordinator, participant, client, observer, operator, admin)")
	f.StringVar(&cfg.AdminTokenFile, "admin-token-file", cfg.AdminTokenFile, "file (mode 0600) of tokens, one per line, each standing for a break-glass admin; over TLS only")
	f.StringSliceVar(&cfg.AdminCNs, "admin-cn", cfg.AdminCNs, "refused: identities are SPIFFE IDs (use --grant admin=spiffe://...)")
	_ = f.MarkHidden("admin-cn")
	f.BoolVar(&cfg.AdminLoopback, "admin-loopback", cfg.AdminLoopback, "give loopback callers without a credential the admin role (a sidecar or port-forward is loopback too)")
	f.BoolVar(&cfg.Insecure, "insecure", cfg.Insecure, "allow a non-loopback --listen without mutual TLS and a policy")
	f.IntVar(&cfg.Limits.MaxRecvMsgSize, "max-recv-msg-size", cfg.Limits.MaxRecvMsgSize, "largest request in bytes")
	f.Uint32Var(&cfg.Limits.MaxConcurrentStreams, "max-concurrent-streams", cfg.Limits.MaxConcurrentStreams, "concurrent calls per connection")
	f.IntVar(&cfg.Limits.MaxConnections, "max-connections", cfg.Limits.MaxConnections, "open connections at once")
	f.DurationVar(&cfg.Limits.ConnectionTimeout, "connection-timeout", cfg.Limits.ConnectionTimeout, "bound on a new connection's handshake")
	f.DurationVar(&cfg.Limits.MaxConnectionIdle, "max-connection-idle", cfg.Limits.MaxConnectionIdle, "close a connection idle this long")
	f.DurationVar(&cfg.Limits.KeepaliveMinTime, "keepalive-min-time", cfg.Limits.KeepaliveMinTime, "a client pinging more often than this is disconnected")
	f.DurationVar(&cfg.Limits.MaxCallDuration, "max-call-duration", cfg.Limits.MaxCallDuration, "deadline of a call that has none or a later one")
	f.IntVar(&cfg.Limits.MaxParticipants, "max-participants", cfg.Limits.MaxParticipants, "remote participants known at once")
	f.IntVar(&cfg.Limits.MaxLivePerIdentity, "max-live-per-identity", cfg.Limits.MaxLivePerIdentity, "live transactions one identity may have begun")
	f.IntVar(&cfg.Limits.MaxBranches, "max-branches", cfg.Limits.MaxBranches, "branches registered with one transaction")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json")
	f.StringVar(&cfg.Tracing, "tracing", cfg.Tracing, "OpenTelemetry spans: none, stdout, or otlp")
	f.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", cfg.OTLPEndpoint, "OTLP/gRPC collector host:port for --tracing otlp (default: OTEL_EXPORTER_OTLP_ENDPOINT)")
	f.BoolVar(&cfg.OTLPInsecure, "otlp-insecure", cfg.OTLPInsecure, "send spans to --otlp-endpoint without TLS")
}

func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func newLogger(cfg Config, w *os.File) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(ctx context.Context, cfg Config) error {
	logger := newLogger(cfg, os.Stderr)
	if err := cfg.transportCheck(logger); err != nil {
		return err
	}
	authorizer, err := newAuthorizer(cfg, logger)
	if err != nil {
		return err
	}

	shutdownTracing, err := setupTracing(ctx, cfg)
	if err != nil {
		return err
	}
	defer shutdownTracing()

	metrics := server.NewMetrics()
	var log wal.Log
	var prim *primary
	walPath := "etcd"
	if cfg.Etcd.enabled() {
		if prim, err = becomePrimary(ctx, cfg, logger); err != nil {
			if cfg.Standby && ctx.Err() != nil {
				logger.Info("stopped while standing by")
				return nil
			}
			return err
		}
		defer func() {
			select {
			case <-prim.lost():
				prim.abandon()
			default:
				prim.close()
			}
		}()
		log = prim.log
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
			return fmt.Errorf("data directory: %w", err)
		}
		walPath = filepath.Join(cfg.DataDir, "txcoord.wal")
		if fi, err := os.Stat(walPath); (err != nil || fi.Size() == 0) && !cfg.InitLog {
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("decision log %s: %w", walPath, err)
			}
			return fmt.Errorf("no decision log at %s: a new, empty log would presume abort for every transaction the lost one decided; "+
				"start with --init-log only for a coordinator that has never run (or whose every transaction is finished), and otherwise restore the log", walPath)
		}
		blog, err := wal.OpenBolt(walPath, wal.BoltOptions{Owner: cfg.Prefix + "." + cfg.ID, OnSync: metrics.ObserveSync})
		if err != nil {
			if errors.Is(err, wal.ErrLocked) {
				return fmt.Errorf("%w: is another txcoord running on %s?", err, cfg.DataDir)
			}
			return err
		}
		defer func() {
			if err := blog.Close(); err != nil {
				logger.Error("closing the log", "err", err)
			}
		}()
		log = blog
	}

	// A stop signal while starting (waiting for a database server,
	// checking the holder, claiming the id) stops the process: it is no
	// failure. A standby that wins the election just as it is told to stop
	// lands here.
	startErr := func(err error) error {
		if ctx.Err() != nil {
			logger.Info("stopped while starting", "err", err)
			return nil
		}
		return err
	}
	var resources []participant.Resource
	for _, name := range sortedKeys(cfg.Resources) {
		spec := cfg.Resources[name]
		connStr, err := dsn.Resolve(spec)
		if err != nil {
			return fmt.Errorf("resource %s: %w", name, err)
		}
		if dsn.Literal(spec) {
			logger.Warn("a resource's DSN carries its password in the configuration (as a flag, ps shows it); give NAME=@/path/to/dsn-file or NAME=env:VARIABLE, or use PGPASSFILE",
				"resource", name, "dsn", dsn.Redact(spec))
		}
		required := cfg.RequireResources || name == cfg.Holder
		onWait := func(err error, retryIn time.Duration) {
			logger.Warn("resource database not reachable; waiting for it", "resource", name, "err", dsn.Scrub(err, connStr), "retry_in", retryIn)
		}
		var (
			r interface {
				participant.Resource
				Close() error
				Unchecked() bool
			}
		)
		if isMySQL(connStr) {
			if name == cfg.Holder {
				return fmt.Errorf("holder %s: a decision holder is a PostgreSQL database; %s is MariaDB/MySQL", name, dsn.Redact(connStr))
			}
			m, err := mysql.OpenWait(ctx, name, connStr, mysql.Options{AllowDown: !required}, cfg.DBWait, onWait)
			if err != nil {
				return startErr(fmt.Errorf("resource %s (%s): %w", name, dsn.Redact(connStr), dsn.Scrub(err, connStr)))
			}
			for _, w := range m.Warnings() {
				logger.Warn("resource database weakens durability", "resource", name, "setting", w)
			}
			r = m
		} else {
			p, err := postgres.OpenWait(ctx, name, "postgres", connStr, postgres.Options{AllowDown: !required}, cfg.DBWait, onWait)
			if err != nil {
				return startErr(fmt.Errorf("resource %s (%s): %w", name, dsn.Redact(connStr), dsn.Scrub(err, connStr)))
			}
			r = p
		}
		if r.Unchecked() {
			logger.Warn("resource database not reachable: starting without it (reported down); its branches wait, and none is begun there until it is back",
				"resource", name, "dsn", dsn.Redact(connStr))
		}
		defer r.Close()
		resources = append(resources, r)
	}

	dialFor, err := participantDial(cfg.ParticipantTLS, authorizer, logger)
	if err != nil {
		return err
	}
	c, err := coordinator.New(ctx, coordinator.Config{
		ID: cfg.ID, Prefix: cfg.Prefix, Log: log, Resources: resources, Holder: cfg.Holder,
		PrepareTimeout: cfg.PrepareTimeout, CallTimeout: cfg.CallTimeout,
		InDoubtTimeout: cfg.InDoubtTimeout, RecoveryInterval: cfg.RecoveryInterval,
		// Remote participants must be registered before the first pass
		// can reach them.
		SkipStartupRecovery: true,
		Logger:              logger, Observe: metrics.ObservePhase, Tracer: otel.Tracer("txcoord"),
	})
	if err != nil {
		return startErr(err)
	}
	srv, err := server.New(server.Config{
		Coordinator: c, TxTimeout: cfg.TxTimeout, MaxTxTimeout: cfg.MaxTxTimeout,
		ParticipantDial: dialFor, Authorizer: authorizer,
		MaxParticipants: cfg.Limits.MaxParticipants, MaxLivePerIdentity: cfg.Limits.MaxLivePerIdentity, MaxBranches: cfg.Limits.MaxBranches,
		Logger: logger, Tracer: otel.Tracer("txcoord"),
	})
	if err != nil {
		c.Close()
		return err
	}
	for _, name := range sortedKeys(cfg.Participants) {
		if _, err := srv.AddParticipant(name, cfg.Participants[name]); err != nil {
			c.Close()
			return fmt.Errorf("participant %s: %w", name, err)
		}
	}
	metrics.Attach(c, srv)
	// The start-up pass runs once the server listens: admin calls,
	// GetOutcome and Announce are served meanwhile, transaction calls get
	// UNAVAILABLE, and the health service says NOT_SERVING.
	srv.Starting()

	opts := append(cfg.Limits.serverOptions(),
		grpc.ChainUnaryInterceptor(authorizer.UnaryInterceptor()), grpc.ChainStreamInterceptor(authorizer.StreamInterceptor()))
	if cfg.TLS.enabled() {
		creds, err := serverCreds(cfg.TLS, cfg.open(), logger)
		if err != nil {
			c.Close()
			return err
		}
		opts = append(opts, grpc.Creds(creds))
	}
	gs := grpc.NewServer(opts...)
	srv.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus("txcoord.v1.Coordinator", healthpb.HealthCheckResponse_NOT_SERVING)

	lis, err := cfg.Limits.listen(cfg.Listen)
	if err != nil {
		c.Close()
		return err
	}
	var httpSrv *http.Server
	if cfg.MetricsListen != "" && cfg.MetricsListen != "off" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mlis, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			c.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
		go func() { _ = httpSrv.Serve(mlis) }()
	}

	runCtx, stopRun := context.WithCancel(context.Background())
	sweeper := make(chan struct{})
	go func() { defer close(sweeper); srv.Run(runCtx) }()
	watcher := make(chan struct{})
	go func() { defer close(watcher); watchPolicy(runCtx, authorizer, logger) }()
	healthWatch := make(chan struct{})
	go func() { defer close(healthWatch); resourceHealth(runCtx, c, hs) }()
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	logger.Info("txcoord listening", "listen", lis.Addr().String(), "metrics", cfg.MetricsListen, "id", cfg.ID, "wal", walPath, "tls", cfg.TLS.enabled(), "mtls", cfg.TLS.CA != "")
	recovered := make(chan struct{})
	go func() {
		defer close(recovered)
		if !cfg.StartupRecovery {
			logger.Warn("start-up recovery pass skipped (--startup-recovery=false)")
		} else if rep, err := c.Recover(runCtx); err != nil {
			logger.Warn("start-up recovery pass incomplete; the periodic pass goes on", "err", err)
		} else {
			logger.Info("start-up recovery pass", "redriven", rep.Redriven, "committed", rep.Committed, "rolled_back", rep.RolledBack, "unfinished", len(rep.Unfinished))
		}
		srv.Ready()
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		hs.SetServingStatus("txcoord.v1.Coordinator", healthpb.HealthCheckResponse_SERVING)
		logger.Info("txcoord serving")
	}()

	var serveErr error
	var lost <-chan struct{}
	if prim != nil {
		lost = prim.lost()
	}
	select {
	case <-ctx.Done():
		logger.Info("stopping: refusing new calls, finishing those in flight", "timeout", cfg.ShutdownTimeout)
	case serveErr = <-served:
	case <-lost:
		logger.Error("lost the primary's lease on etcd: stopping at once; a standby takes over")
		serveErr = errLostPrimary
		prim.abandon() // decisions in flight fail now (outcome unknown), not at etcd's timeout
	}
	hs.Shutdown()
	if errors.Is(serveErr, errLostPrimary) {
		gs.Stop() // its decisions would be refused by the fence anyway
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownTimeout):
		logger.Warn("calls still in flight after the shutdown timeout; stopping them (their decisions, if logged, are driven after restart)")
		gs.Stop()
	}
	stopRun()
	<-sweeper
	<-watcher
	<-healthWatch
	<-recovered
	// Phase two still running stays in the log; the next start drives it.
	c.Close()
	_ = srv.Close()
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = httpSrv.Shutdown(sctx)
		cancel()
	}
	st := c.Stats()
	logger.Info("txcoord stopped", "committed", st.Committed, "aborted", st.Aborted, "unknown", st.Unknown, "pending_decisions", st.Log.Pending)
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	return nil
}

// resourceHealth reports each resource in the health service as
// "txcoord.v1.Coordinator/resource/NAME": NOT_SERVING while it is down.
func resourceHealth(ctx context.Context, c *coordinator.Coordinator, hs *health.Server) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		down := c.DownResources()
		for _, r := range c.Resources() {
			st := healthpb.HealthCheckResponse_SERVING
			if _, isDown := down[r.Name()]; isDown {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
			hs.SetServingStatus("txcoord.v1.Coordinator/resource/"+r.Name(), st)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchPolicy reloads the policy file when it changes and on SIGHUP.
func watchPolicy(ctx context.Context, a *authz.Authorizer, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go a.Watch(ctx, 2*time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := a.Reload(); err != nil {
				logger.Error("SIGHUP: the policy does not load; the previous one stays in force", "err", err)
			} else {
				logger.Info("SIGHUP: policy reloaded", "identities", a.Identities())
			}
		}
	}
}

func setupTracing(ctx context.Context, cfg Config) (func(), error) {
	var exp sdktrace.SpanExporter
	var err error
	switch cfg.Tracing {
	case "stdout":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(os.Stderr))
	case "otlp":
		var opts []otlptracegrpc.Option
		if cfg.OTLPEndpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint))
		}
		if cfg.OTLPInsecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	default:
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	otel.SetTracerProvider(tp)
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx)
	}, nil
}

// isMySQL reports whether a resource's DSN names a MariaDB or MySQL
// database: a mysql:// or mariadb:// URL.
func isMySQL(connStr string) bool {
	return strings.HasPrefix(connStr, "mysql://") || strings.HasPrefix(connStr, "mariadb://")
}
