// Package participant defines what the coordinator asks of a resource that
// takes part in two-phase commit, the gid that names a branch at its
// database, and the votes and errors a branch can give.
//
// A Resource is a durable store registered with the coordinator (one
// PostgreSQL database, one embedded key-value file, one remote service). A
// Branch is one transaction's live work at a resource, from enlistment to
// prepare. After prepare, the branch is known by its gid alone, and phase
// two and recovery talk to the Resource.
package participant

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/txcoord/txcoord/ids"
)

var (
	// ErrUnknownBranch reports that the resource holds no prepared branch with
	// that gid. After ROLLBACK it is success (presumed abort). After COMMIT
	// it means the resource cannot prove that the branch committed (a
	// resource that can prove it answers nil): the branch was never
	// prepared, or was rolled back or lost behind the coordinator's back, or
	// committed where no proof was kept. The coordinator reports such a
	// transaction as a heuristic hazard and never ends it.
	ErrUnknownBranch = errors.New("participant: no such prepared branch")
	// ErrBusy reports that another session is finishing the branch right now;
	// retry later.
	ErrBusy = errors.New("participant: branch is busy")
	// ErrOutcomeUnknown reports that a commit was sent but its result was
	// lost (for example the connection dropped): it may or may not have
	// happened.
	ErrOutcomeUnknown = errors.New("participant: outcome unknown")
	// ErrBranchDone reports use of a branch after it was prepared, committed
	// or rolled back.
	ErrBranchDone = errors.New("participant: branch already finished")
	// ErrBadVote reports a participant answer that is not a valid vote.
	ErrBadVote = errors.New("participant: invalid vote")
)

// Vote is a branch's answer to prepare. The zero value is invalid.
type Vote int

const (
	// VoteYes: the branch is durably prepared and will commit or roll back
	// on request.
	VoteYes Vote = 1 + iota
	// VoteNo: the branch cannot commit and has rolled back its work.
	VoteNo
	// VoteReadOnly: the branch changed nothing, has already finished, and
	// leaves the transaction.
	VoteReadOnly
)

func (v Vote) String() string {
	switch v {
	case VoteYes:
		return "yes"
	case VoteNo:
		return "no"
	case VoteReadOnly:
		return "read-only"
	}
	return fmt.Sprintf("Vote(%d)", int(v))
}

// Valid reports whether v is one of the defined votes.
func (v Vote) Valid() bool { return v >= VoteYes && v <= VoteReadOnly }

// Resource is a durable store that can hold prepared branches.
//
// Every method is idempotent (DESIGN I6): a second Commit or Rollback of the
// same gid does nothing more. Commit returns nil for a branch it commits
// and for one it can prove committed before (a marker or tombstone kept
// with the branch's own work), and ErrUnknownBranch only for a gid it
// holds no prepared branch and no proof of. Rollback returns
// ErrUnknownBranch when the resource holds no prepared branch with that
// gid. Both return ErrBusy when another session is finishing it, and
// ErrOutcomeUnknown when the request was sent but its result was lost.
type Resource interface {
	// Name is the resource's unique name in the coordinator's registry and
	// in the log.
	Name() string
	// Begin starts a branch with the given gid.
	Begin(ctx context.Context, gid ids.GID) (Branch, error)
	// Commit commits the prepared branch gid.
	Commit(ctx context.Context, gid ids.GID) error
	// Rollback rolls back the prepared branch gid.
	Rollback(ctx context.Context, gid ids.GID) error
	// Prepared lists the prepared branches the resource holds, ours and
	// foreign alike.
	Prepared(ctx context.Context) ([]Prepared, error)
}

// Prover is implemented by resources that keep, with each prepared
// branch's own work, a proof that it committed (a marker row, a tombstone),
// so that Commit can tell "already committed" from "lost". Proofs are kept
// until the coordinator forgets them, once the transaction's end is durable
// in its log.
type Prover interface {
	// ForgetProofs deletes the proofs of gids. Deleting one that is not
	// there is not an error.
	ForgetProofs(ctx context.Context, gids []ids.GID) error
	// Proofs lists the gids whose proofs the resource keeps and whose
	// owner (the gid prefix and coordinator id, "txc.<id>") is owner.
	Proofs(ctx context.Context, owner string) ([]ids.GID, error)
}

// Branch is one transaction's work at a resource, before phase two.
type Branch interface {
	// GID names the branch.
	GID() ids.GID
	// Resource is where the branch lives.
	Resource() Resource
	// Prepare makes the branch's work durable and votes. VoteYes is given
	// only for a branch the resource really holds prepared; a branch that saw
	// any error votes VoteNo (with the cause as error) and is rolled back.
	// VoteReadOnly means the branch changed nothing and is already finished.
	Prepare(ctx context.Context) (Vote, error)
	// CommitOnePhase commits the branch without prepare, for a transaction
	// with a single branch. A lost result is ErrOutcomeUnknown.
	CommitOnePhase(ctx context.Context) error
	// Abort rolls back a branch that has not been prepared. It is safe to
	// call after Prepare voted no or read-only, and twice.
	Abort(ctx context.Context) error
}

// Prepared is one prepared branch found by a resource scan.
type Prepared struct {
	// Raw is the identifier as the resource stores it.
	Raw string
	// GID is the parsed gid; zero if Raw is not a gid of any txcoord (it is
	// then foreign).
	GID ids.GID
	// Since is when the branch was prepared, if the resource knows.
	Since time.Time
	// Owner is the database role or process that prepared it, if known.
	Owner string
	// Database is the database it belongs to, if the resource has several.
	Database string
	// Native is the identifier in the resource's own syntax where that
	// differs from Raw (an XA xid as SQL, to paste into XA COMMIT or XA
	// ROLLBACK), else empty.
	Native string
}

// Enlister is what a transaction offers to resource adapters so that they
// can enlist a branch without importing the coordinator. *coordinator.Tx
// implements it.
type Enlister interface {
	Enlist(ctx context.Context, r Resource) (Branch, error)
}

// ErrOwnerRunning reports that another running coordinator holds the same
// coordinator id at a resource.
var ErrOwnerRunning = errors.New("participant: another coordinator with this id is running")

// Guard is implemented by resources that can make sure only one running
// coordinator uses a coordinator id against them: two coordinators with one
// id would each take the other's prepared branches for their own and resolve
// them at recovery.
type Guard interface {
	// Guard claims owner (the gid prefix and coordinator id) at the
	// resource, waiting until ctx ends while another process holds it
	// (then it returns an error wrapping ErrOwnerRunning). The claim lasts
	// until it is released or the process dies.
	Guard(ctx context.Context, owner string) (Claim, error)
}

// Claim is a held Guard claim.
type Claim interface {
	// Check makes sure the claim still holds, taking it again if it was
	// lost (its session ended, say after a server restart) and nobody else
	// took it meanwhile; otherwise it fails, wrapping ErrOwnerRunning if
	// another process holds it now.
	Check(ctx context.Context) error
	// Release gives the claim up.
	Release() error
}

// ProvenCommit is a SQL resource's answer to a commit that found no such
// prepared branch (unknown, wrapping ErrUnknownBranch): nil if the
// branch's proof (proven) shows it committed; unknown, saying why, if it
// does not or the resource keeps no proofs; and an error without
// ErrUnknownBranch, for the caller to try again, if the proof cannot be
// read.
func ProvenCommit(unknown error, keepsProofs bool, proven func() (bool, error)) error {
	if !keepsProofs {
		return fmt.Errorf("%w (the resource keeps no markers, so a branch committed before cannot be told from one lost)", unknown)
	}
	ok, err := proven()
	switch {
	case err != nil:
		return fmt.Errorf("no such prepared branch, and its marker could not be read: %w (commit: %v)", err, unknown)
	case ok:
		return nil
	}
	return fmt.Errorf("%w (and no marker: it was never prepared, or was rolled back or lost behind the coordinator's back)", unknown)
}
