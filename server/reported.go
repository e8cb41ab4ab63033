// Branches a participant reported in its reply to the client, and the
// client carries to Commit or Rollback in place of the participant's
// RegisterBranch.

package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// orphan is a reported branch, checked, that found its transaction
// already finishing: it is not the transaction's.
type orphan struct {
	res *remote.Resource
	gid ids.GID
}

// joinReported makes the branches a client carries branches of tx. Every
// one that can join does, so that a rollback reaches it; the first that
// cannot is the error, and the transaction must then not commit. Branches
// that found the transaction finishing are not errors: they are returned,
// for a rollback to finish them.
func (s *Server) joinReported(e *entry, tx *coordinator.Tx, id ids.TxID, reported []*txcoordv1.ReportedBranch) ([]orphan, error) {
	if len(reported) == 0 {
		return nil, nil
	}
	owner, logID, epoch := s.c.Instance()
	var orphans []orphan
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
				orphans = append(orphans, orphan{res, gid})
			default:
				err = fmt.Errorf("reported branch %s cannot join: %w", gid, jerr)
			}
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return orphans, first
}

// rollbackOrphans rolls back branches of an aborted transaction that did
// not join it; one that fails is left to its participant and recovery.
func (s *Server) rollbackOrphans(ctx context.Context, orphans []orphan) {
	for _, o := range orphans {
		if err := o.res.Rollback(ctx, o.gid); err != nil && !errors.Is(err, participant.ErrUnknownBranch) {
			s.logger.Warn("rolling back a reported branch of an aborted transaction failed; its participant or recovery will", "gid", o.gid, "err", err)
		}
	}
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
		return nil, gid, fmt.Errorf("reported branch %s: participant name %q is malformed", gid, name)
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
	if !s.proven(name, b.GetGid(), b.GetProof()) {
		return nil, gid, fmt.Errorf("reported branch %s carries no proof from participant %s under a report key it gave this coordinator: the client cannot speak for a participant", gid, name)
	}
	return rr, gid, nil
}

// maxReportKeys is how many report keys of one participant name the
// server keeps: processes of one participant (replicas, and old and new
// ones in a restart) each have their own key, and give it again at least
// once a minute (sdk's keyRefresh).
const maxReportKeys = 64

// checkReportKey refuses a report key too short to be secret or too long
// to keep.
func checkReportKey(k []byte) error {
	if len(k) != 0 && (len(k) < 16 || len(k) > 64) {
		return fmt.Errorf("report key of %d bytes: want 16 to 64", len(k))
	}
	return nil
}

// keepReportKey keeps a key that participant name gave (the caller speaks
// for name), the newest last.
func (s *Server) keepReportKey(name string, key []byte) {
	if len(key) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A new slice: proven reads the old one outside the lock.
	ks := slices.DeleteFunc(slices.Clone(s.reportKeys[name]), func(k []byte) bool { return bytes.Equal(k, key) })
	ks = append(ks, bytes.Clone(key))
	if len(ks) > maxReportKeys {
		ks = ks[len(ks)-maxReportKeys:]
	}
	s.reportKeys[name] = ks
}

// proven reports whether proof is participant name's for gid.
func (s *Server) proven(name, gid string, proof []byte) bool {
	s.mu.Lock()
	ks := s.reportKeys[name]
	s.mu.Unlock()
	for i := len(ks) - 1; i >= 0; i-- { // the newest, most used, first
		if hmac.Equal(remote.ReportProof(ks[i], gid), proof) {
			return true
		}
	}
	return false
}
