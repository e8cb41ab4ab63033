// Package server serves a coordinator over gRPC: remote participants
// (services using package sdk) join global transactions that clients
// (package client) begin, commit and roll back, and operators inspect and
// resolve.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/wal"
)

// Config configures a Server.
type Config struct {
	// Coordinator runs the transactions. Required. Its resources (for
	// example PostgreSQL databases) keep their names; remote participants
	// are added as they register or announce themselves.
	Coordinator *coordinator.Coordinator
	// TxTimeout: a transaction neither committed nor rolled back this long
	// after Begin is rolled back (default 1m). A Begin may ask for less or
	// more, up to MaxTxTimeout (default 10m).
	TxTimeout, MaxTxTimeout time.Duration
	// Retain is how long a finished transaction is remembered to answer a
	// repeated Commit or Rollback (default 10m); after that the log answers.
	Retain time.Duration
	// MaxRetained caps the finished transactions remembered (default
	// 100,000): past it the oldest are forgotten before Retain, so memory
	// stays bounded at any rate of transactions.
	MaxRetained int
	// SettleAfter is how long after its outcome a remembered transaction
	// keeps its full state (default 5s); then, once the coordinator is
	// done with it, only its status and outcome are kept.
	SettleAfter time.Duration
	// DialOptions are used to call remote participants (give transport
	// credentials).
	DialOptions []grpc.DialOption
	// ParticipantDial, if set, gives options for calls to one participant
	// before DialOptions: for example TLS that checks the certificate
	// carries the identity bound to that name.
	ParticipantDial func(name string) []grpc.DialOption
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Tracer makes a span per Begin (default: none).
	Tracer trace.Tracer
	// Authorizer checks every call (package authz: the trust model).
	// Required: authz.Insecure() admits every caller.
	Authorizer *authz.Authorizer
	// MaxParticipants caps the remote participants known (default 1000):
	// a new name past it is refused.
	MaxParticipants int
	// MaxLivePerIdentity caps the live transactions one identity has
	// begun (default 10000).
	MaxLivePerIdentity int
	// MaxBranches caps the branches registered with one transaction
	// (default 256).
	MaxBranches int
}

// Server implements the Coordinator gRPC service.
type Server struct {
	txcoordv1.UnimplementedCoordinatorServer
	cfg    Config
	c      *coordinator.Coordinator
	logger *slog.Logger

	mu      sync.Mutex
	txs     map[ids.TxID]*entry
	remotes []*remote.Resource // made by AddParticipant; closed by Close
	closed  bool               // Close ran: AddParticipant refuses
	live    map[string]int     // unfinished transactions by owner
	// done lists the finished transactions still in txs, oldest first:
	// forgetting them looks at its head only. Its first nSettled were
	// looked at by settle.
	done     []finished
	nSettled int

	starting atomic.Bool // the start-up recovery pass runs: transaction calls wait
}

// Starting marks the server as running its start-up recovery pass: Begin,
// RegisterBranch, Commit and Rollback answer UNAVAILABLE until Ready, while
// the admin calls, GetOutcome and Announce are served.
func (s *Server) Starting() { s.starting.Store(true) }

// Ready ends Starting.
func (s *Server) Ready() { s.starting.Store(false) }

// notReady is the answer to a transaction call while the server starts.
func (s *Server) notReady() error {
	if s.starting.Load() {
		return status.Error(codes.Unavailable, "txcoord is starting: its start-up recovery pass is running; try again")
	}
	return nil
}

// entry is a transaction begun through the server.
type entry struct {
	id ids.TxID
	// tx is the transaction until settle replaces it with what it ended
	// as (guarded by Server.mu; read it with txOf).
	tx       *coordinator.Tx
	settled  *settledTx
	owner    string      // the identity that began it
	branches int         // registered through RegisterBranch
	rolled   bool        // rollback asked (request or timeout): Commit is refused
	commit   bool        // commit asked: rollbacks wait for its outcome
	finished time.Time   // when the outcome became known (zero before)
	timer    *time.Timer // rolls it back at its deadline
}

// settledTx is what a finished transaction ended as: all the server keeps
// of it once the coordinator is done with it. It holds no pointer but its
// result's text, so that remembering many (MaxRetained) costs about a
// hundred bytes each and next to no garbage-collector work: keeping the
// whole status (branches, gids, the errors' chains) made the server's CPU
// per transaction grow by 1.44x over a 10-minute load.
type settledTx struct {
	state   protocol.State
	started int64 // Unix nanoseconds
	retries int32
	result  settledError
}

// settledError is a finished transaction's result, kept as its text and
// the coordinator's errors it matched (errors.Is answers for them alone).
type settledError struct {
	is  uint16 // bit i: errors.Is(result, settledSentinels[i])
	msg string
	set bool // the result was an error
}

// settledSentinels are the errors a settled result still answers
// errors.Is for: those the server's answers depend on.
var settledSentinels = []error{coordinator.ErrAborted, coordinator.ErrCommitPending, coordinator.ErrHeuristicHazard,
	coordinator.ErrOutcomeUnknown, coordinator.ErrTxDone, coordinator.ErrClosed, coordinator.ErrLogFailed, coordinator.ErrPresumedAborted}

func settledResult(err error) settledError {
	if err == nil {
		return settledError{}
	}
	e := settledError{msg: err.Error(), set: true}
	for i, s := range settledSentinels {
		if errors.Is(err, s) {
			e.is |= 1 << i
		}
	}
	return e
}

// err returns the result as an error: nil for none.
func (e settledError) err() error {
	if !e.set {
		return nil
	}
	return &e
}

func (e *settledError) Error() string { return e.msg }

func (e *settledError) Is(target error) bool {
	for i, s := range settledSentinels {
		if target == s {
			return e.is&(1<<i) != 0
		}
	}
	return false
}

// status is what the transaction's status said when it settled, without
// its branches.
func (t *settledTx) status(id ids.TxID) coordinator.TxStatus {
	return coordinator.TxStatus{TxID: id, State: t.state, Started: time.Unix(0, t.started), Retries: int(t.retries)}
}

// txOf returns e's transaction, or what it settled as.
func (s *Server) txOf(e *entry) (*coordinator.Tx, *settledTx) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.tx, e.settled
}

// finalOf returns what a tracked transaction the coordinator no longer
// runs ended as.
func (s *Server) finalOf(e *entry) (coordinator.TxStatus, error) {
	tx, settled := s.txOf(e)
	if tx == nil {
		return settled.status(e.id), settled.result.err()
	}
	return tx.Status(), tx.Result()
}

// finished is a finished transaction in Server.done.
type finished struct {
	id ids.TxID
	at time.Time
}

// New returns a server for cfg.Coordinator.
func New(cfg Config) (*Server, error) {
	if cfg.Coordinator == nil {
		return nil, errors.New("server: no coordinator")
	}
	if cfg.TxTimeout <= 0 {
		cfg.TxTimeout = time.Minute
	}
	if cfg.MaxTxTimeout <= 0 {
		cfg.MaxTxTimeout = 10 * time.Minute
	}
	if cfg.MaxTxTimeout < cfg.TxTimeout {
		return nil, fmt.Errorf("server: the longest transaction timeout %v is below the default %v", cfg.MaxTxTimeout, cfg.TxTimeout)
	}
	if cfg.Retain <= 0 {
		cfg.Retain = 10 * time.Minute
	}
	if cfg.MaxRetained <= 0 {
		cfg.MaxRetained = 100_000
	}
	if cfg.SettleAfter <= 0 {
		cfg.SettleAfter = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	if cfg.Authorizer == nil {
		return nil, errors.New("server: no Authorizer: every call must be checked (give authz.New(...), or authz.Insecure() to admit every caller)")
	}
	if cfg.MaxParticipants <= 0 {
		cfg.MaxParticipants = 1000
	}
	if cfg.MaxLivePerIdentity <= 0 {
		cfg.MaxLivePerIdentity = 10000
	}
	if cfg.MaxBranches <= 0 {
		cfg.MaxBranches = 256
	}
	// Calls to participants name this coordinator's instance.
	cfg.DialOptions = append(append([]grpc.DialOption(nil), cfg.DialOptions...),
		grpc.WithChainUnaryInterceptor(remote.InstanceInterceptor(cfg.Coordinator.Instance)))
	return &Server{cfg: cfg, c: cfg.Coordinator, logger: cfg.Logger, txs: map[ids.TxID]*entry{}, live: map[string]int{}}, nil
}

// Register serves the Coordinator service on r, every call checked by the
// Authorizer.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	s.cfg.Authorizer.Register(r, &txcoordv1.Coordinator_ServiceDesc, s)
}

// AddParticipant registers a remote participant at addr, or moves a known
// one there. Participants also register themselves (Announce, and with each
// branch); configuring them lets phase two and recovery reach them after a
// restart before they call in.
func (s *Server) AddParticipant(name, addr string) (*remote.Resource, error) {
	if r, ok := s.c.Resource(name); ok {
		rr, isRemote := r.(*remote.Resource)
		if !isRemote {
			return nil, fmt.Errorf("participant name %q is taken by the resource %s", name, name)
		}
		old := rr.Address()
		if err := rr.SetAddress(addr); err != nil {
			return nil, err
		}
		if old != addr {
			s.logger.Warn("participant moved to a new address", "participant", name, "from", old, "to", addr)
		}
		return rr, nil
	}
	s.mu.Lock()
	full, closed := len(s.remotes) >= s.cfg.MaxParticipants, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errServerClosed
	}
	if full {
		return nil, fmt.Errorf("%w: %d remote participants are known, the most this server keeps (--max-participants); %s is refused", errFull, s.cfg.MaxParticipants, name)
	}
	opts := s.cfg.DialOptions
	if s.cfg.ParticipantDial != nil {
		opts = append(s.cfg.ParticipantDial(name), opts...)
	}
	rr, err := remote.New(name, addr, opts...)
	if err != nil {
		return nil, err
	}
	if err := s.c.AddResource(rr); err != nil {
		_ = rr.Close()
		// Lost a race with another registration of the same name.
		if r, ok := s.c.Resource(name); ok {
			if rr2, ok := r.(*remote.Resource); ok {
				return rr2, rr2.SetAddress(addr)
			}
		}
		return nil, err
	}
	s.mu.Lock()
	closed = s.closed
	if !closed {
		s.remotes = append(s.remotes, rr)
	}
	s.mu.Unlock()
	if closed {
		// Close ran meanwhile and will not see this connection.
		_ = rr.Close()
		return nil, errServerClosed
	}
	s.logger.Info("participant registered", "participant", name, "address", addr)
	return rr, nil
}

// Close stops the transactions' timeout timers and closes the connections
// to remote participants. Call it after the coordinator is closed.
func (s *Server) Close() error {
	s.mu.Lock()
	rs := s.remotes
	s.remotes, s.closed = nil, true
	for _, e := range s.txs {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// Run forgets finished transactions once Retain has passed, until ctx
// ends. Its work is proportional to what it forgets: it never walks the
// live transactions, whose timeouts are timers of their own.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			s.forgetLocked(now)
			s.mu.Unlock()
			s.settle(now)
		}
	}
}

// settle replaces the transactions finished more than SettleAfter ago,
// and no longer live at the coordinator, with what they ended as. It looks
// at each finished transaction once.
func (s *Server) settle(now time.Time) {
	var cands []*entry
	s.mu.Lock()
	i := s.nSettled
	for ; i < len(s.done) && now.Sub(s.done[i].at) > s.cfg.SettleAfter; i++ {
		if e := s.txs[s.done[i].id]; e != nil && e.tx != nil {
			cands = append(cands, e)
		}
	}
	s.nSettled = i
	s.mu.Unlock()
	for _, e := range cands {
		// Only settle writes e.tx once it is tracked: reading it here
		// without the lock races with nothing.
		tx := e.tx
		if _, live := s.c.Tx(e.id); live {
			continue // phase two runs still: it keeps its transaction
		}
		status, result := tx.Status(), tx.Result()
		if result == nil && (status.State == protocol.StateAborted || status.State == protocol.StateAborting) {
			// Rolled back as asked (by request or its timeout): its
			// Result is nil, which alone would read as committed.
			result = fmt.Errorf("%w: rolled back as asked", coordinator.ErrAborted)
		}
		st := &settledTx{state: status.State, started: status.Started.UnixNano(), retries: int32(status.Retries), result: settledResult(result)}
		s.mu.Lock()
		e.tx, e.settled = nil, st
		s.mu.Unlock()
	}
}

// track starts to keep e: its timeout, and its end.
func (s *Server) track(e *entry, timeout time.Duration) {
	s.mu.Lock()
	s.txs[e.id] = e
	s.live[e.owner]++
	e.timer = time.AfterFunc(timeout, func() { s.expire(e) })
	s.mu.Unlock()
	e.tx.AfterDone(func() { s.finish(e) })
}

// finish records that e's outcome is known.
func (s *Server) finish(e *entry) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !e.finished.IsZero() {
		return
	}
	e.finished = now
	e.timer.Stop()
	e.timer = nil
	if s.live[e.owner]--; s.live[e.owner] <= 0 {
		delete(s.live, e.owner)
	}
	s.done = append(s.done, finished{id: e.id, at: now})
	s.forgetLocked(now)
}

// forgetLocked forgets the finished transactions past Retain, and the
// oldest past MaxRetained. s.mu is held.
func (s *Server) forgetLocked(now time.Time) {
	n := 0
	for n < len(s.done) && (now.Sub(s.done[n].at) > s.cfg.Retain || len(s.done)-n > s.cfg.MaxRetained) {
		delete(s.txs, s.done[n].id)
		n++
	}
	if n > 0 {
		clear(s.done[:n])
		s.done = s.done[n:]
		s.nSettled = max(0, s.nSettled-n)
	}
}

// expire rolls e back at its deadline, unless it finished or a commit or
// rollback was asked.
func (s *Server) expire(e *entry) {
	s.mu.Lock()
	if !e.finished.IsZero() || e.rolled || e.commit {
		s.mu.Unlock()
		return
	}
	e.rolled = true
	tx := e.tx
	s.mu.Unlock()
	s.logger.Info("transaction timed out; rolling back", "txid", e.id)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// Live counts the transactions the server is tracking.
func (s *Server) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txs)
}

func (s *Server) resources() []participant.Resource {
	return s.c.Resources()
}

func (s *Server) lookup(id ids.TxID) (*entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.txs[id]
	return e, ok
}

func parseTxID(s string) (ids.TxID, error) {
	if s == "" {
		return ids.TxID{}, status.Error(codes.InvalidArgument, "txid is required")
	}
	id, err := ids.ParseTxID(s)
	if err != nil {
		return ids.TxID{}, status.Errorf(codes.InvalidArgument, "malformed txid %q: %v", s, err)
	}
	return id, nil
}

// ownGTRID checks that gtrid (if given) names transaction id of this
// coordinator: another coordinator's transaction gets PERMISSION_DENIED, a
// status no client reads as an outcome.
func (s *Server) ownGTRID(gtrid string, id ids.TxID) error {
	if gtrid == "" {
		return nil
	}
	tx, err := remote.ParseGTRID(gtrid)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "malformed gtrid: %v", err)
	}
	if tx.Prefix != s.c.Prefix() || tx.Coordinator != s.c.ID() || tx.ID != id {
		return status.Errorf(codes.PermissionDenied, "transaction %s was issued by coordinator %s.%s, not this one (%s.%s): ask that one; this one knows nothing of it",
			gtrid, tx.Prefix, tx.Coordinator, s.c.Prefix(), s.c.ID())
	}
	return nil
}

// errFull refuses a participant past MaxParticipants; errServerClosed,
// one that calls in after Close.
var (
	errFull         = errors.New("participant registry full")
	errServerClosed = errors.New("server closed")
)

// participantStatus is the status of an AddParticipant error: a full
// registry or a closed server, else code (a bad name or address).
func participantStatus(err error, code codes.Code) error {
	switch {
	case errors.Is(err, errFull):
		code = codes.ResourceExhausted
	case errors.Is(err, errServerClosed):
		code = codes.Unavailable
	}
	return status.Error(code, err.Error())
}

// caller is the identity the authorization check put in ctx; a handler
// called directly (not through Register) authenticates the caller itself.
func (s *Server) caller(ctx context.Context) *authz.Identity {
	if id, ok := authz.FromContext(ctx); ok {
		return id
	}
	id, err := s.cfg.Authorizer.Authenticate(ctx)
	if err != nil {
		return nil
	}
	return id
}

// mayAct checks that the caller began transaction e, or holds role (if
// any role may).
func (s *Server) mayAct(ctx context.Context, e *entry, id ids.TxID, role authz.Role) error {
	who := s.caller(ctx)
	if (role != "" && who.Has(role)) || (who != nil && who.ID == e.owner) {
		return nil
	}
	if role == "" {
		return s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
			"transaction %s belongs to the identity that began it; %s is not it", id, who)
	}
	return s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
		"transaction %s belongs to the identity that began it; %s is not it and lacks role %s", id, who, role)
}

// speaksFor checks that the caller may act as participant name.
func (s *Server) speaksFor(ctx context.Context, name string) error {
	who := s.caller(ctx)
	if who.Speaks(name) {
		return nil
	}
	bound := who.ParticipantName()
	if bound == "" {
		bound = "none"
	}
	return s.cfg.Authorizer.Deny(ctx, "participant-name", codes.PermissionDenied,
		"%s may not speak for participant %s (the name bound to it: %s)", who, name, bound)
}

// refused maps coordinator errors that refuse work to status codes.
func refused(err error) error {
	switch {
	case errors.Is(err, coordinator.ErrClosed):
		return status.Error(codes.Unavailable, "the coordinator is shutting down")
	case errors.Is(err, coordinator.ErrLogFailed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func (s *Server) Begin(ctx context.Context, req *txcoordv1.BeginRequest) (*txcoordv1.BeginResponse, error) {
	if err := s.notReady(); err != nil {
		return nil, err
	}
	timeout := s.cfg.TxTimeout
	if d := req.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "timeout: %v", err)
		}
		timeout = d.AsDuration()
		if timeout <= 0 || timeout > s.cfg.MaxTxTimeout {
			return nil, status.Errorf(codes.InvalidArgument, "timeout %v is outside (0, %v]", timeout, s.cfg.MaxTxTimeout)
		}
	}
	if req.GetLogDecision() && req.GetDecisionHolder() != "" {
		return nil, status.Error(codes.InvalidArgument, "decision_holder and log_decision exclude each other")
	}
	owner := s.caller(ctx).String()
	s.mu.Lock()
	busy := s.live[owner] >= s.cfg.MaxLivePerIdentity
	s.mu.Unlock()
	if busy {
		return nil, s.cfg.Authorizer.Deny(ctx, "quota-live", codes.ResourceExhausted,
			"%s has %d live transactions, the most one identity may have; finish some first", owner, s.cfg.MaxLivePerIdentity)
	}
	_, span := s.cfg.Tracer.Start(ctx, "txcoord.begin")
	defer span.End()
	var opts []coordinator.TxOption
	switch {
	case req.GetLogDecision():
		opts = append(opts, coordinator.WithoutHolder())
	case req.GetDecisionHolder() != "":
		opts = append(opts, coordinator.WithHolder(req.GetDecisionHolder()))
	}
	tx, err := s.c.Begin(ctx, opts...)
	switch {
	case errors.Is(err, coordinator.ErrUnknownResource), errors.Is(err, coordinator.ErrConfig):
		return nil, status.Errorf(codes.FailedPrecondition, "decision holder: %v", err)
	case err != nil:
		return nil, refused(err)
	}
	holder, err := s.beginHolder(ctx, tx)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		if req.GetDecisionHolder() != "" {
			return nil, status.Errorf(codes.Unavailable, "decision holder %s: %v", req.GetDecisionHolder(), err)
		}
		// The server's holder cannot be reached: this transaction keeps
		// its decision in the log.
		s.logger.Warn("decision holder unreachable; the transaction logs its decision", "holder", holder, "err", err)
		if tx, err = s.c.Begin(ctx, coordinator.WithoutHolder()); err != nil {
			return nil, refused(err)
		}
		holder = ""
	}
	span.SetAttributes(attribute.String("txcoord.txid", tx.ID().String()))
	deadline := time.Now().Add(timeout)
	s.track(&entry{id: tx.ID(), tx: tx, owner: owner}, timeout)
	gtrid := remote.Tx{Prefix: s.c.Prefix(), Coordinator: s.c.ID(), ID: tx.ID()}.GTRID()
	return &txcoordv1.BeginResponse{Txid: tx.ID().String(), Gtrid: gtrid, Deadline: timestamppb.New(deadline), DecisionHolder: holder}, nil
}

// beginHolder begins the holder branch of a transaction that has a
// decision holder, at once: it must hold the transaction's lock at the
// holder before any participant prepares a branch (a fence then knows the
// holder's session has ended). The branch does no work of its own; it
// carries the decision row. It returns the holder's name ("" if none).
func (s *Server) beginHolder(ctx context.Context, tx *coordinator.Tx) (string, error) {
	name, ok := tx.Holder()
	if !ok {
		return "", nil
	}
	r, ok := s.c.Resource(name)
	if !ok {
		return name, fmt.Errorf("%w: %s", coordinator.ErrUnknownResource, name)
	}
	if _, err := tx.Enlist(ctx, r); err != nil {
		return name, err
	}
	return name, nil
}

func (s *Server) RegisterBranch(ctx context.Context, req *txcoordv1.RegisterBranchRequest) (*txcoordv1.RegisterBranchResponse, error) {
	if err := s.notReady(); err != nil {
		return nil, err
	}
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	gid, err := ids.ParseGID(req.GetGid())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "malformed gid: %v", err)
	}
	if gid.TxID != id {
		return nil, status.Errorf(codes.InvalidArgument, "gid %s belongs to transaction %s, not %s", gid, gid.TxID, id)
	}
	if !gid.Owned(s.c.Prefix(), s.c.ID()) {
		return nil, status.Errorf(codes.InvalidArgument, "gid %s was not issued by this coordinator (%s.%s)", gid, s.c.Prefix(), s.c.ID())
	}
	if err := ids.ValidateName("participant name", req.GetParticipant()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := remote.ValidateAddress(req.GetAddress()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.speaksFor(ctx, req.GetParticipant()); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(gid.Branch, req.GetParticipant()+"-") {
		return nil, s.cfg.Authorizer.Deny(ctx, "participant-name", codes.PermissionDenied,
			"branch %s is not named for participant %s (a participant's branches are NAME-...)", gid, req.GetParticipant())
	}
	if err := s.expected(req.GetParticipant(), req.GetExpectedInstance()); err != nil {
		return nil, err
	}
	e, ok := s.lookup(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: not begun here, or already finished and forgotten", id)
	}
	s.mu.Lock()
	rolled := e.rolled
	tooMany := e.branches >= s.cfg.MaxBranches
	s.mu.Unlock()
	if rolled {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is already being committed or rolled back; branch %s cannot join", id, gid)
	}
	if tooMany {
		return nil, s.cfg.Authorizer.Deny(ctx, "quota-branches", codes.ResourceExhausted,
			"transaction %s has %d branches, the most one may have; branch %s is refused", id, s.cfg.MaxBranches, gid)
	}
	res, err := s.AddParticipant(req.GetParticipant(), req.GetAddress())
	if err != nil {
		return nil, participantStatus(err, codes.InvalidArgument)
	}
	tx, _ := s.txOf(e)
	if tx == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is already being committed or rolled back; branch %s cannot join", id, gid)
	}
	switch err := tx.Join(res, gid); {
	case err == nil:
		s.mu.Lock()
		e.branches++
		s.mu.Unlock()
	case errors.Is(err, coordinator.ErrDuplicateBranch):
		return nil, status.Errorf(codes.AlreadyExists, "branch %s is already registered with transaction %s", gid, id)
	case errors.Is(err, coordinator.ErrTxDone):
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is already being committed or rolled back; branch %s cannot join", id, gid)
	case errors.Is(err, ids.ErrBadGID):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	default:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &txcoordv1.RegisterBranchResponse{Instance: s.instance()}, nil
}

// instance names this coordinator to participants.
func (s *Server) instance() *txcoordv1.Instance {
	owner, logID, epoch := s.c.Instance()
	return &txcoordv1.Instance{Owner: owner, LogId: logID, Epoch: epoch}
}

// expected refuses a participant that serves another instance of this
// coordinator's id (another log), or a later run of this one: this process
// must not take its branches, nor answer for them.
func (s *Server) expected(participant string, want *txcoordv1.Instance) error {
	owner, logID, epoch := s.c.Instance()
	if want.GetLogId() == "" || want.GetOwner() != owner {
		return nil // nothing recorded for this id yet
	}
	switch {
	case logID != "" && want.GetLogId() != logID:
		s.logger.Error("a participant serves another coordinator with this id: refused; two coordinators with one id take each other's branches",
			"participant", participant, "owner", owner, "theirs", want.GetLogId(), "ours", logID)
		return status.Errorf(codes.FailedPrecondition,
			"participant %s serves coordinator %s with log %s (epoch %d); this process is another coordinator with the same id (log %s): refused",
			participant, owner, want.GetLogId(), want.GetEpoch(), logID)
	case logID != "" && want.GetEpoch() > epoch:
		return status.Errorf(codes.FailedPrecondition,
			"participant %s has seen run %d of coordinator %s's log %s; this process is run %d, an older one still running: refused",
			participant, want.GetEpoch(), owner, logID, epoch)
	}
	return nil
}

func (s *Server) Commit(ctx context.Context, req *txcoordv1.CommitRequest) (*txcoordv1.CommitResponse, error) {
	if err := s.notReady(); err != nil {
		return nil, err
	}
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	if err := s.ownGTRID(req.GetGtrid(), id); err != nil {
		return nil, err
	}
	e, ok := s.lookup(id)
	if !ok {
		// Not tracked (finished past Retain, or begun before a restart):
		// whoever began it is not known here, so the logged outcome is
		// for GetOutcome to tell.
		if !s.caller(ctx).Has(authz.Observer) {
			return nil, s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
				"transaction %s is not tracked here (finished long ago, or begun before a restart): who began it is not known, so a commit is refused; ask its outcome (GetOutcome)", id)
		}
		return s.commitFromLog(id)
	}
	if err := s.mayAct(ctx, e, id, ""); err != nil {
		return nil, err
	}
	s.mu.Lock()
	rolled := e.rolled
	e.commit = e.commit || !rolled
	s.mu.Unlock()
	if rolled {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s was rolled back (by request or its timeout); it cannot commit", id)
	}
	// A commit asked for is carried out even if the caller goes away
	// meanwhile (its connection cut, its reply lost): the caller hears
	// outcome unknown and asks again, and the commit it asked for is what
	// it finds, not an abort caused by the cut. The caller's deadline
	// still bounds the work, shortened so that the answer can reach it: a
	// decision made at the deadline would reach it as outcome unknown.
	cctx := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(cctx, time.Now().Add(time.Until(dl)*4/5))
		defer cancel()
	}
	tx, settled := s.txOf(e)
	if tx == nil {
		err = fmt.Errorf("%w: %w", coordinator.ErrTxDone, settled.result.err())
	} else {
		err = tx.Commit(cctx)
	}
	if errors.Is(err, coordinator.ErrTxDone) && tx == nil {
		// A repeated Commit of a settled transaction: its outcome.
		err = settled.result.err()
	} else if errors.Is(err, coordinator.ErrTxDone) {
		// A repeated Commit: answer with the first one's outcome.
		select {
		case <-tx.Done():
			err = tx.Result()
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if errors.Is(err, coordinator.ErrClosed) && coordinator.OutcomeOf(err) == coordinator.Aborted {
		return nil, refused(err)
	}
	return commitResponse(err), nil
}

func commitResponse(err error) *txcoordv1.CommitResponse {
	switch coordinator.OutcomeOf(err) {
	case coordinator.Hazard:
		return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_COMMITTED, HeuristicHazard: true, PhaseTwoPending: true, Reason: err.Error()}
	case coordinator.Committed:
		r := &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_COMMITTED}
		if err != nil {
			r.PhaseTwoPending, r.Reason = true, err.Error()
		}
		return r
	case coordinator.Aborted:
		return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED, Reason: err.Error()}
	}
	return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_UNKNOWN, Reason: err.Error()}
}

// commitFromLog answers a Commit for a transaction the server no longer
// tracks (forgotten, or begun before a restart).
func (s *Server) commitFromLog(id ids.TxID) (*txcoordv1.CommitResponse, error) {
	d, err := s.c.Log().Lookup(id)
	switch {
	case err == nil && d.Kind == wal.KindCommit:
		if herr := s.c.Hazard(id); herr != nil {
			return commitResponse(fmt.Errorf("%w (%s): %w", coordinator.ErrHeuristicHazard, id, herr)), nil
		}
		return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_COMMITTED, PhaseTwoPending: !d.Ended}, nil
	case err == nil:
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s was aborted by an operator; it cannot commit", id)
	case errors.Is(err, wal.ErrNotFound) && s.c.Forgotten(id):
		return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_UNKNOWN,
			Reason: fmt.Sprintf("transaction %s began before the log's retention of finished decisions; its outcome is no longer known here", id)}, nil
	case errors.Is(err, wal.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: not begun here, or finished without commit (presumed abort)", id)
	}
	return nil, status.Error(codes.Internal, err.Error())
}

func (s *Server) Rollback(ctx context.Context, req *txcoordv1.RollbackRequest) (*txcoordv1.RollbackResponse, error) {
	if err := s.notReady(); err != nil {
		return nil, err
	}
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	if err := s.ownGTRID(req.GetGtrid(), id); err != nil {
		return nil, err
	}
	e, ok := s.lookup(id)
	if !ok {
		if !s.caller(ctx).Has(authz.Operator) {
			return nil, s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
				"transaction %s is not tracked here (finished long ago, or begun before a restart): who began it is not known, so a rollback is refused; ask its outcome (GetOutcome)", id)
		}
		d, err := s.c.Log().Lookup(id)
		switch {
		case err == nil && d.Kind == wal.KindCommit:
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is committed; it cannot roll back", id)
		case errors.Is(err, wal.ErrNotFound) && s.c.Forgotten(id):
			return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_UNKNOWN}, nil
		case err == nil, errors.Is(err, wal.ErrNotFound):
			// Not live and no COMMIT: aborted (presumed abort).
			return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED}, nil
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := s.mayAct(ctx, e, id, authz.Operator); err != nil {
		return nil, err
	}
	s.mu.Lock()
	e.rolled = e.rolled || !e.commit
	s.mu.Unlock()
	tx, settled := s.txOf(e)
	if tx == nil {
		err = fmt.Errorf("%w: %w", coordinator.ErrTxDone, settled.result.err())
	} else {
		err = tx.Rollback(ctx)
	}
	if errors.Is(err, coordinator.ErrTxDone) {
		if tx == nil {
			err = settled.result.err()
		} else {
			select {
			case <-tx.Done():
				err = tx.Result()
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
		switch coordinator.OutcomeOf(err) {
		case coordinator.Committed:
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is committed; it cannot roll back", id)
		case coordinator.Aborted:
			return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED}, nil
		}
		return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_UNKNOWN}, nil
	}
	if err != nil && coordinator.OutcomeOf(err) != coordinator.Aborted {
		return nil, refused(err)
	}
	return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED}, nil
}

func (s *Server) GetOutcome(ctx context.Context, req *txcoordv1.GetOutcomeRequest) (*txcoordv1.GetOutcomeResponse, error) {
	if err := s.expected(req.GetParticipant(), req.GetExpectedInstance()); err != nil {
		return nil, err
	}
	var res coordinator.Resolution
	var err error
	var txid ids.TxID // when the application asks, by transaction
	if req.GetGid() != "" {
		g, perr := ids.ParseGID(req.GetGid())
		if perr != nil {
			return nil, status.Errorf(codes.InvalidArgument, "malformed gid: %v", perr)
		}
		if req.GetTxid() != "" && req.GetTxid() != g.TxID.String() {
			return nil, status.Errorf(codes.InvalidArgument, "gid %s is not a branch of transaction %s", g, req.GetTxid())
		}
		if !g.Owned(s.c.Prefix(), s.c.ID()) {
			return nil, status.Errorf(codes.FailedPrecondition, "gid %s was issued by coordinator %s.%s, not this one (%s.%s); ask that one", g, g.Prefix, g.Coordinator, s.c.Prefix(), s.c.ID())
		}
		if who := s.caller(ctx); !who.Has(authz.Observer) {
			// A participant asks about its own branches only.
			if err := s.speaksFor(ctx, req.GetParticipant()); err != nil {
				return nil, err
			}
			if !strings.HasPrefix(g.Branch, req.GetParticipant()+"-") {
				return nil, s.cfg.Authorizer.Deny(ctx, "participant-name", codes.PermissionDenied,
					"branch %s is not one of participant %s's", g, req.GetParticipant())
			}
		}
		res, err = s.c.ResolveBranch(ctx, g)
	} else {
		id, perr := parseTxID(req.GetTxid())
		if perr != nil {
			return nil, perr
		}
		if err := s.ownGTRID(req.GetGtrid(), id); err != nil {
			return nil, err
		}
		if who := s.caller(ctx); !who.Has(authz.Observer) {
			e, live := s.lookup(id)
			switch {
			case live:
				if err := s.mayAct(ctx, e, id, authz.Observer); err != nil {
					return nil, err
				}
			case !who.Has(authz.Client):
				// A participant asks by gid; a transaction's outcome
				// is its client's or an observer's to read.
				return nil, s.cfg.Authorizer.Deny(ctx, "not-owner", codes.PermissionDenied,
					"%s may ask the outcome of its own branches (by gid), not of transaction %s", who, id)
			}
		}
		txid = id
		res, err = s.c.ResolveTx(ctx, id)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if req.GetParticipant() != "" && req.GetAddress() != "" && s.caller(ctx).Speaks(req.GetParticipant()) {
		if _, err := s.AddParticipant(req.GetParticipant(), req.GetAddress()); err != nil {
			s.logger.Warn("participant asking an outcome gave a bad name or address", "participant", req.GetParticipant(), "address", req.GetAddress(), "err", err)
		}
	}
	st := txcoordv1.TxState_TX_STATE_ACTIVE
	switch res {
	case coordinator.CommitBranch:
		st = txcoordv1.TxState_TX_STATE_COMMITTED
		if !txid.IsZero() && s.c.Hazard(txid) != nil {
			// The application asks: the commit is a heuristic hazard. A
			// participant asking for its branch is told to commit.
			st = txcoordv1.TxState_TX_STATE_HAZARD
		}
	case coordinator.RollbackBranch:
		st = txcoordv1.TxState_TX_STATE_ABORTED
	}
	return &txcoordv1.GetOutcomeResponse{State: st, Instance: s.instance()}, nil
}

func (s *Server) Announce(ctx context.Context, req *txcoordv1.AnnounceRequest) (*txcoordv1.AnnounceResponse, error) {
	if err := ids.ValidateName("participant name", req.GetParticipant()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := remote.ValidateAddress(req.GetAddress()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.speaksFor(ctx, req.GetParticipant()); err != nil {
		return nil, err
	}
	if err := s.expected(req.GetParticipant(), req.GetExpectedInstance()); err != nil {
		return nil, err
	}
	if _, err := s.AddParticipant(req.GetParticipant(), req.GetAddress()); err != nil {
		return nil, participantStatus(err, codes.FailedPrecondition)
	}
	return &txcoordv1.AnnounceResponse{Instance: s.instance()}, nil
}
