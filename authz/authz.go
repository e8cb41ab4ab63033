// Package authz enforces txcoord's trust model on every gRPC call of the
// coordinator (txcoord.v1.Coordinator) and of a service's participant API
// (txcoord.v1.Participant, served by package sdk).
//
// # Identities
//
// A caller is one of:
//   - the coordinator: the only caller of a participant's Prepare, Commit,
//     Rollback and ListPrepared;
//   - participant NAME: a service that joins transactions under NAME. Only
//     it may announce NAME, move NAME to a new address, register NAME's
//     branches and ask their outcomes;
//   - client: begins transactions, and commits, rolls back and reads the
//     ones it began (a transaction belongs to the identity that began it;
//     one the server no longer tracks, finished long ago or begun before a
//     restart, has no known owner: its outcome is GetOutcome's to tell);
//   - observer: reads every transaction (GetTransaction, ListTransactions,
//     GetOutcome);
//   - operator: an observer that also rolls back any live transaction
//     (never commits one: only its client may), resolves in-doubt ones to
//     ABORT and runs recovery passes;
//   - admin (break-glass): an operator that may also resolve to COMMIT,
//     which is a heuristic decision when the log holds none.
//
// admin implies operator, and operator implies observer. One identity may
// hold several roles.
//
// # Establishing an identity
//
// An identity is a SPIFFE ID (spiffe://trust-domain/path), established by
// one of:
//   - a client certificate verified by mutual TLS whose URI SAN is that ID
//     (exactly one spiffe:// URI; with a trust domain configured, in it);
//   - a bearer token (metadata "authorization: Bearer <token>") whose
//     SHA-256 the policy binds to that ID. A token is refused over a
//     connection without TLS.
//
// A caller with neither is anonymous and has no role, unless the
// Authorizer is configured insecure (Config.Anonymous), as for a
// development server on loopback. Config.Loopback grants roles to
// anonymous callers from a loopback address only; it is off unless asked
// for, since a sidecar, a port-forward or any local process is loopback.
//
// # Enforcement
//
// Rules maps every method to the roles that may call it; a method without
// a rule is refused. Register installs the check in front of every method
// of a service, whatever interceptors the gRPC server has, and puts the
// caller's Identity in the handler's context (FromContext), where the
// handler checks what a role alone cannot: which transaction belongs to
// whom and which participant name an identity speaks for. Every refusal
// is counted by kind (Refusals) and logged as a security event, at most
// once a second per kind.
package authz

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/pki"
)

// Role is what an identity may do.
type Role string

// The roles.
const (
	Coordinator Role = "coordinator"
	Participant Role = "participant"
	Client      Role = "client"
	Observer    Role = "observer"
	Operator    Role = "operator"
	Admin       Role = "admin"
)

// AllRoles lists every role.
var AllRoles = []Role{Coordinator, Participant, Client, Observer, Operator, Admin}

func (r Role) valid() bool {
	for _, x := range AllRoles {
		if r == x {
			return true
		}
	}
	return false
}

func roleNames() []string {
	out := make([]string, len(AllRoles))
	for i, r := range AllRoles {
		out[i] = string(r)
	}
	return out
}

// Anonymous is the ID of a caller that presented no credential.
const Anonymous = "anonymous"

// Identity is an authenticated caller.
type Identity struct {
	// ID is the caller's SPIFFE ID, or Anonymous.
	ID string
	// Via says how it was established: "certificate", "token" or "none".
	Via string

	roles          map[Role]bool
	participant    string // the name it speaks for
	anyParticipant bool   // insecure: speaks for every name
}

// Has reports whether the identity holds role r (admin implies operator,
// operator implies observer).
func (i *Identity) Has(r Role) bool {
	if i == nil {
		return false
	}
	switch r {
	case Observer:
		return i.roles[Observer] || i.roles[Operator] || i.roles[Admin]
	case Operator:
		return i.roles[Operator] || i.roles[Admin]
	}
	return i.roles[r]
}

// Speaks reports whether the identity may act as participant name.
func (i *Identity) Speaks(name string) bool {
	if i == nil || !i.Has(Participant) {
		return false
	}
	return i.anyParticipant || (name != "" && i.participant == name)
}

// ParticipantName is the participant name bound to the identity ("" if
// none, or any in an insecure configuration).
func (i *Identity) ParticipantName() string {
	if i == nil {
		return ""
	}
	return i.participant
}

// Roles lists the identity's roles.
func (i *Identity) Roles() []Role {
	var out []Role
	for _, r := range AllRoles {
		if i != nil && i.roles[r] {
			out = append(out, r)
		}
	}
	return out
}

func (i *Identity) String() string {
	if i == nil {
		return Anonymous
	}
	return i.ID
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext is the identity the authorization check put in a handler's
// context (false when the call did not pass one).
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(*Identity)
	return id, ok && id != nil
}

// Config configures an Authorizer.
type Config struct {
	// PolicyFile is read at New and by Reload (and Watch).
	PolicyFile string
	// Policy is used when there is no PolicyFile.
	Policy *Policy
	// Static entries are added to the policy on every (re)load: identities
	// given as flags rather than in the file.
	Static []Entry
	// Anonymous are the roles of a caller with no credential: empty in a
	// secure configuration. With Participant among them, such a caller
	// speaks for every participant name.
	Anonymous []Role
	// Loopback are extra roles of a caller with no credential whose
	// address is on the loopback interface.
	Loopback []Role
	// Rules overrides the method table (default Rules).
	Rules map[string]Rule
	// Logger receives security events (default: discard).
	Logger *slog.Logger
}

// compiled is a loaded policy.
type compiled struct {
	trustDomain string
	byID        map[string]*Identity
	byToken     map[[sha256.Size]byte]*Identity
}

// Authorizer authenticates callers and checks them against the rules.
type Authorizer struct {
	cfg    Config
	rules  map[string]Rule
	logger *slog.Logger
	pol    atomic.Pointer[compiled]
	stamp  atomic.Value // string: the policy file's size and mtime at load

	// anon and anonLoop are the identities of callers without a credential,
	// from elsewhere and from the loopback interface: made once, shared by
	// every call (nothing changes an Identity once it is made).
	anon, anonLoop *Identity

	mu       sync.Mutex
	refusals map[string]uint64
	lastLog  map[string]time.Time
	muted    map[string]uint64
}

// New loads the policy and returns an Authorizer.
func New(cfg Config) (*Authorizer, error) {
	for _, r := range append(append([]Role(nil), cfg.Anonymous...), cfg.Loopback...) {
		if !r.valid() {
			return nil, fmt.Errorf("authz: unknown role %q", r)
		}
	}
	a := &Authorizer{cfg: cfg, rules: cfg.Rules, logger: cfg.Logger,
		refusals: map[string]uint64{}, lastLog: map[string]time.Time{}, muted: map[string]uint64{}}
	if a.rules == nil {
		a.rules = Rules
	}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	a.anon = anonymousIdentity(cfg.Anonymous)
	a.anonLoop = anonymousIdentity(cfg.Anonymous, cfg.Loopback...)
	if err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Insecure admits every caller with every role, credential or not: for
// tests and for a program that enforces its own checks. Callers that do
// present a certificate or a token are still identified by it.
func Insecure() *Authorizer {
	a, err := New(Config{Anonymous: AllRoles})
	if err != nil {
		panic(err)
	}
	return a
}

// ForCoordinator is the Authorizer of a participant's service: only the
// coordinator whose certificate carries SPIFFE ID id may call it.
func ForCoordinator(id string) (*Authorizer, error) {
	return New(Config{Policy: &Policy{Identities: []Entry{{ID: id, Roles: []Role{Coordinator}}}}})
}

// Secure reports whether callers without a credential have no role.
func (a *Authorizer) Secure() bool { return len(a.cfg.Anonymous) == 0 && len(a.cfg.Loopback) == 0 }

// Reload reads the policy file again (if any). A policy that does not
// parse leaves the previous one in force.
func (a *Authorizer) Reload() error {
	p := a.cfg.Policy
	if a.cfg.PolicyFile != "" {
		stamp := fileStamp(a.cfg.PolicyFile)
		loaded, err := LoadPolicy(a.cfg.PolicyFile)
		if err != nil {
			return err
		}
		p = loaded
		a.stamp.Store(stamp)
	}
	merged := &Policy{}
	if p != nil {
		merged.TrustDomain = p.TrustDomain
		merged.Identities = append(merged.Identities, p.Identities...)
	}
	merged.Identities = append(merged.Identities, a.cfg.Static...)
	if err := merged.Validate(); err != nil {
		return err
	}
	c := &compiled{trustDomain: merged.TrustDomain, byID: map[string]*Identity{}, byToken: map[[sha256.Size]byte]*Identity{}}
	for _, e := range merged.Identities {
		id := &Identity{ID: e.ID, roles: map[Role]bool{}, participant: e.Participant}
		for _, r := range e.Roles {
			id.roles[r] = true
		}
		c.byID[e.ID] = id
		for _, t := range e.TokenSHA256 {
			var k [sha256.Size]byte
			d, _ := hex.DecodeString(t)
			copy(k[:], d)
			c.byToken[k] = id
		}
	}
	a.pol.Store(c)
	return nil
}

// Identities counts the identities of the policy in force.
func (a *Authorizer) Identities() int { return len(a.pol.Load().byID) }

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d:%d", fi.Size(), fi.ModTime().UnixNano())
}

// Watch reloads the policy file whenever it changes (checked every
// interval) until ctx ends; a policy that does not load is logged and the
// previous one stays in force.
func (a *Authorizer) Watch(ctx context.Context, interval time.Duration) {
	if a.cfg.PolicyFile == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if old, _ := a.stamp.Load().(string); fileStamp(a.cfg.PolicyFile) == old {
			continue
		}
		if err := a.Reload(); err != nil {
			a.logger.Error("policy file changed but does not load; the previous policy stays in force", "file", a.cfg.PolicyFile, "err", err)
			a.stamp.Store(fileStamp(a.cfg.PolicyFile))
			continue
		}
		a.logger.Info("policy reloaded", "file", a.cfg.PolicyFile, "identities", a.Identities())
	}
}

// Authenticate establishes the caller's identity; an error is an
// UNAUTHENTICATED status.
func (a *Authorizer) Authenticate(ctx context.Context) (*Identity, error) {
	pol := a.pol.Load()
	pr, _ := peer.FromContext(ctx)
	var ti credentials.TLSInfo
	isTLS := false
	if pr != nil {
		ti, isTLS = pr.AuthInfo.(credentials.TLSInfo)
	}
	if tok, ok := bearer(ctx); ok {
		if !isTLS {
			return nil, a.deny(ctx, "token-over-plaintext", codes.Unauthenticated, nil,
				"a bearer token is refused over a connection without TLS: it would travel in plaintext")
		}
		// Looked up by digest: the time taken depends on the digest of
		// what the caller sent, which tells it nothing of a real token.
		if id, ok := pol.byToken[sha256.Sum256([]byte(tok))]; ok {
			return withVia(id, "token"), nil
		}
		return nil, a.deny(ctx, "unknown-token", codes.Unauthenticated, nil, "the bearer token stands for no identity")
	}
	open := len(a.cfg.Anonymous) > 0
	if isTLS && len(ti.State.VerifiedChains) > 0 && len(ti.State.PeerCertificates) > 0 {
		sid, err := pki.SPIFFEID(ti.State.PeerCertificates[0])
		switch {
		case open && (err != nil || sid == ""):
			// An open configuration does not tell callers apart.
			return a.anonymous(pr), nil
		case err != nil:
			return nil, a.deny(ctx, "bad-certificate", codes.Unauthenticated, nil, "client certificate: %v", err)
		case sid == "":
			return nil, a.deny(ctx, "bad-certificate", codes.Unauthenticated, nil,
				"the client certificate (subject %q) carries no spiffe:// URI SAN: it identifies nobody", ti.State.PeerCertificates[0].Subject.CommonName)
		case pol.trustDomain != "" && pki.TrustDomain(sid) != pol.trustDomain:
			return nil, a.deny(ctx, "foreign-trust-domain", codes.Unauthenticated, nil,
				"the client certificate's identity %s is outside the trust domain %s", sid, pol.trustDomain)
		}
		if id, ok := pol.byID[sid]; ok {
			return withVia(id, "certificate"), nil
		}
		// Unlisted: the roles of anonymous callers (none when secure),
		// under its own name.
		id := *a.anonymous(nil)
		id.ID, id.Via = sid, "certificate"
		return &id, nil
	}
	return a.anonymous(pr), nil
}

// anonymous is a caller with no credential that identifies it.
func (a *Authorizer) anonymous(pr *peer.Peer) *Identity {
	if len(a.cfg.Loopback) > 0 && pr != nil && loopback(pr.Addr) {
		return a.anonLoop
	}
	return a.anon
}

// anonymousIdentity is the identity holding roles and extra.
func anonymousIdentity(roles []Role, extra ...Role) *Identity {
	id := &Identity{ID: Anonymous, Via: "none", roles: map[Role]bool{}}
	for _, r := range append(append([]Role(nil), roles...), extra...) {
		id.roles[r] = true
	}
	id.anyParticipant = id.roles[Participant]
	return id
}

func withVia(id *Identity, via string) *Identity {
	c := *id
	c.Via = via
	return &c
}

func bearer(ctx context.Context) (string, bool) {
	// Not FromIncomingContext: it copies every header of the call.
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(tok), true
		}
	}
	return "", false
}

func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// Authorize checks the caller of method against the rules and returns a
// context carrying its identity.
func (a *Authorizer) Authorize(ctx context.Context, method string) (context.Context, error) {
	rule, ok := a.rules[method]
	if !ok {
		return nil, a.deny(ctx, "no-rule", codes.PermissionDenied, nil, "%s has no authorization rule: refused", method)
	}
	if rule.Public {
		return ctx, nil
	}
	id, have := FromContext(ctx)
	if !have {
		var err error
		if id, err = a.Authenticate(ctx); err != nil {
			return nil, err
		}
		ctx = NewContext(ctx, id)
	}
	for _, r := range rule.Roles {
		if id.Has(r) {
			return ctx, nil
		}
	}
	if id.ID == Anonymous {
		return nil, a.deny(ctx, "anonymous", codes.Unauthenticated, id,
			"%s needs a credential (a client certificate with a spiffe:// URI SAN, or a bearer token over TLS) of role %s", method, joinRoles(rule.Roles))
	}
	return nil, a.deny(ctx, "role", codes.PermissionDenied, id,
		"%s (roles: %s) may not call %s: it needs role %s", id.ID, joinRoles(id.Roles()), method, joinRoles(rule.Roles))
}

func joinRoles(rs []Role) string {
	if len(rs) == 0 {
		return "none"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, " or ")
}

// Deny refuses a call for a reason the handler found (kind names it in
// Refusals): it logs a security event and returns the status.
func (a *Authorizer) Deny(ctx context.Context, kind string, code codes.Code, format string, args ...any) error {
	id, _ := FromContext(ctx)
	return a.deny(ctx, kind, code, id, format, args...)
}

func (a *Authorizer) deny(ctx context.Context, kind string, code codes.Code, id *Identity, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	now := time.Now()
	a.mu.Lock()
	a.refusals[kind]++
	logIt := now.Sub(a.lastLog[kind]) >= time.Second
	muted := a.muted[kind]
	if logIt {
		a.lastLog[kind], a.muted[kind] = now, 0
	} else {
		a.muted[kind]++
	}
	a.mu.Unlock()
	if logIt {
		from := ""
		if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
			from = pr.Addr.String()
		}
		method, _ := grpc.Method(ctx)
		a.logger.Warn("security: call refused", "kind", kind, "identity", id.String(), "peer", from, "method", method, "reason", msg, "same_kind_unlogged", muted)
	}
	return status.Error(code, msg)
}

// Refusals counts refused calls by kind since New.
func (a *Authorizer) Refusals() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]uint64, len(a.refusals))
	for k, v := range a.refusals {
		out[k] = v
	}
	return out
}

// UnaryInterceptor checks every unary call against the rules.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := a.Authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor checks every streaming call against the rules.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := a.Authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return h(srv, &stream{ServerStream: ss, ctx: ctx})
	}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

// Register registers impl for desc on r with the check in front of every
// method, before the request is decoded and whatever interceptors the
// server has.
func (a *Authorizer) Register(r grpc.ServiceRegistrar, desc *grpc.ServiceDesc, impl any) {
	d := *desc
	d.Methods = make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		full, h := "/"+desc.ServiceName+"/"+m.MethodName, m.Handler
		d.Methods[i] = grpc.MethodDesc{MethodName: m.MethodName,
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				ctx, err := a.Authorize(ctx, full)
				if err != nil {
					return nil, err
				}
				return h(srv, ctx, dec, icpt)
			}}
	}
	d.Streams = make([]grpc.StreamDesc, len(desc.Streams))
	for i, s := range desc.Streams {
		full, h := "/"+desc.ServiceName+"/"+s.StreamName, s.Handler
		s.Handler = func(srv any, ss grpc.ServerStream) error {
			ctx, err := a.Authorize(ss.Context(), full)
			if err != nil {
				return err
			}
			return h(srv, &stream{ServerStream: ss, ctx: ctx})
		}
		d.Streams[i] = s
	}
	r.RegisterService(&d, impl)
}

// ParticipantID is the identity the policy binds participant name to.
func (a *Authorizer) ParticipantID(name string) (string, bool) {
	for _, id := range a.pol.Load().byID {
		if id.participant == name && id.roles[Participant] {
			return id.ID, true
		}
	}
	return "", false
}
