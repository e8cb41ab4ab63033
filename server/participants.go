// Participants calling in: Announce, RegisterBranch and GetOutcome, and
// the registry of remote participants they fill.

package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

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
	if err := s.callingIn(ctx, req.GetParticipant(), req.GetAddress(), req.GetReportKey()); err != nil {
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
	s.keepReportKey(req.GetParticipant(), req.GetReportKey())
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
	if err := s.callingIn(ctx, req.GetParticipant(), req.GetAddress(), req.GetReportKey()); err != nil {
		return nil, err
	}
	if err := s.expected(req.GetParticipant(), req.GetExpectedInstance()); err != nil {
		return nil, err
	}
	if _, err := s.AddParticipant(req.GetParticipant(), req.GetAddress()); err != nil {
		return nil, participantStatus(err, codes.FailedPrecondition)
	}
	s.keepReportKey(req.GetParticipant(), req.GetReportKey())
	return &txcoordv1.AnnounceResponse{Instance: s.instance()}, nil
}

// callingIn checks what a participant calling in (Announce,
// RegisterBranch) says of itself, and that the caller may speak for it.
func (s *Server) callingIn(ctx context.Context, name, addr string, reportKey []byte) error {
	if err := ids.ValidateName("participant name", name); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := remote.ValidateAddress(addr); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkReportKey(reportKey); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return s.speaksFor(ctx, name)
}
