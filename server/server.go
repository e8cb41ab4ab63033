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
	"sort"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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
	// DialOptions are used to call remote participants (give transport
	// credentials).
	DialOptions []grpc.DialOption
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Tracer makes a span per Begin (default: none).
	Tracer trace.Tracer
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
}

// entry is a transaction begun through the server.
type entry struct {
	tx       *coordinator.Tx
	deadline time.Time
	rolled   bool      // rollback asked (request or timeout): Commit is refused
	commit   bool      // commit asked: rollbacks wait for its outcome
	finished time.Time // when the outcome became known (zero before)
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("")
	}
	return &Server{cfg: cfg, c: cfg.Coordinator, logger: cfg.Logger, txs: map[ids.TxID]*entry{}}, nil
}

// Register serves the Coordinator service on s.
func (s *Server) Register(r grpc.ServiceRegistrar) { txcoordv1.RegisterCoordinatorServer(r, s) }

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
		if err := rr.SetAddress(addr); err != nil {
			return nil, err
		}
		return rr, nil
	}
	rr, err := remote.New(name, addr, s.cfg.DialOptions...)
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
	s.remotes = append(s.remotes, rr)
	s.mu.Unlock()
	s.logger.Info("participant registered", "participant", name, "address", addr)
	return rr, nil
}

// Close closes the connections to remote participants. Call it after the
// coordinator is closed.
func (s *Server) Close() error {
	s.mu.Lock()
	rs := s.remotes
	s.remotes = nil
	s.mu.Unlock()
	var errs []error
	for _, r := range rs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}

// Run rolls back transactions past their timeout and forgets finished
// ones, until ctx ends.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sweep(ctx)
		}
	}
}

func (s *Server) sweep(ctx context.Context) {
	now := time.Now()
	var expired []*entry
	s.mu.Lock()
	for id, e := range s.txs {
		select {
		case <-e.tx.Done():
			if e.finished.IsZero() {
				e.finished = now
			}
		default:
		}
		switch {
		case !e.finished.IsZero() && now.Sub(e.finished) > s.cfg.Retain:
			delete(s.txs, id)
		case e.finished.IsZero() && !e.rolled && !e.commit && now.After(e.deadline):
			e.rolled = true
			expired = append(expired, e)
		}
	}
	s.mu.Unlock()
	for _, e := range expired {
		s.logger.Info("transaction timed out; rolling back", "txid", e.tx.ID())
		go func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_ = e.tx.Rollback(rctx)
		}()
	}
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
	s.mu.Lock()
	s.txs[tx.ID()] = &entry{tx: tx, deadline: deadline}
	s.mu.Unlock()
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
	e, ok := s.lookup(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: not begun here, or already finished and forgotten", id)
	}
	s.mu.Lock()
	rolled := e.rolled
	s.mu.Unlock()
	if rolled {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is already being committed or rolled back; branch %s cannot join", id, gid)
	}
	res, err := s.AddParticipant(req.GetParticipant(), req.GetAddress())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	switch err := e.tx.Join(res, gid); {
	case err == nil:
	case errors.Is(err, coordinator.ErrDuplicateBranch):
		return nil, status.Errorf(codes.AlreadyExists, "branch %s is already registered with transaction %s", gid, id)
	case errors.Is(err, coordinator.ErrTxDone):
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is already being committed or rolled back; branch %s cannot join", id, gid)
	case errors.Is(err, ids.ErrBadGID):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	default:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &txcoordv1.RegisterBranchResponse{}, nil
}

func (s *Server) Commit(ctx context.Context, req *txcoordv1.CommitRequest) (*txcoordv1.CommitResponse, error) {
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	e, ok := s.lookup(id)
	if !ok {
		return s.commitFromLog(id)
	}
	s.mu.Lock()
	rolled := e.rolled
	e.commit = e.commit || !rolled
	s.mu.Unlock()
	if rolled {
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s was rolled back (by request or its timeout); it cannot commit", id)
	}
	// Answer before the caller gives up: a decision made at the caller's
	// deadline would reach it as outcome unknown.
	cctx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)*4/5))
		defer cancel()
	}
	err = e.tx.Commit(cctx)
	if errors.Is(err, coordinator.ErrTxDone) {
		// A repeated Commit: answer with the first one's outcome.
		select {
		case <-e.tx.Done():
			err = e.tx.Result()
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
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	e, ok := s.lookup(id)
	if !ok {
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
	s.mu.Lock()
	e.rolled = e.rolled || !e.commit
	s.mu.Unlock()
	err = e.tx.Rollback(ctx)
	if errors.Is(err, coordinator.ErrTxDone) {
		select {
		case <-e.tx.Done():
			err = e.tx.Result()
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
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
	var res coordinator.Resolution
	var err error
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
		res, err = s.c.ResolveBranch(ctx, g)
	} else {
		id, perr := parseTxID(req.GetTxid())
		if perr != nil {
			return nil, perr
		}
		res, err = s.c.ResolveTx(ctx, id)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if req.GetParticipant() != "" && req.GetAddress() != "" {
		if _, err := s.AddParticipant(req.GetParticipant(), req.GetAddress()); err != nil {
			s.logger.Warn("participant asking an outcome gave a bad name or address", "participant", req.GetParticipant(), "address", req.GetAddress(), "err", err)
		}
	}
	st := txcoordv1.TxState_TX_STATE_ACTIVE
	switch res {
	case coordinator.CommitBranch:
		st = txcoordv1.TxState_TX_STATE_COMMITTED
	case coordinator.RollbackBranch:
		st = txcoordv1.TxState_TX_STATE_ABORTED
	}
	return &txcoordv1.GetOutcomeResponse{State: st}, nil
}

func (s *Server) Announce(ctx context.Context, req *txcoordv1.AnnounceRequest) (*txcoordv1.AnnounceResponse, error) {
	if err := ids.ValidateName("participant name", req.GetParticipant()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := remote.ValidateAddress(req.GetAddress()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if _, err := s.AddParticipant(req.GetParticipant(), req.GetAddress()); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &txcoordv1.AnnounceResponse{}, nil
}

func (s *Server) GetTransaction(ctx context.Context, req *txcoordv1.GetTransactionRequest) (*txcoordv1.Transaction, error) {
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	tx, ok := s.describe(id)
	var found []coordinator.PreparedBranch
	var errs []error
	if req.GetProbe() {
		found, errs = s.c.PreparedBranches(ctx, id)
		if !ok && len(found) > 0 {
			tx, ok = inDoubt(id, found), true
		}
		if ok {
			probe(tx, found, errs)
		}
	}
	if !ok {
		// Not live, not logged, nothing prepared found: a decision
		// holder's row may still keep its decision.
		held, err := s.heldOnly(ctx, id)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "transaction %s is not live here and no decision is logged, but the decision holders could not be asked whether one keeps its decision: %v", id, err)
		}
		if held != nil {
			tx, ok = held, true
			if req.GetProbe() {
				probe(tx, found, errs)
			}
		}
	}
	if !ok && s.c.Forgotten(id) {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: it began before the log's retention of finished decisions, so whether it committed is no longer known here", id)
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown transaction %s: not live here, no decision logged or held, and no prepared branch found (if it was begun here, it aborted: presumed abort)", id)
	}
	if tx.DecisionHolder != "" && tx.HeldDecision == "" {
		tx.HeldDecision = s.heldDecision(ctx, id, tx.DecisionHolder)
	}
	if err := s.c.Log().Records(func(r wal.Record) error {
		if r.TxID == id {
			tx.Records = append(tx.Records, logRecord(r))
		}
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.DataLoss, "reading the log: %v", err)
	}
	return tx, nil
}

func logRecord(r wal.Record) *txcoordv1.LogRecord {
	out := &txcoordv1.LogRecord{Lsn: r.LSN, Kind: r.Kind.String(), Time: timestamppb.New(r.Time), Epoch: r.Epoch, Heuristic: r.Heuristic, Who: r.Who, Why: r.Why, Holder: r.Holder}
	for _, b := range r.Branches {
		out.Gids = append(out.Gids, b.GID.String())
	}
	return out
}

// inDoubt describes a transaction known only by its prepared branches.
// Its decision holder, if any, is the one their gids name.
func inDoubt(id ids.TxID, found []coordinator.PreparedBranch) *txcoordv1.Transaction {
	out := &txcoordv1.Transaction{Txid: id.String(), State: txcoordv1.TxState_TX_STATE_IN_DOUBT}
	if t := id.Time(); !t.IsZero() {
		out.Started = timestamppb.New(t)
		out.Age = durationpb.New(time.Since(t))
	}
	for _, f := range found {
		out.Branches = append(out.Branches, &txcoordv1.Branch{Participant: f.Resource, Gid: f.GID.String(), State: "prepared"})
		if h, ok := f.GID.Holder(); ok && out.DecisionHolder == "" {
			out.DecisionHolder = h
		}
	}
	return out
}

// heldTimeout bounds asking decision holders for their rows in one request.
const heldTimeout = 10 * time.Second

// heldDecision says what decision holder holder keeps for transaction id,
// in the words of Transaction.held_decision. It reads the row without
// fencing: it changes nothing.
func (s *Server) heldDecision(ctx context.Context, id ids.TxID, holder string) string {
	cctx, cancel := context.WithTimeout(ctx, heldTimeout)
	defer cancel()
	_, d, err := s.c.HeldDecision(cctx, id, holder)
	switch {
	case err == nil:
		return d.Outcome.String()
	case errors.Is(err, participant.ErrNoDecision):
		return "none"
	}
	return "cannot ask: " + err.Error()
}

// heldOnly describes transaction id, neither live nor logged, from the row
// a registered decision holder keeps for it (a commit whose row is not yet
// forgotten, or an abort a fence recorded). It returns nil when no holder
// keeps one, and an error when some holder could not be asked and none of
// the others keeps one.
func (s *Server) heldOnly(ctx context.Context, id ids.TxID) (*txcoordv1.Transaction, error) {
	cctx, cancel := context.WithTimeout(ctx, heldTimeout)
	defer cancel()
	name, d, err := s.c.HeldDecision(cctx, id, "")
	switch {
	case errors.Is(err, participant.ErrNoDecision):
		return nil, nil
	case err != nil:
		return nil, err
	}
	out := &txcoordv1.Transaction{Txid: id.String(), State: txcoordv1.TxState_TX_STATE_COMMITTING, DecisionHolder: name, HeldDecision: d.Outcome.String()}
	if d.Outcome != participant.OutcomeCommit {
		out.State = txcoordv1.TxState_TX_STATE_ABORTED
	}
	if t := id.Time(); !t.IsZero() {
		out.Started = timestamppb.New(t)
		out.Age = durationpb.New(time.Since(t))
	}
	for _, b := range d.Branches {
		out.Branches = append(out.Branches, &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: "held"})
	}
	return out, nil
}

// probe fills in what the resources say of each branch of tx, and adds
// prepared branches of it that tx does not name.
func probe(tx *txcoordv1.Transaction, found []coordinator.PreparedBranch, errs []error) {
	at := map[string]coordinator.PreparedBranch{}
	for _, f := range found {
		at[f.GID.String()] = f
	}
	named := map[string]bool{}
	for _, b := range tx.Branches {
		named[b.Gid] = true
	}
	for _, f := range found {
		if !named[f.GID.String()] {
			tx.Branches = append(tx.Branches, &txcoordv1.Branch{Participant: f.Resource, Gid: f.GID.String(), State: "unnamed"})
		}
	}
	for _, b := range tx.Branches {
		if f, ok := at[b.Gid]; ok {
			b.AtResource = "prepared"
			if !f.Since.IsZero() {
				b.PreparedAt = timestamppb.New(f.Since)
			}
			continue
		}
		b.AtResource = "not prepared"
		for _, e := range errs {
			if strings.HasPrefix(e.Error(), b.Participant+":") {
				b.AtResource = "could not ask: " + e.Error()
			}
		}
	}
}

// describe reports what is known of transaction id without asking the
// resources.
func (s *Server) describe(id ids.TxID) (*txcoordv1.Transaction, bool) {
	var out *txcoordv1.Transaction
	if t, ok := s.c.Tx(id); ok {
		out = fromStatus(t.Status())
	} else if e, ok := s.lookup(id); ok {
		out = fromStatus(e.tx.Status())
		out.Live = false
		if r := e.tx.Result(); coordinator.OutcomeOf(r) == coordinator.Aborted {
			out.State = txcoordv1.TxState_TX_STATE_ABORTED
		}
	}
	d, err := s.c.Log().Lookup(id)
	if err == nil {
		if out == nil {
			out = &txcoordv1.Transaction{Txid: id.String()}
			switch {
			case d.Heuristic && !d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_HEURISTIC
			case d.Kind == wal.KindCommit && d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_COMMITTED
			case d.Kind == wal.KindCommit:
				out.State = txcoordv1.TxState_TX_STATE_COMMITTING
			case d.Ended:
				out.State = txcoordv1.TxState_TX_STATE_ABORTED
			default:
				out.State = txcoordv1.TxState_TX_STATE_ABORTING
			}
			if t := id.Time(); !t.IsZero() {
				out.Started = timestamppb.New(t)
				out.Age = durationpb.New(time.Since(t))
			}
			for _, b := range d.Branches {
				out.Branches = append(out.Branches, &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: "logged"})
			}
		}
		dec := txcoordv1.Decision_DECISION_COMMIT
		if d.Kind == wal.KindAbort {
			dec = txcoordv1.Decision_DECISION_ABORT
		}
		out.Decision = &txcoordv1.LoggedDecision{Decision: dec, Time: timestamppb.New(d.Time), Ended: d.Ended, Heuristic: d.Heuristic, Who: d.Who, Why: d.Why, Holder: d.Holder}
		if d.Holder != "" && out.DecisionHolder == "" {
			out.DecisionHolder = d.Holder
		}
	}
	return out, out != nil
}

func fromStatus(st coordinator.TxStatus) *txcoordv1.Transaction {
	out := &txcoordv1.Transaction{
		Txid: st.TxID.String(), State: stateOf(st.State), Started: timestamppb.New(st.Started),
		Age: durationpb.New(time.Since(st.Started)), Retries: int32(st.Retries), Live: true,
		DecisionHolder: st.Holder,
	}
	if st.Cause != nil {
		out.Cause = st.Cause.Error()
	}
	for _, b := range st.Branches {
		pb := &txcoordv1.Branch{Participant: b.Resource, Gid: b.GID.String(), State: b.State.String(), Attempts: int32(b.Attempts)}
		if b.LastErr != nil {
			pb.LastError = b.LastErr.Error()
		}
		out.Branches = append(out.Branches, pb)
	}
	return out
}

func stateOf(s protocol.State) txcoordv1.TxState {
	switch s {
	case protocol.StateActive:
		return txcoordv1.TxState_TX_STATE_ACTIVE
	case protocol.StatePreparing, protocol.StateOnePhase, protocol.StateLogging:
		return txcoordv1.TxState_TX_STATE_PREPARING
	case protocol.StateCommitting:
		return txcoordv1.TxState_TX_STATE_COMMITTING
	case protocol.StateCommitted:
		return txcoordv1.TxState_TX_STATE_COMMITTED
	case protocol.StateAborting:
		return txcoordv1.TxState_TX_STATE_ABORTING
	case protocol.StateAborted:
		return txcoordv1.TxState_TX_STATE_ABORTED
	}
	return txcoordv1.TxState_TX_STATE_UNKNOWN
}

func (s *Server) ListTransactions(ctx context.Context, req *txcoordv1.ListTransactionsRequest) (*txcoordv1.ListTransactionsResponse, error) {
	var older time.Duration
	if d := req.GetOlderThan(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "older_than: %v", err)
		}
		older = d.AsDuration()
	}
	want := map[txcoordv1.TxState]bool{}
	for _, st := range req.GetStates() {
		if st == txcoordv1.TxState_TX_STATE_UNSPECIFIED || txcoordv1.TxState_name[int32(st)] == "" {
			return nil, status.Errorf(codes.InvalidArgument, "unknown state %d", st)
		}
		want[st] = true
	}
	seen := map[string]bool{}
	var all []*txcoordv1.Transaction
	for _, st := range s.c.Transactions() {
		t := fromStatus(st)
		if d, err := s.c.Log().Lookup(st.TxID); err == nil {
			t.Decision = &txcoordv1.LoggedDecision{Decision: txcoordv1.Decision_DECISION_COMMIT, Time: timestamppb.New(d.Time), Ended: d.Ended, Holder: d.Holder}
		}
		seen[t.Txid] = true
		all = append(all, t)
	}
	pending, err := s.c.Log().Pending()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, d := range pending {
		if seen[d.TxID.String()] {
			continue
		}
		if t, ok := s.describe(d.TxID); ok {
			all = append(all, t)
		}
	}
	if req.GetScan() {
		byTx := map[ids.TxID][]coordinator.PreparedBranch{}
		for _, r := range s.resources() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			list, err := r.Prepared(cctx)
			cancel()
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "scanning %s: %v", r.Name(), err)
			}
			for _, p := range list {
				if !p.GID.Owned(s.c.Prefix(), s.c.ID()) || seen[p.GID.TxID.String()] {
					continue
				}
				byTx[p.GID.TxID] = append(byTx[p.GID.TxID], coordinator.PreparedBranch{Resource: r.Name(), GID: p.GID, Since: p.Since})
			}
		}
		// One read of its row per in-doubt transaction; a holder that
		// could not be asked once is not asked again in this call.
		unreachable := map[string]string{}
		for id, found := range byTx {
			t := inDoubt(id, found)
			if _, live := s.c.Tx(id); live {
				continue
			}
			probe(t, found, nil)
			if h := t.DecisionHolder; h != "" {
				if why, ok := unreachable[h]; ok {
					t.HeldDecision = why
				} else if t.HeldDecision = s.heldDecision(ctx, id, h); strings.HasPrefix(t.HeldDecision, "cannot ask") {
					unreachable[h] = t.HeldDecision
				}
			}
			all = append(all, t)
		}
	}
	resp := &txcoordv1.ListTransactionsResponse{}
	for _, t := range all {
		if len(want) > 0 && !want[t.State] {
			continue
		}
		if older > 0 && t.GetAge().AsDuration() < older {
			continue
		}
		resp.Transactions = append(resp.Transactions, t)
	}
	sort.Slice(resp.Transactions, func(i, j int) bool {
		return resp.Transactions[i].GetStarted().AsTime().Before(resp.Transactions[j].GetStarted().AsTime())
	})
	return resp, nil
}

func (s *Server) Resolve(ctx context.Context, req *txcoordv1.ResolveRequest) (*txcoordv1.ResolveResponse, error) {
	id, err := parseTxID(req.GetTxid())
	if err != nil {
		return nil, err
	}
	want := req.GetDecision()
	if want != txcoordv1.Decision_DECISION_COMMIT && want != txcoordv1.Decision_DECISION_ABORT {
		return nil, status.Error(codes.InvalidArgument, "decision must be COMMIT or ABORT")
	}
	if req.GetReason() == "" {
		return nil, status.Error(codes.InvalidArgument, "a reason is required: it is recorded with the decision")
	}
	if len(req.GetReason()) > 2000 || len(req.GetOperator()) > 200 {
		return nil, status.Error(codes.InvalidArgument, "reason or operator too long")
	}
	who := identity(ctx, req.GetOperator())
	resp := &txcoordv1.ResolveResponse{}
	if t, ok := s.c.Tx(id); ok {
		// Live: only an abort of a transaction not yet being decided.
		if want == txcoordv1.Decision_DECISION_COMMIT {
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is live and undecided; only its client can commit it", id)
		}
		if e, ok := s.lookup(id); ok {
			s.mu.Lock()
			committing := e.commit
			e.rolled = e.rolled || !committing
			s.mu.Unlock()
			if committing {
				return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is being committed by its client right now; ask again in a moment", id)
			}
		}
		if t.Finishing() {
			return nil, status.Errorf(codes.FailedPrecondition, "transaction %s is being decided right now; ask again in a moment", id)
		}
		if err := t.Rollback(ctx); err != nil && !errors.Is(err, coordinator.ErrTxDone) {
			return nil, refused(err)
		}
		resp.Action = "rolled back the live transaction"
	} else {
		rep, err := s.c.ResolveHeuristic(ctx, id, want == txcoordv1.Decision_DECISION_COMMIT, who, req.GetReason())
		switch {
		case errors.Is(err, wal.ErrConflict):
			return nil, s.contradiction(id, err)
		case errors.Is(err, coordinator.ErrUnknownResource):
			return nil, status.Errorf(codes.FailedPrecondition, "%v; nothing changed", err)
		case errors.Is(err, coordinator.ErrNothingPrepared):
			return nil, status.Errorf(codes.FailedPrecondition, "%v: nothing to commit (if it was begun here and not committed, it aborted: presumed abort)", err)
		case errors.Is(err, coordinator.ErrLive):
			return nil, status.Errorf(codes.FailedPrecondition, "%v; ask again in a moment", err)
		case err != nil:
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		resp.Heuristic = rep.Heuristic
		resp.DecisionHolder = rep.Holder
		for _, b := range rep.Branches {
			br := &txcoordv1.BranchResult{Participant: b.Resource, Gid: b.GID.String(), Ok: b.Err == nil, Result: "committed"}
			if rep.Decision != wal.KindCommit {
				br.Result = "rolled back"
			}
			if b.Err != nil {
				br.Result = b.Err.Error()
			}
			resp.Branches = append(resp.Branches, br)
		}
		switch {
		case rep.Holder != "":
			done := "committed"
			if rep.Decision != wal.KindCommit {
				done = "rolled back"
			}
			resp.Action = fmt.Sprintf("%s as decision holder %s's row says: drove its %s to %d branches; nothing heuristic logged", done, rep.Holder, rep.Decision, len(rep.Branches))
		case len(rep.Branches) == 0:
			resp.Action = "nothing was prepared: the transaction is aborted (presumed abort); nothing logged"
		case rep.Heuristic:
			resp.Action = fmt.Sprintf("logged a heuristic %s by %s and drove %d branches", rep.Decision, who, len(rep.Branches))
		default:
			resp.Action = fmt.Sprintf("drove the logged %s to %d branches", rep.Decision, len(rep.Branches))
		}
		if !rep.Ended {
			resp.Action += "; some branches could not be finished yet (the recovery pass retries them)"
		}
	}
	s.logger.Info("transaction resolved by request", "txid", id, "decision", want, "who", who, "reason", req.GetReason(), "action", resp.Action)
	if t, ok := s.describe(id); ok {
		resp.Transaction = t
	}
	return resp, nil
}

// contradiction is the refusal of a resolution that would contradict the
// decision of id (err wraps wal.ErrConflict): the one in the log, or, when
// the log has none, the one a decision holder's row keeps (I3).
func (s *Server) contradiction(id ids.TxID, err error) error {
	d, lerr := s.c.Log().Lookup(id)
	if lerr != nil {
		return status.Errorf(codes.FailedPrecondition, "refused: %v; a decision holder's row is never contradicted, so only the decision it keeps can be driven", err)
	}
	if d.Holder != "" {
		return status.Errorf(codes.FailedPrecondition, "refused: %v (noted from decision holder %s's row); a logged decision is never contradicted, so only it can be driven", err, d.Holder)
	}
	return status.Errorf(codes.FailedPrecondition, "refused: %v; a logged decision is never contradicted, so only it can be driven", err)
}

// identity names who asks: the operator's own words, and the client
// certificate's subject when the call came over mutual TLS.
func identity(ctx context.Context, operator string) string {
	who := operator
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			cn := "cert:" + ti.State.PeerCertificates[0].Subject.CommonName
			if who == "" {
				who = cn
			} else {
				who += " (" + cn + ")"
			}
		}
		if who == "" && p.Addr != nil {
			who = "unnamed operator at " + p.Addr.String()
		}
	}
	if who == "" {
		who = "unnamed operator"
	}
	return who
}

func (s *Server) Recover(ctx context.Context, _ *txcoordv1.RecoverRequest) (*txcoordv1.RecoverResponse, error) {
	rep, err := s.c.Recover(ctx)
	if err != nil && rep == nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &txcoordv1.RecoverResponse{
		Redriven: int32(rep.Redriven), Committed: int32(rep.Committed), RolledBack: int32(rep.RolledBack),
		SkippedLive: int32(rep.SkippedLive), SkippedYoung: int32(rep.SkippedYoung), Foreign: int32(rep.Foreign),
		Fenced: int32(rep.Fenced), Held: int32(rep.Held), Forgotten: int32(rep.Forgotten),
	}
	for _, u := range rep.Unfinished {
		resp.Unfinished = append(resp.Unfinished, u.String())
	}
	for _, e := range rep.Errors {
		resp.Errors = append(resp.Errors, e.Error())
	}
	if err != nil {
		resp.Errors = append(resp.Errors, err.Error())
	}
	for _, a := range rep.Actions {
		r := &txcoordv1.BranchResult{Participant: a.Resource, Gid: a.GID, Result: a.What, Ok: a.Err == nil}
		if a.Holder != "" {
			r.Result += " as decision holder " + a.Holder + "'s row says"
		}
		if a.Err != nil {
			r.Result += ": " + a.Err.Error()
		}
		resp.Actions = append(resp.Actions, r)
	}
	return resp, nil
}
