package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/pki"
)

// Limits bound what callers can make the server hold.
type Limits struct {
	MaxRecvMsgSize       int           `yaml:"max_recv_msg_size"`
	MaxConcurrentStreams uint32        `yaml:"max_concurrent_streams"`
	MaxConnections       int           `yaml:"max_connections"`
	ConnectionTimeout    time.Duration `yaml:"connection_timeout"`
	MaxConnectionIdle    time.Duration `yaml:"max_connection_idle"`
	KeepaliveMinTime     time.Duration `yaml:"keepalive_min_time"`
	MaxCallDuration      time.Duration `yaml:"max_call_duration"`
	MaxParticipants      int           `yaml:"max_participants"`
	MaxLivePerIdentity   int           `yaml:"max_live_per_identity"`
	MaxBranches          int           `yaml:"max_branches"`
}

func defaultLimits() Limits {
	return Limits{
		MaxRecvMsgSize:       64 << 10,
		MaxConcurrentStreams: 256,
		MaxConnections:       4096,
		ConnectionTimeout:    5 * time.Second,
		MaxConnectionIdle:    15 * time.Minute,
		KeepaliveMinTime:     10 * time.Second,
		MaxCallDuration:      5 * time.Minute,
		MaxParticipants:      1000,
		MaxLivePerIdentity:   10000,
		MaxBranches:          256,
	}
}

func (l Limits) validate(bad func(string, ...any)) {
	for _, v := range []struct {
		name string
		n    int64
	}{{"max-recv-msg-size", int64(l.MaxRecvMsgSize)}, {"max-concurrent-streams", int64(l.MaxConcurrentStreams)}, {"max-connections", int64(l.MaxConnections)},
		{"max-participants", int64(l.MaxParticipants)}, {"max-live-per-identity", int64(l.MaxLivePerIdentity)}, {"max-branches", int64(l.MaxBranches)},
		{"connection-timeout", int64(l.ConnectionTimeout)}, {"max-connection-idle", int64(l.MaxConnectionIdle)}, {"keepalive-min-time", int64(l.KeepaliveMinTime)},
		{"max-call-duration", int64(l.MaxCallDuration)}} {
		if v.n <= 0 {
			bad("%s must be positive", v.name)
		}
	}
	if l.MaxRecvMsgSize > 0 && l.MaxRecvMsgSize < 4<<10 {
		bad("max-recv-msg-size %d is below 4096 bytes: a Resolve's reason would not fit", l.MaxRecvMsgSize)
	}
}

// serverOptions are the gRPC server's limits and its deadline cap.
func (l Limits) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(l.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.ConnectionTimeout(l.ConnectionTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.MaxConnectionIdle, Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(capDeadline(l.MaxCallDuration)),
	}
}

// capDeadline gives every call a deadline no later than max from now.
func capDeadline(max time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > max {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, max)
			defer cancel()
		}
		return h(ctx, req)
	}
}

// listen opens the gRPC listener, at most MaxConnections at once.
func (l Limits) listen(addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return netutil.LimitListener(lis, l.MaxConnections), nil
}

// loopbackHost reports whether a listen address accepts loopback
// connections only.
func loopbackHost(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseGrants reads --grant ROLE=SPIFFE_ID and
// --grant participant:NAME=SPIFFE_ID into policy entries.
func parseGrants(grants []string) ([]authz.Entry, error) {
	byID := map[string]*authz.Entry{}
	var order []string
	for _, g := range grants {
		role, id, ok := strings.Cut(g, "=")
		if !ok || role == "" || id == "" {
			return nil, fmt.Errorf("--grant %q: want ROLE=spiffe://... or participant:NAME=spiffe://...", g)
		}
		name := ""
		if r, n, ok := strings.Cut(role, ":"); ok {
			role, name = r, n
		}
		e, seen := byID[id]
		if !seen {
			e = &authz.Entry{ID: id}
			byID[id] = e
			order = append(order, id)
		}
		e.Roles = append(e.Roles, authz.Role(role))
		if name != "" {
			if e.Participant != "" && e.Participant != name {
				return nil, fmt.Errorf("--grant: %s is granted two participant names (%s, %s): one identity speaks for one name", id, e.Participant, name)
			}
			e.Participant = name
		}
	}
	out := make([]authz.Entry, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	return out, nil
}

// newAuthorizer builds the server's trust model from the configuration:
// the policy file and grants (secure), or, without either, an open server
// on which anyone may begin, join and read, and operators' calls are taken
// only from loopback callers with --admin-loopback.
func newAuthorizer(cfg Config, logger *slog.Logger) (*authz.Authorizer, error) {
	static, err := parseGrants(cfg.Grants)
	if err != nil {
		return nil, err
	}
	tokens, err := adminTokens(cfg.AdminTokenFile)
	if err != nil {
		return nil, err
	}
	for i, t := range tokens {
		static = append(static, authz.Entry{ID: fmt.Sprintf("spiffe://txcoord.local/admin-token/%d", i+1),
			Roles: []authz.Role{authz.Admin}, TokenSHA256: []string{authz.TokenDigest(t)}})
	}
	ac := authz.Config{PolicyFile: cfg.Policy, Static: static, Logger: logger}
	if cfg.open() {
		ac.Anonymous = []authz.Role{authz.Client, authz.Participant, authz.Observer}
	}
	if cfg.AdminLoopback {
		ac.Loopback = []authz.Role{authz.Admin}
	}
	return authz.New(ac)
}

// open: no policy and no grants, so callers are not told apart.
func (c *Config) open() bool { return c.Policy == "" && len(c.Grants) == 0 }

// transportCheck is secure by default: a listen address other than
// loopback needs TLS and a policy, unless --insecure says otherwise.
func (c *Config) transportCheck(logger *slog.Logger) error {
	if !c.open() && !c.ParticipantTLS.enabled() {
		logger.Warn("calls to participants are in plaintext: nothing checks that the service answering for a name is that participant; give --participant-tls-ca, --participant-tls-cert and --participant-tls-key")
	}
	if loopbackHost(c.Listen) {
		if c.open() {
			logger.Warn("no --policy or --grant: any local process may begin, join, commit and read transactions (fine for development on loopback)")
		}
		return nil
	}
	switch {
	case c.Insecure:
		logger.Warn("--insecure: serving on a non-loopback address without the trust model's protection; anyone who reaches it may act as a client or participant",
			"listen", c.Listen, "tls", c.TLS.enabled(), "policy", c.Policy != "" || len(c.Grants) > 0)
		return nil
	case !c.TLS.enabled():
		return fmt.Errorf("refusing to listen on %s without TLS: give --tls-cert, --tls-key and --tls-client-ca (and --policy), listen on loopback, or pass --insecure", c.Listen)
	case c.TLS.CA == "" || c.open():
		return fmt.Errorf("refusing to listen on %s without mutual TLS and a --policy (or --grant): callers could not be told apart; give --tls-client-ca and --policy, or pass --insecure", c.Listen)
	}
	return nil
}

// serverCreds serves TLS with certificate and CA files reloaded on
// rotation. Open (no policy), a client certificate is required; with a
// policy, a caller may present a token instead, and the policy decides.
func serverCreds(t TLSConfig, open bool, logger *slog.Logger) (credentials.TransportCredentials, error) {
	r, err := pki.NewReloader(pki.Files{Cert: t.Cert, Key: t.Key, CA: t.CA}, func(err error) { logger.Error("tls", "err", err) })
	if err != nil {
		return nil, err
	}
	auth := tls.RequireAndVerifyClientCert
	if !open {
		auth = tls.VerifyClientCertIfGiven
	}
	return credentials.NewTLS(r.ServerConfig(auth)), nil
}

// participantDial is the dialer of calls to participants: with a CA and a
// policy binding the participant's name to an identity, the participant's
// certificate must carry that identity, whatever address it announced,
// as the policy says at each handshake.
func participantDial(t TLSConfig, a *authz.Authorizer, logger *slog.Logger) (func(name string) []grpc.DialOption, error) {
	if !t.enabled() {
		creds := insecure.NewCredentials()
		return func(string) []grpc.DialOption { return []grpc.DialOption{grpc.WithTransportCredentials(creds)} }, nil
	}
	r, err := pki.NewReloader(pki.Files{Cert: t.Cert, Key: t.Key, CA: t.CA}, func(err error) { logger.Error("participant tls", "err", err) })
	if err != nil {
		return nil, fmt.Errorf("participant tls: %w", err)
	}
	return func(name string) []grpc.DialOption {
		// Asked at each handshake: a reloaded policy that binds the
		// name to another identity holds from the next connection on.
		want := func() string {
			id, _ := a.ParticipantID(name)
			return id
		}
		return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(r.ClientConfigFor(t.ServerName, want)))}
	}, nil
}

// checkSecretFile refuses a secret file others can read.
func checkSecretFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is readable or writable by others (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	return nil
}

var errAdminCN = errors.New("admin-cn is no longer accepted: an identity is the SPIFFE ID in a certificate's URI SAN " +
	"(a common name from a shared CA can be minted by anyone who gets a certificate); grant it with --grant admin=spiffe://... or in --policy")
