// Branches a participant reported in its reply to the client, and the
// client carries to Commit or Rollback in place of the participant's
// RegisterBranch.

package server

import (
	"errors"
	"fmt"
	"strings"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// joinReported makes the branches a client carries branches of tx. Every
// one that can join does, so that a rollback reaches it; the first that
// cannot is the error, and the transaction must then not commit.
func (s *Server) joinReported(e *entry, tx *coordinator.Tx, id ids.TxID, reported []*txcoordv1.ReportedBranch) error {
	if len(reported) == 0 {
		return nil
	}
	owner, logID, epoch := s.c.Instance()
	var first error
	for _, b := range reported {
		res, gid, err := s.reportedBranch(b, id, owner, logID, epoch)
		if err == nil {
			s.mu.Lock()
			tooMany := e.branches >= s.cfg.MaxBranches
			s.mu.Unlock()
			if tooMany {
				err = fmt.Errorf("transaction %s has %d branches, the most one may have; reported branch %s is refused", id, s.cfg.MaxBranches, gid)
			}
		}
		if err == nil {
			switch jerr := tx.Join(res, gid); {
			case jerr == nil:
				s.mu.Lock()
				e.branches++
				s.mu.Unlock()
			case errors.Is(jerr, coordinator.ErrDuplicateBranch):
				// Registered already, or carried twice: one branch.
			case errors.Is(jerr, coordinator.ErrTxDone):
				// Being committed (by a Commit carrying the same branches)
				// or rolled back: its outcome is the answer.
				return nil
			default:
				err = fmt.Errorf("reported branch %s cannot join: %w", gid, jerr)
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// reportedBranch checks one reported branch of transaction id: a gid of
// it, named for a participant that serves this instance and is known to
// it (it has announced itself, registered a branch, or was configured).
func (s *Server) reportedBranch(b *txcoordv1.ReportedBranch, id ids.TxID, owner, logID string, epoch uint64) (*remote.Resource, ids.GID, error) {
	gid, err := ids.ParseGID(b.GetGid())
	if err != nil {
		return nil, gid, fmt.Errorf("reported branch: malformed gid: %w", err)
	}
	name := b.GetParticipant()
	switch inst := b.GetInstance(); {
	case gid.TxID != id:
		return nil, gid, fmt.Errorf("reported branch %s belongs to transaction %s, not %s", gid, gid.TxID, id)
	case !gid.Owned(s.c.Prefix(), s.c.ID()):
		return nil, gid, fmt.Errorf("reported branch %s was not issued by this coordinator (%s.%s)", gid, s.c.Prefix(), s.c.ID())
	case ids.ValidateName("participant name", name) != nil:
		return nil, gid, fmt.Errorf("reported branch %s: %w", gid, ids.ValidateName("participant name", name))
	case !strings.HasPrefix(gid.Branch, name+"-"):
		return nil, gid, fmt.Errorf("reported branch %s is not named for participant %s (a participant's branches are NAME-...)", gid, name)
	case inst.GetOwner() != owner || inst.GetLogId() != logID || inst.GetEpoch() != epoch:
		return nil, gid, fmt.Errorf("participant %s reported branch %s under coordinator %s (log %s, run %d), not this one (%s, log %s, run %d)",
			name, gid, inst.GetOwner(), inst.GetLogId(), inst.GetEpoch(), owner, logID, epoch)
	}
	r, ok := s.c.Resource(name)
	rr, isRemote := r.(*remote.Resource)
	if !ok || !isRemote {
		return nil, gid, fmt.Errorf("participant %s, which reported branch %s, is not a remote participant known to this coordinator", name, gid)
	}
	return rr, gid, nil
}
