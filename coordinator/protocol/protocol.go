// Package protocol is the two-phase commit protocol for one transaction
// (presumed abort), as a pure state machine: events in, effects out. It does
// no I/O and reads no clock; the engine in package coordinator performs the
// effects in the order given and feeds back what happened. Every
// interleaving of votes, timeouts, log results and acknowledgements can so
// be tested without a database or a sleep.
package protocol

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/participant"
)

var (
	// ErrPrepareTimeout is the abort cause when a branch did not vote within
	// the prepare timeout.
	ErrPrepareTimeout = errors.New("protocol: prepare timed out")
	// ErrVotedNo is the abort cause when a branch voted no without an error.
	ErrVotedNo = errors.New("protocol: branch voted no")
	// ErrRolledBack is the abort cause of an application rollback.
	ErrRolledBack = errors.New("protocol: rolled back by the application")
	// ErrFenced is the abort cause when the reply to the decision holder's
	// commit was lost and the fence found that it did not commit.
	ErrFenced = errors.New("protocol: the decision holder did not commit (settled by a fence)")
	// ErrHazard is the cause reported with OutcomeHazard: a branch's
	// resource held no prepared branch to commit and could not prove that
	// it committed before (participant.ErrUnknownBranch after COMMIT).
	ErrHazard = errors.New("protocol: heuristic hazard: a branch was not prepared at its resource and nothing proves it committed")
)

// maxFenceAttempts is how many times a lost holder commit is fenced before
// the outcome is reported unknown (recovery fences it later).
const maxFenceAttempts = 8

// State is a transaction's protocol state. The zero value is invalid.
type State uint8

const (
	StateActive     State = 1 + iota // branches enlist and work
	StatePreparing                   // phase one: waiting for votes
	StateOnePhase                    // single branch: local commit in flight
	StateLogging                     // all voted yes: COMMIT record being forced
	StateCommitting                  // COMMIT durable: phase two
	StateAborting                    // rolling back branches
	StateCommitted                   // terminal
	StateAborted                     // terminal
	StateUnknown                     // terminal here: the outcome cannot be told (recovery decides)
	StateHolding                     // all voted yes: the decision holder commits with the decision row
	StateFencing                     // the holder's commit reply was lost: a fence settles it
)

var stateNames = [...]string{"", "active", "preparing", "one-phase", "logging", "committing", "aborting", "committed", "aborted", "unknown", "holding", "fencing"}

func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Terminal reports whether no more protocol steps follow s.
func (s State) Terminal() bool {
	return s == StateCommitted || s == StateAborted || s == StateUnknown
}

// Outcome is what the caller hears (DESIGN I5). The zero value is invalid.
type Outcome uint8

const (
	OutcomeCommitted Outcome = 1 + iota
	OutcomeAborted
	OutcomeUnknown
	// OutcomeHazard: COMMIT was decided and every other branch committed,
	// but at least one branch's resource held no prepared branch and could
	// not prove that it committed (it may have been rolled back or lost
	// behind the coordinator's back). The transaction is never ended: an
	// operator must look.
	OutcomeHazard
)

func (o Outcome) String() string {
	switch o {
	case OutcomeCommitted:
		return "committed"
	case OutcomeAborted:
		return "aborted"
	case OutcomeUnknown:
		return "unknown"
	case OutcomeHazard:
		return "hazard"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// BranchState is one branch's state. The zero value is invalid.
type BranchState uint8

const (
	BranchActive      BranchState = 1 + iota // enlisted, working
	BranchPreparing                          // prepare sent
	BranchPrepared                           // voted yes
	BranchReadOnly                           // voted read-only: left the transaction
	BranchFailed                             // voted no, or prepare failed: being rolled back
	BranchTimedOut                           // no vote within the prepare timeout; cleaned when its prepare returns
	BranchCommitting                         // commit sent
	BranchCommitted                          // commit acknowledged
	BranchRollingBack                        // rollback sent
	BranchRolledBack                         // rollback done (or attempted; recovery finishes it)
	BranchHazard                             // commit found no prepared branch and no proof it committed
)

var branchNames = [...]string{"", "active", "preparing", "prepared", "read-only", "failed", "timed-out", "committing", "committed", "rolling-back", "rolled-back", "hazard"}

func (s BranchState) String() string {
	if int(s) < len(branchNames) && s != 0 {
		return branchNames[s]
	}
	return fmt.Sprintf("BranchState(%d)", uint8(s))
}

// Event is an input to the machine.
type Event interface{ event() }

// Commit asks to commit the transaction.
type Commit struct{}

// Rollback asks to roll the transaction back before it commits.
type Rollback struct{ Cause error }

// Voted is a branch's answer to prepare.
type Voted struct {
	Branch int
	Vote   participant.Vote
	Err    error
}

// PrepareTimedOut says the prepare timeout passed.
type PrepareTimedOut struct{}

// DecisionLogged reports the result of forcing the COMMIT record. A non-nil
// Err means the record may or may not be durable.
type DecisionLogged struct{ Err error }

// OnePhaseDone reports a single branch's local commit.
type OnePhaseDone struct{ Err error }

// CommitDone reports one phase-two commit attempt.
type CommitDone struct {
	Branch int
	Err    error
}

// RollbackDone reports one rollback attempt.
type RollbackDone struct {
	Branch int
	Err    error
}

// HolderCommitted reports the decision holder's one-phase commit with the
// decision row. An error wrapping participant.ErrOutcomeUnknown means the
// reply was lost; any other error means nothing was recorded and the
// holder branch rolled back.
type HolderCommitted struct{ Err error }

// HolderFenced reports a fence at the decision holder: Committed tells
// whether the holder's commit happened. A non-nil Err means the fence
// itself failed (the holder cannot be reached).
type HolderFenced struct {
	Committed bool
	Err       error
}

func (Commit) event()          {}
func (Rollback) event()        {}
func (Voted) event()           {}
func (PrepareTimedOut) event() {}
func (DecisionLogged) event()  {}
func (OnePhaseDone) event()    {}
func (CommitDone) event()      {}
func (RollbackDone) event()    {}
func (HolderCommitted) event() {}
func (HolderFenced) event()    {}

// Effect is an output of the machine, to be performed in order.
type Effect interface{ effect() }

// SendPrepare asks the engine to prepare these branches in parallel.
type SendPrepare struct{ Branches []int }

// CancelPrepares asks the engine to cancel prepares still in flight: the
// decision is already ABORT.
type CancelPrepares struct{}

// SendCommitOnePhase asks the engine to commit the single branch locally.
type SendCommitOnePhase struct{ Branch int }

// LogCommit asks the engine to append the COMMIT record naming these
// branches and wait for its fsync.
type LogCommit struct{ Branches []int }

// SendCommit asks the engine to commit a prepared branch after Delay.
// Attempt counts from 1.
type SendCommit struct {
	Branch  int
	Attempt int
	Delay   time.Duration
}

// SendRollback asks the engine to roll a branch back: abort its local work,
// and when MayBePrepared, also roll back its gid at the resource (the branch
// voted yes, or its prepare failed in a way that leaves its fate unknown).
type SendRollback struct {
	Branch        int
	MayBePrepared bool
}

// LogEnd asks the engine to append the END record (not forced).
type LogEnd struct{}

// CommitHolder asks the engine to commit the decision holder's branch in
// one phase, with a decision row naming Branches (the prepared branches
// phase two must commit). That commit is the commit point: no log write.
type CommitHolder struct {
	Branch   int
	Branches []int
}

// FenceHolder asks the engine to settle, after Delay, whether the holder's
// commit happened: the fence ends the holder's session and records an
// abort unless the commit is there. Attempt counts from 1.
type FenceHolder struct {
	Attempt int
	Delay   time.Duration
}

// ForgetDecision asks the engine, once every branch finished a decision
// the holder keeps, to note it in the log (not forced) and to delete the
// holder's row (off the commit path).
type ForgetDecision struct{}

// Report tells the caller the outcome. It is emitted once.
type Report struct {
	Outcome Outcome
	Err     error // the abort cause, or why the outcome is unknown
}

func (SendPrepare) effect()        {}
func (CancelPrepares) effect()     {}
func (SendCommitOnePhase) effect() {}
func (LogCommit) effect()          {}
func (SendCommit) effect()         {}
func (SendRollback) effect()       {}
func (LogEnd) effect()             {}
func (CommitHolder) effect()       {}
func (FenceHolder) effect()        {}
func (ForgetDecision) effect()     {}
func (Report) effect()             {}

// Config tunes the machine.
type Config struct {
	Backoff backoff.Policy // phase-two retry delays
	Rand    *rand.Rand     // jitter source; nil uses the global one
	// NoOnePhase prepares and logs a single branch like several, for a
	// branch whose one-phase commit could not tell "not committed" from
	// "reply lost" (one its participant prepared elsewhere), and so that
	// the outcome stays in the log for those who ask it later.
	NoOnePhase bool
	// HasHolder makes branch Holder the decision holder of a transaction
	// with more than one branch: the others are prepared, then the holder
	// commits in one phase with the decision row (CommitHolder) instead of
	// a COMMIT record in the log.
	HasHolder bool
	Holder    int
}

// BranchInfo is a snapshot of one branch.
type BranchInfo struct {
	State    BranchState
	Attempts int   // phase-two commit attempts so far
	LastErr  error // the last error seen for this branch
}

type branch struct {
	state         BranchState
	attempts      int
	lastErr       error
	maybePrepared bool
}

// Machine is the protocol for one transaction. It is not safe for
// concurrent use; the engine serialises events.
type Machine struct {
	cfg      Config
	state    State
	branches []branch
	cause    error // abort cause
	reported bool
	waiting  int  // votes, commits or rollbacks still expected
	late     int  // timed-out prepares still to return
	fences   int  // fence attempts so far
	held     bool // the holder keeps a row for the transaction (a commit, or a fence's abort)
	rbFailed bool // a rollback failed: a fence's abort row must stay for recovery
	hazards  int  // branches whose commit found nothing prepared and no proof
}

// New returns a machine for a transaction with n branches, in StateActive.
func New(n int, cfg Config) *Machine {
	m := &Machine{cfg: cfg, state: StateActive, branches: make([]branch, n)}
	for i := range m.branches {
		m.branches[i].state = BranchActive
	}
	return m
}

// State returns the transaction's state.
func (m *Machine) State() State { return m.state }

// Cause returns the abort cause, if any.
func (m *Machine) Cause() error { return m.cause }

// Branch returns a snapshot of branch i.
func (m *Machine) Branch(i int) BranchInfo {
	b := m.branches[i]
	return BranchInfo{State: b.state, Attempts: b.attempts, LastErr: b.lastErr}
}

// Branches returns how many branches the transaction has.
func (m *Machine) Branches() int { return len(m.branches) }

// Retries returns the number of phase-two commit attempts beyond the first,
// over all branches.
func (m *Machine) Retries() int {
	n := 0
	for _, b := range m.branches {
		if b.attempts > 1 {
			n += b.attempts - 1
		}
	}
	return n
}

// Settled reports whether the machine is terminal and no late prepare is
// still outstanding: the engine may forget the transaction.
func (m *Machine) Settled() bool { return m.state.Terminal() && m.late == 0 }

// Step feeds one event and returns the effects to perform, in order. An
// event that is illegal in the current state is a bug in the engine and
// panics with both names.
func (m *Machine) Step(ev Event) []Effect {
	switch ev := ev.(type) {
	case Commit:
		m.expect(ev, StateActive)
		return m.commit()
	case Rollback:
		m.expect(ev, StateActive)
		m.cause = ev.Cause
		if m.cause == nil {
			m.cause = ErrRolledBack
		}
		return m.abort()
	case Voted:
		return m.voted(ev)
	case PrepareTimedOut:
		if m.state != StatePreparing {
			return nil // the votes won the race; nothing to do
		}
		for i := range m.branches {
			if m.branches[i].state == BranchPreparing {
				m.branches[i].state = BranchTimedOut
				m.branches[i].lastErr = ErrPrepareTimeout
				m.waiting--
				m.late++
				if m.cause == nil {
					m.cause = ErrPrepareTimeout
				}
			}
		}
		return m.decide()
	case DecisionLogged:
		m.expect(ev, StateLogging)
		if ev.Err != nil {
			m.state = StateUnknown
			return []Effect{m.report(OutcomeUnknown, ev.Err)}
		}
		return m.commitPrepared()
	case OnePhaseDone:
		m.expect(ev, StateOnePhase)
		switch {
		case ev.Err == nil:
			m.branches[0].state = BranchCommitted
			m.state = StateCommitted
			return []Effect{m.report(OutcomeCommitted, nil)}
		case errors.Is(ev.Err, participant.ErrOutcomeUnknown):
			m.branches[0].lastErr = ev.Err
			m.state = StateUnknown
			return []Effect{m.report(OutcomeUnknown, ev.Err)}
		default:
			m.branches[0].lastErr = ev.Err
			m.cause = ev.Err
			m.state = StateAborting
			m.branches[0].state = BranchRollingBack
			m.waiting = 1
			return []Effect{SendRollback{Branch: 0}}
		}
	case CommitDone:
		m.expect(ev, StateCommitting)
		b := &m.branches[ev.Branch]
		if b.state != BranchCommitting {
			panic(fmt.Sprintf("protocol: commit result for branch %d in state %v", ev.Branch, b.state))
		}
		// A resource answers nil for a branch it committed now or can
		// prove committed before (DESIGN I6); "no such prepared branch"
		// without proof is a hazard, never counted as committed.
		if ev.Err == nil || errors.Is(ev.Err, participant.ErrUnknownBranch) {
			b.state = BranchCommitted
			if ev.Err != nil {
				b.state, b.lastErr = BranchHazard, ev.Err
				m.hazards++
			}
			m.waiting--
			if m.waiting == 0 {
				return m.committed()
			}
			return nil
		}
		b.lastErr = ev.Err
		b.attempts++
		return []Effect{SendCommit{Branch: ev.Branch, Attempt: b.attempts, Delay: m.cfg.Backoff.Delay(b.attempts-1, m.cfg.Rand)}}
	case RollbackDone:
		b := &m.branches[ev.Branch]
		if ev.Err != nil && !errors.Is(ev.Err, participant.ErrUnknownBranch) {
			b.lastErr = ev.Err
		}
		if b.state == BranchTimedOut {
			// Cleanup of a late prepare after the outcome was reported.
			b.state = BranchRolledBack
			return nil
		}
		m.expect(ev, StateAborting)
		if b.state != BranchRollingBack {
			panic(fmt.Sprintf("protocol: rollback result for branch %d in state %v", ev.Branch, b.state))
		}
		b.state = BranchRolledBack
		if ev.Err != nil && !errors.Is(ev.Err, participant.ErrUnknownBranch) {
			m.rbFailed = true
		}
		m.waiting--
		if m.waiting == 0 {
			return m.aborted()
		}
		return nil
	case HolderCommitted:
		m.expect(ev, StateHolding)
		h := &m.branches[m.cfg.Holder]
		switch {
		case ev.Err == nil:
			h.state, m.held = BranchCommitted, true
			return m.commitPrepared()
		case errors.Is(ev.Err, participant.ErrOutcomeUnknown):
			h.lastErr = ev.Err
			m.state = StateFencing
			m.fences = 1
			return []Effect{FenceHolder{Attempt: 1}}
		default:
			// Nothing recorded. The holder branch is rolled back with the
			// others: a no-op when it rolled itself back, and the end of
			// its session when the commit never got to run (its branch was
			// busy until the call timed out).
			h.state, h.lastErr = BranchFailed, ev.Err
			m.cause = ev.Err
			return m.abort()
		}
	case HolderFenced:
		m.expect(ev, StateFencing)
		h := &m.branches[m.cfg.Holder]
		switch {
		case ev.Err != nil:
			h.lastErr = ev.Err
			if m.fences < maxFenceAttempts {
				m.fences++
				return []Effect{FenceHolder{Attempt: m.fences, Delay: m.cfg.Backoff.Delay(m.fences-1, m.cfg.Rand)}}
			}
			// The holder cannot be reached: the commit may have happened.
			// The prepared branches stay for recovery, which fences again.
			m.state = StateUnknown
			return []Effect{m.report(OutcomeUnknown, ev.Err)}
		case ev.Committed:
			h.state, m.held = BranchCommitted, true
			return m.commitPrepared()
		default:
			h.state, m.held = BranchRolledBack, true
			m.cause = fmt.Errorf("%w: %w", ErrFenced, h.lastErr)
			return m.abort()
		}
	}
	panic(fmt.Sprintf("protocol: unknown event %T in state %v", ev, m.state))
}

func (m *Machine) expect(ev Event, want State) {
	if m.state != want {
		panic(fmt.Sprintf("protocol: event %T in state %v, want %v", ev, m.state, want))
	}
}

func (m *Machine) report(o Outcome, err error) Effect {
	if m.reported {
		panic(fmt.Sprintf("protocol: second report (%v) in state %v", o, m.state))
	}
	m.reported = true
	return Report{Outcome: o, Err: err}
}

func (m *Machine) commit() []Effect {
	switch len(m.branches) {
	case 0:
		m.state = StateCommitted
		return []Effect{m.report(OutcomeCommitted, nil)}
	case 1:
		if m.cfg.NoOnePhase {
			break
		}
		m.state = StateOnePhase
		m.branches[0].state = BranchCommitting
		return []Effect{SendCommitOnePhase{Branch: 0}}
	}
	m.state = StatePreparing
	all := make([]int, 0, len(m.branches))
	for i := range m.branches {
		if m.holding() && i == m.cfg.Holder {
			continue // the holder stays open; it commits last
		}
		all = append(all, i)
		m.branches[i].state = BranchPreparing
	}
	m.waiting = len(all)
	return []Effect{SendPrepare{Branches: all}}
}

// holding reports whether the decision is kept by a holder branch.
func (m *Machine) holding() bool {
	return m.cfg.HasHolder && len(m.branches) > 1 && m.cfg.Holder >= 0 && m.cfg.Holder < len(m.branches)
}

// commitPrepared starts phase two once the decision is durable.
func (m *Machine) commitPrepared() []Effect {
	m.state = StateCommitting
	var effs []Effect
	for i := range m.branches {
		if m.branches[i].state == BranchPrepared {
			m.branches[i].state = BranchCommitting
			m.branches[i].attempts = 1
			m.waiting++
			effs = append(effs, SendCommit{Branch: i, Attempt: 1})
		}
	}
	if m.waiting == 0 {
		return m.committed()
	}
	return effs
}

// committed ends phase two. A hazard keeps the decision (no END, no
// forgetting the holder's row), so that recovery and operators see it.
func (m *Machine) committed() []Effect {
	m.state = StateCommitted
	if m.hazards > 0 {
		return []Effect{m.report(OutcomeHazard, m.hazardErr())}
	}
	if m.held {
		return []Effect{ForgetDecision{}, m.report(OutcomeCommitted, nil)}
	}
	return []Effect{LogEnd{}, m.report(OutcomeCommitted, nil)}
}

// hazardErr names the hazard branches.
func (m *Machine) hazardErr() error {
	var errs []error
	for i, b := range m.branches {
		if b.state == BranchHazard {
			errs = append(errs, fmt.Errorf("branch %d: %w", i, b.lastErr))
		}
	}
	return fmt.Errorf("%w: %w", ErrHazard, errors.Join(errs...))
}

// Hazards returns how many branches are hazards.
func (m *Machine) Hazards() int { return m.hazards }

// aborted ends the rollbacks. A fence's abort row is forgotten only when
// every rollback succeeded; otherwise recovery needs it.
func (m *Machine) aborted() []Effect {
	m.state = StateAborted
	if m.held && !m.rbFailed {
		return []Effect{ForgetDecision{}, m.report(OutcomeAborted, m.cause)}
	}
	return []Effect{m.report(OutcomeAborted, m.cause)}
}

func (m *Machine) voted(ev Voted) []Effect {
	b := &m.branches[ev.Branch]
	if b.state == BranchTimedOut {
		// A prepare that returned after the timeout: whatever it says, the
		// transaction is aborted; roll the branch back.
		m.late--
		if ev.Err != nil {
			b.lastErr = ev.Err
		}
		return []Effect{SendRollback{Branch: ev.Branch, MayBePrepared: ev.Err != nil || ev.Vote == participant.VoteYes}}
	}
	m.expect(ev, StatePreparing)
	if b.state != BranchPreparing {
		panic(fmt.Sprintf("protocol: vote from branch %d in state %v", ev.Branch, b.state))
	}
	m.waiting--
	var effs []Effect
	switch {
	case ev.Err != nil:
		b.state, b.lastErr, b.maybePrepared = BranchFailed, ev.Err, true
	case !ev.Vote.Valid():
		b.state, b.lastErr, b.maybePrepared = BranchFailed, fmt.Errorf("%w: %d", participant.ErrBadVote, int(ev.Vote)), true
	case ev.Vote == participant.VoteNo:
		b.state, b.lastErr = BranchFailed, ErrVotedNo
	case ev.Vote == participant.VoteReadOnly:
		b.state = BranchReadOnly
	default:
		b.state, b.maybePrepared = BranchPrepared, true
	}
	if b.state == BranchFailed && m.cause == nil {
		m.cause = b.lastErr
		if m.waiting > 0 {
			effs = append(effs, CancelPrepares{})
		}
	}
	return append(effs, m.decide()...)
}

// decide runs once every branch has voted or timed out.
func (m *Machine) decide() []Effect {
	if m.waiting > 0 {
		return nil
	}
	if m.cause != nil {
		return m.abort()
	}
	var yes []int
	for i, b := range m.branches {
		if b.state == BranchPrepared {
			yes = append(yes, i)
		}
	}
	if m.holding() {
		// The holder commits even when every other branch was read-only:
		// its row lets a lost reply be settled.
		m.state = StateHolding
		m.branches[m.cfg.Holder].state = BranchCommitting
		return []Effect{CommitHolder{Branch: m.cfg.Holder, Branches: yes}}
	}
	if len(yes) == 0 {
		m.state = StateCommitted // every branch was read-only
		return []Effect{m.report(OutcomeCommitted, nil)}
	}
	m.state = StateLogging
	return []Effect{LogCommit{Branches: yes}}
}

// abort rolls back every branch that may hold work.
func (m *Machine) abort() []Effect {
	m.state = StateAborting
	var effs []Effect
	for i := range m.branches {
		b := &m.branches[i]
		switch b.state {
		case BranchActive, BranchFailed, BranchPrepared:
			effs = append(effs, SendRollback{Branch: i, MayBePrepared: b.maybePrepared})
			b.state = BranchRollingBack
			m.waiting++
		}
	}
	if m.waiting == 0 {
		return m.aborted()
	}
	return effs
}
