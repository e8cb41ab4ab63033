package sdk

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// Register serves the Participant service (the coordinator's calls to
// finish prepared branches) on s, beside the service's own API; every call
// is checked by Config.Authorizer first, whatever interceptors s has.
func (p *Participant) Register(s grpc.ServiceRegistrar) {
	p.cfg.Authorizer.Register(s, &txcoordv1.Participant_ServiceDesc, &service{p: p})
}

type service struct {
	txcoordv1.UnimplementedParticipantServer
	p *Participant
}

// gid parses a gid the coordinator sent and checks it is one of ours.
func (s *service) gid(raw string) (ids.GID, error) {
	g, err := ids.ParseGID(raw)
	if err != nil {
		return ids.GID{}, status.Error(codes.InvalidArgument, err.Error())
	}
	if !s.p.ours(g) {
		return ids.GID{}, status.Errorf(codes.InvalidArgument, "gid %s is not a branch of participant %s", g, s.p.cfg.Name)
	}
	return g, nil
}

func (s *service) Prepare(ctx context.Context, req *txcoordv1.PrepareRequest) (*txcoordv1.PrepareResponse, error) {
	if err := s.p.admit(ctx); err != nil {
		return nil, err
	}
	g, err := s.gid(req.GetGid())
	if err != nil {
		return nil, err
	}
	list, err := s.p.res.Prepared(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	for _, pr := range list {
		if pr.GID == g {
			return &txcoordv1.PrepareResponse{Vote: txcoordv1.Vote_VOTE_YES}, nil
		}
	}
	return &txcoordv1.PrepareResponse{Vote: txcoordv1.Vote_VOTE_NO, Reason: "not prepared here"}, nil
}

func (s *service) Commit(ctx context.Context, req *txcoordv1.CommitBranchRequest) (*txcoordv1.CommitBranchResponse, error) {
	if err := s.p.admit(ctx); err != nil {
		return nil, err
	}
	g, err := s.gid(req.GetGid())
	if err != nil {
		return nil, err
	}
	if err := s.p.res.Commit(ctx, g); err != nil {
		return nil, toStatus(err)
	}
	s.p.count(func(st *Stats) { st.Committed++ })
	return &txcoordv1.CommitBranchResponse{}, nil
}

// MaxCommitBatch is the most gids one CommitBatch call may carry.
const MaxCommitBatch = remote.MaxCommitBatch

// CommitBatch commits each branch as Commit would, all at once: phase two
// of concurrent transactions costs one call instead of one each.
func (s *service) CommitBatch(ctx context.Context, req *txcoordv1.CommitBatchRequest) (*txcoordv1.CommitBatchResponse, error) {
	if err := s.p.admit(ctx); err != nil {
		return nil, err
	}
	raw := req.GetGids()
	if len(raw) > MaxCommitBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d gids in one batch (at most %d)", len(raw), MaxCommitBatch)
	}
	seen := make(map[string]bool, len(raw))
	for _, g := range raw {
		if seen[g] {
			return nil, status.Errorf(codes.InvalidArgument, "gid %.80q twice in one batch", g)
		}
		seen[g] = true
	}
	results := make([]*txcoordv1.CommitResult, len(raw))
	var wg sync.WaitGroup
	for i, g := range raw {
		wg.Go(func() {
			var err error
			if gid, gerr := s.gid(g); gerr != nil {
				err = gerr
			} else if cerr := s.p.res.Commit(ctx, gid); cerr != nil {
				err = toStatus(cerr)
			} else {
				s.p.count(func(st *Stats) { st.Committed++ })
			}
			st := status.Convert(err)
			results[i] = &txcoordv1.CommitResult{Gid: g, Code: uint32(st.Code()), Message: st.Message()}
		})
	}
	wg.Wait()
	return &txcoordv1.CommitBatchResponse{Results: results}, nil
}

func (s *service) Rollback(ctx context.Context, req *txcoordv1.RollbackBranchRequest) (*txcoordv1.RollbackBranchResponse, error) {
	if err := s.p.admit(ctx); err != nil {
		return nil, err
	}
	g, err := s.gid(req.GetGid())
	if err != nil {
		return nil, err
	}
	if err := s.p.res.Rollback(ctx, g); err != nil {
		return nil, toStatus(err)
	}
	s.p.count(func(st *Stats) { st.Aborted++ })
	return &txcoordv1.RollbackBranchResponse{}, nil
}

func (s *service) ListPrepared(ctx context.Context, _ *txcoordv1.ListPreparedRequest) (*txcoordv1.ListPreparedResponse, error) {
	if err := s.p.admit(ctx); err != nil {
		return nil, err
	}
	list, err := s.p.res.Prepared(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &txcoordv1.ListPreparedResponse{}
	for _, pr := range list {
		if !s.p.ours(pr.GID) {
			continue
		}
		b := &txcoordv1.PreparedBranch{Raw: pr.Raw, Owner: pr.Owner, Database: pr.Database}
		if !pr.Since.IsZero() {
			b.PreparedAt = timestamppb.New(pr.Since)
		}
		resp.Branches = append(resp.Branches, b)
	}
	return resp, nil
}

// toStatus maps the adapter's errors to the Participant API's codes.
func toStatus(err error) error {
	switch {
	case errors.Is(err, participant.ErrUnknownBranch):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, participant.ErrBusy):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, participant.ErrOutcomeUnknown):
		return status.Error(codes.Unknown, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
