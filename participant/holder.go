package participant

import (
	"context"
	"errors"
	"time"

	"github.com/txcoord/txcoord/ids"
)

var (
	// ErrNoDecision reports that a decision holder keeps no decision for a
	// transaction (and none was settled by a fence).
	ErrNoDecision = errors.New("participant: no decision held for the transaction")
	// ErrDecisionRefused reports a holder commit that recorded nothing:
	// another decision for the transaction is already held (a recovery
	// fence won), or the holder branch failed and rolled back. The
	// transaction aborted.
	ErrDecisionRefused = errors.New("participant: the holder refused the commit decision")
)

// Outcome is a decision a holder keeps. The zero value is invalid.
type Outcome uint8

const (
	// OutcomeCommit: the holder branch committed with the decision; every
	// branch named must commit.
	OutcomeCommit Outcome = 1 + iota
	// OutcomeAbort: a fence found no commit and recorded an abort, which
	// keeps a late commit of the transaction from ever being recorded.
	OutcomeAbort
)

func (o Outcome) String() string {
	switch o {
	case OutcomeCommit:
		return "commit"
	case OutcomeAbort:
		return "abort"
	}
	return "Outcome(?)"
}

// BranchRef names one prepared branch of a transaction: where it lives and
// its gid there.
type BranchRef struct {
	Resource string
	GID      ids.GID
}

// Decision is one transaction's decision as a holder keeps it.
type Decision struct {
	TxID    ids.TxID
	Owner   string // the coordinator: <prefix>.<coordinator id>
	Outcome Outcome
	Epoch   uint64    // the coordinator run that decided
	Time    time.Time // when the holder recorded it (the holder's clock)
	// Branches are the branches the decision covers besides the holder's
	// own (which committed with it): the prepared branches phase two must
	// commit. A fence's abort names none.
	Branches []BranchRef
}

// Names reports whether a commit decision covers prepared branch g: one of
// the branches it names. (The holder's own branch is never prepared: it
// committed with the decision.)
func (d Decision) Names(g ids.GID) bool {
	for _, b := range d.Branches {
		if b.GID == g {
			return true
		}
	}
	return false
}

// DecisionHolder is a resource that can keep a transaction's commit
// decision in its own database, in the same local transaction as its own
// branch's work: that local commit is the global commit point, and no
// coordinator log write is needed (DESIGN: decision holder).
//
// A transaction's decision row is keyed by its id. The key arbitrates
// between a holder commit and a fence: whichever is recorded first is the
// decision, so a coordinator presumed dead cannot commit once recovery has
// fenced the transaction.
type DecisionHolder interface {
	Resource
	// HolderReady makes sure the resource can keep decisions (creating
	// what it needs, such as a table), failing with an error that names
	// what is missing (a privilege, say).
	HolderReady(ctx context.Context) error
	// BeginHolder starts the holder branch of gid's transaction. It is a
	// Branch whose CommitDecision records the decision and commits.
	BeginHolder(ctx context.Context, gid ids.GID) (HolderBranch, error)
	// Fence settles the decisions of txids: it ends any session still
	// running a holder branch of one of them, records an abort for each
	// that has no decision, and returns every decision held afterwards.
	// Once Fence returned, no commit of those transactions can be
	// recorded any more.
	Fence(ctx context.Context, owner string, txids []ids.TxID) (map[ids.TxID]Decision, error)
	// HeldDecision reads txid's decision without fencing: ErrNoDecision
	// when none is recorded (which does not prove that none will be).
	HeldDecision(ctx context.Context, txid ids.TxID) (Decision, error)
	// Decisions lists every decision the holder keeps for owner.
	Decisions(ctx context.Context, owner string) ([]Decision, error)
	// Forget deletes the decisions of txids. Only a decision whose every
	// branch is finished may be forgotten; a lost Forget leaves rows that
	// the next recovery pass forgets.
	Forget(ctx context.Context, txids []ids.TxID) error
}

// HolderBranch is the branch at a decision holder.
type HolderBranch interface {
	Branch
	// CommitDecision records d (an OutcomeCommit) in the branch's
	// transaction and commits it in one phase. nil: committed, the
	// decision is durable. An error wrapping ErrOutcomeUnknown: the reply
	// was lost; Fence tells what happened. Any other error (wrapping
	// ErrDecisionRefused): nothing was recorded and the branch rolled
	// back.
	CommitDecision(ctx context.Context, d Decision) error
}
