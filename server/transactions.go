// Transactions from a client: Begin, Commit and Rollback, and the checks
// of who may act on one.

package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/wal"
)

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
	return &txcoordv1.BeginResponse{Txid: tx.ID().String(), Gtrid: gtrid, Deadline: timestamppb.New(deadline), DecisionHolder: holder, Instance: s.instance()}, nil
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
	rolled, repeat, why := e.rolled, e.commit, e.why
	e.commit = e.commit || !rolled
	s.mu.Unlock()
	switch {
	case rolled && why != "":
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s was rolled back at its commit: %s", id, why)
	case rolled:
		return nil, status.Errorf(codes.FailedPrecondition, "transaction %s was rolled back (by request or its timeout); it cannot commit", id)
	}
	if tx, _ := s.txOf(e); tx != nil && !repeat {
		// A repeated Commit carries what the first one did (the client
		// seals its reports when it first sends Commit); they joined then.
		// A branch that finds the transaction finishing is left to its
		// participant and recovery: it is not the transaction's.
		if _, err := s.joinReported(e, tx, id, req.GetBranches()); err != nil {
			return s.abortReported(ctx, e, tx, id, err)
		}
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

// abortReported rolls back a transaction whose Commit carried a branch
// that cannot join it: committing without that branch would commit part
// of what the client did.
func (s *Server) abortReported(ctx context.Context, e *entry, tx *coordinator.Tx, id ids.TxID, why error) (*txcoordv1.CommitResponse, error) {
	s.mu.Lock()
	e.rolled, e.why = true, why.Error()
	s.mu.Unlock()
	s.logger.Warn("a branch reported to the client cannot join its transaction; rolling it back", "txid", id, "err", why)
	switch err := tx.Rollback(context.WithoutCancel(ctx)); {
	case errors.Is(err, coordinator.ErrTxDone):
		// Another call finishes it: its outcome is the answer.
		select {
		case <-tx.Done():
			return commitResponse(tx.Result()), nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	case err != nil:
		// No COMMIT is logged: recovery finishes the rollback.
		s.logger.Warn("rolling back after a reported branch failed to join", "txid", id, "err", err)
	}
	return &txcoordv1.CommitResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED, Reason: fmt.Sprintf("transaction %s rolled back: %v", id, why)}, nil
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
	committing := e.commit
	s.mu.Unlock()
	tx, settled := s.txOf(e)
	var orphans []orphan
	if tx != nil && !committing {
		// The reported branches join to be rolled back with the rest.
		orphans, _ = s.joinReported(e, tx, id, req.GetBranches())
	}
	aborted := func() (*txcoordv1.RollbackResponse, error) {
		// Branches that found the transaction already finishing (its
		// timeout) are rolled back here, not left holding locks until
		// their participant asks.
		s.rollbackOrphans(ctx, orphans)
		return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_ABORTED}, nil
	}
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
			return aborted()
		}
		return &txcoordv1.RollbackResponse{Outcome: txcoordv1.Outcome_OUTCOME_UNKNOWN}, nil
	}
	if err != nil && coordinator.OutcomeOf(err) != coordinator.Aborted {
		return nil, refused(err)
	}
	return aborted()
}
