package coordinator

import (
	"errors"

	"github.com/txcoord/txcoord/coordinator/protocol"
)

var (
	// ErrAborted: the transaction was rolled back at every branch (or will
	// be, by recovery: no COMMIT was logged). The cause is wrapped.
	ErrAborted = errors.New("coordinator: transaction aborted")
	// ErrOutcomeUnknown: the transaction may commit or may not; the
	// coordinator cannot tell yet. Look it up by its transaction id; recovery
	// settles it.
	ErrOutcomeUnknown = errors.New("coordinator: transaction outcome unknown")
	// ErrCommitPending: the transaction is committed (the decision is
	// durable) but some branch has not acknowledged yet; phase two goes on in
	// the background and after a restart.
	ErrCommitPending = errors.New("coordinator: committed; phase two still in progress")
	// ErrHeuristicHazard: COMMIT was decided and every branch that could be
	// committed was, but at least one branch's resource held no prepared
	// branch and could not prove that it committed (rolled back or lost
	// behind the coordinator's back: a restore, a failover to a standby
	// that had not received it, a ROLLBACK PREPARED by hand). The
	// transaction may be only partly applied. It is never ended or
	// compacted: txctl shows it until an operator has checked the branch
	// and ends it (txctl resolve --commit --accept-hazard).
	ErrHeuristicHazard = errors.New("coordinator: heuristic hazard: committed, but a branch cannot be proven committed")
	// ErrTxDone: the transaction was already committed or rolled back.
	ErrTxDone = errors.New("coordinator: transaction already finished")
	// ErrClosed: the coordinator is closed.
	ErrClosed = errors.New("coordinator: closed")
	// ErrUnknownResource: the resource is not registered with the
	// coordinator, so recovery could not find its branches.
	ErrUnknownResource = errors.New("coordinator: resource not registered")
	// ErrLogFailed: a decision could not be made durable; the coordinator
	// refuses new commits until restarted.
	ErrLogFailed = errors.New("coordinator: log failed; refusing new commits")
	// ErrDuplicateBranch: a branch with that gid already joined the
	// transaction.
	ErrDuplicateBranch = errors.New("coordinator: branch already registered")
	// ErrConfig: the configuration is invalid.
	ErrConfig = errors.New("coordinator: invalid configuration")
)

// Outcome is what a commit ended as, as far as the caller can know.
type Outcome = protocol.Outcome

// The outcomes (DESIGN I5), and the hazard a commit can meet.
const (
	Committed = protocol.OutcomeCommitted
	Aborted   = protocol.OutcomeAborted
	Unknown   = protocol.OutcomeUnknown
	Hazard    = protocol.OutcomeHazard
)

// OutcomeOf classifies an error returned by Commit: nil and ErrCommitPending
// are Committed, ErrAborted is Aborted, ErrHeuristicHazard is Hazard,
// anything else is Unknown.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil, errors.Is(err, ErrCommitPending):
		return Committed
	case errors.Is(err, ErrAborted):
		return Aborted
	case errors.Is(err, ErrHeuristicHazard):
		return Hazard
	}
	return Unknown
}
