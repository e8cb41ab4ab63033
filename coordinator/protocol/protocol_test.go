package protocol

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/participant"
)

var errBoom = errors.New("boom")

func cfg() Config {
	return Config{Backoff: backoff.Policy{Base: time.Millisecond, Max: 8 * time.Millisecond}, Rand: rand.New(rand.NewPCG(1, 1))}
}

func kinds(effs []Effect) string {
	s := ""
	for _, e := range effs {
		if s != "" {
			s += " "
		}
		switch e := e.(type) {
		case SendPrepare:
			s += fmt.Sprintf("prepare%v", e.Branches)
		case CancelPrepares:
			s += "cancel"
		case SendCommitOnePhase:
			s += fmt.Sprintf("one-phase(%d)", e.Branch)
		case LogCommit:
			s += fmt.Sprintf("log-commit%v", e.Branches)
		case SendCommit:
			s += fmt.Sprintf("commit(%d#%d)", e.Branch, e.Attempt)
		case SendRollback:
			s += fmt.Sprintf("rollback(%d,%v)", e.Branch, e.MayBePrepared)
		case LogEnd:
			s += "end"
		case CommitHolder:
			s += fmt.Sprintf("commit-holder(%d)%v", e.Branch, e.Branches)
		case FenceHolder:
			s += fmt.Sprintf("fence#%d", e.Attempt)
		case ForgetDecision:
			s += "forget"
		case Report:
			s += "report:" + e.Outcome.String()
		}
	}
	return s
}

func step(t *testing.T, m *Machine, ev Event, want string) []Effect {
	t.Helper()
	effs := m.Step(ev)
	if got := kinds(effs); got != want {
		t.Fatalf("after %T%+v: effects %q, want %q (state %v)", ev, ev, got, want, m.State())
	}
	return effs
}

func TestZeroBranchesCommitWithoutLog(t *testing.T) {
	m := New(0, cfg())
	step(t, m, Commit{}, "report:committed")
	if m.State() != StateCommitted {
		t.Fatal(m.State())
	}
}

func TestOneBranchCommitsInOnePhaseWithoutLog(t *testing.T) {
	m := New(1, cfg())
	step(t, m, Commit{}, "one-phase(0)")
	step(t, m, OnePhaseDone{}, "report:committed")
}

func TestOnePhaseLostResultIsUnknownNeverAborted(t *testing.T) {
	m := New(1, cfg())
	step(t, m, Commit{}, "one-phase(0)")
	effs := step(t, m, OnePhaseDone{Err: fmt.Errorf("conn reset: %w", participant.ErrOutcomeUnknown)}, "report:unknown")
	if r := effs[0].(Report); !errors.Is(r.Err, participant.ErrOutcomeUnknown) {
		t.Fatalf("report err %v", r.Err)
	}
}

func TestOnePhaseFailureAborts(t *testing.T) {
	m := New(1, cfg())
	step(t, m, Commit{}, "one-phase(0)")
	step(t, m, OnePhaseDone{Err: errBoom}, "rollback(0,false)")
	effs := step(t, m, RollbackDone{Branch: 0}, "report:aborted")
	if r := effs[0].(Report); !errors.Is(r.Err, errBoom) {
		t.Fatalf("cause %v", r.Err)
	}
}

func TestI2NoCommitBeforeDecisionIsDurable(t *testing.T) {
	m := New(3, cfg())
	step(t, m, Commit{}, "prepare[0 1 2]")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 2, Vote: participant.VoteYes}, "log-commit[0 1 2]")
	if m.State() != StateLogging {
		t.Fatal(m.State())
	}
	step(t, m, DecisionLogged{}, "commit(0#1) commit(1#1) commit(2#1)")
	step(t, m, CommitDone{Branch: 2}, "")
	step(t, m, CommitDone{Branch: 0}, "")
	step(t, m, CommitDone{Branch: 1}, "end report:committed")
}

func TestPresumedAbortAnyNoRollsBackAndLogsNothing(t *testing.T) {
	m := New(3, cfg())
	step(t, m, Commit{}, "prepare[0 1 2]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteNo}, "cancel")
	step(t, m, Voted{Branch: 2, Vote: participant.VoteYes}, "rollback(0,true) rollback(1,false) rollback(2,true)")
	step(t, m, RollbackDone{Branch: 2}, "")
	step(t, m, RollbackDone{Branch: 1}, "")
	effs := step(t, m, RollbackDone{Branch: 0}, "report:aborted")
	if r := effs[0].(Report); !errors.Is(r.Err, ErrVotedNo) {
		t.Fatalf("cause %v", r.Err)
	}
}

func TestPrepareErrorMayHavePreparedSoItIsRolledBackByGID(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Err: errBoom}, "cancel")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteNo}, "rollback(0,true) rollback(1,false)")
}

func TestGarbageVoteAborts(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: 42}, "rollback(0,true) rollback(1,true)")
	if !errors.Is(m.Cause(), participant.ErrBadVote) {
		t.Fatalf("cause %v", m.Cause())
	}
}

func TestReadOnlyBranchLeavesTheTransaction(t *testing.T) {
	m := New(3, cfg())
	step(t, m, Commit{}, "prepare[0 1 2]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteReadOnly}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 2, Vote: participant.VoteYes}, "log-commit[1 2]")
	step(t, m, DecisionLogged{}, "commit(1#1) commit(2#1)")
}

func TestAllReadOnlyCommitsWithoutLog(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteReadOnly}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteReadOnly}, "report:committed")
}

func TestPrepareTimeoutAbortsAndLateYesIsRolledBack(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, PrepareTimedOut{}, "rollback(0,true)")
	effs := step(t, m, RollbackDone{Branch: 0}, "report:aborted")
	if r := effs[0].(Report); !errors.Is(r.Err, ErrPrepareTimeout) {
		t.Fatalf("cause %v", r.Err)
	}
	if m.Settled() {
		t.Fatal("settled while a prepare is still out")
	}
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "rollback(1,true)")
	step(t, m, RollbackDone{Branch: 1}, "")
	if !m.Settled() {
		t.Fatal("not settled")
	}
}

func TestTimeoutAfterAllVotesIsIgnored(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "log-commit[0 1]")
	step(t, m, PrepareTimedOut{}, "")
	step(t, m, DecisionLogged{}, "commit(0#1) commit(1#1)")
}

func TestI5LogFailureIsUnknownAndNothingIsRolledBack(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "log-commit[0 1]")
	step(t, m, DecisionLogged{Err: errBoom}, "report:unknown")
	if m.State() != StateUnknown || !m.Settled() {
		t.Fatal(m.State())
	}
}

func TestPhaseTwoRetriesWithCappedBackoffAndNeverGivesUp(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "log-commit[0 1]")
	step(t, m, DecisionLogged{}, "commit(0#1) commit(1#1)")
	step(t, m, CommitDone{Branch: 0}, "")
	for a := 2; a <= 50; a++ {
		effs := step(t, m, CommitDone{Branch: 1, Err: errBoom}, "commit(1#"+strconv.Itoa(a)+")")
		d := effs[0].(SendCommit).Delay
		if d <= 0 || d > 8*time.Millisecond {
			t.Fatalf("attempt %d: delay %v outside (0, 8ms]", a, d)
		}
	}
	if got := m.Branch(1).Attempts; got != 50 {
		t.Fatalf("attempts %d", got)
	}
	if m.Retries() != 49 {
		t.Fatalf("retries %d", m.Retries())
	}
	step(t, m, CommitDone{Branch: 1}, "end report:committed")
}

// A resource that can prove a branch committed before answers nil (I6);
// "no such prepared branch" is what one answers without proof, and that is
// a hazard: reported, never ended, never counted as committed.
func TestUnknownBranchOnCommitIsAHazardNotSuccess(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "log-commit[0 1]")
	step(t, m, DecisionLogged{}, "commit(0#1) commit(1#1)")
	step(t, m, CommitDone{Branch: 0, Err: participant.ErrUnknownBranch}, "")
	step(t, m, CommitDone{Branch: 1}, "report:hazard")
	if m.Branch(0).State != BranchHazard || m.Branch(1).State != BranchCommitted || m.Hazards() != 1 {
		t.Fatalf("branches %v, %v; hazards %d", m.Branch(0).State, m.Branch(1).State, m.Hazards())
	}
	if !m.Settled() {
		t.Fatal("a hazard leaves nothing for the engine to do")
	}
}

func TestHazardAtAHeldDecisionKeepsItsRow(t *testing.T) {
	c := cfg()
	c.HasHolder, c.Holder = true, 0
	m := New(2, c)
	step(t, m, Commit{}, "prepare[1]")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
	step(t, m, HolderCommitted{}, "commit(1#1)")
	// No forget: the row stays for recovery and operators.
	step(t, m, CommitDone{Branch: 1, Err: participant.ErrUnknownBranch}, "report:hazard")
}

func TestApplicationRollback(t *testing.T) {
	m := New(2, cfg())
	step(t, m, Rollback{}, "rollback(0,false) rollback(1,false)")
	step(t, m, RollbackDone{Branch: 0}, "")
	step(t, m, RollbackDone{Branch: 1, Err: errBoom}, "report:aborted")
	if !errors.Is(m.Cause(), ErrRolledBack) {
		t.Fatal(m.Cause())
	}
}

func TestIllegalEventPanicsNamingBothStates(t *testing.T) {
	m := New(2, cfg())
	defer func() {
		r := recover()
		if r == nil || fmt.Sprint(r) != "protocol: event protocol.DecisionLogged in state active, want logging" {
			t.Fatalf("panic %v", r)
		}
	}()
	m.Step(DecisionLogged{})
}

// TestRandomInterleavings drives machines with random votes, timeouts and
// phase-two failures in random order and checks the rules that must hold
// in every interleaving. Set PROTOCOL_SEED to replay one seed.
func TestRandomInterleavings(t *testing.T) {
	seed := protocolSeed(t)
	r := rand.New(rand.NewPCG(seed, 0))
	for run := 0; run < 3000; run++ {
		n := 2 + r.IntN(4)
		m := New(n, Config{Backoff: backoff.Policy{Base: time.Millisecond, Max: time.Second}, Rand: r})
		var queue []Event
		logged, reported := false, 0
		var outcome Outcome
		votesYes := 0
		anyBad := false
		timedOut := false
		committed := map[int]bool{}
		rolledBackPrepared := map[int]bool{}
		apply := func(effs []Effect) {
			for _, e := range effs {
				switch e := e.(type) {
				case SendPrepare:
					for _, b := range e.Branches {
						var ev Voted
						switch x := r.IntN(10); {
						case x < 7:
							ev = Voted{Branch: b, Vote: participant.VoteYes}
						case x < 8:
							ev = Voted{Branch: b, Vote: participant.VoteReadOnly}
						case x < 9:
							ev = Voted{Branch: b, Vote: participant.VoteNo}
						default:
							ev = Voted{Branch: b, Err: errBoom}
						}
						queue = append(queue, ev)
					}
					if r.IntN(8) == 0 {
						queue = append(queue, PrepareTimedOut{})
					}
				case LogCommit:
					logged = true
					queue = append(queue, DecisionLogged{})
				case SendCommit:
					if !logged {
						t.Fatalf("seed %d run %d: commit sent before the decision was logged", seed, run)
					}
					if rolledBackPrepared[e.Branch] {
						t.Fatalf("seed %d run %d: commit of a rolled-back branch", seed, run)
					}
					var err error
					if r.IntN(4) == 0 {
						err = errBoom
					}
					queue = append(queue, CommitDone{Branch: e.Branch, Err: err})
				case SendRollback:
					if logged {
						t.Fatalf("seed %d run %d: rollback after COMMIT was logged", seed, run)
					}
					if e.MayBePrepared {
						rolledBackPrepared[e.Branch] = true
					}
					queue = append(queue, RollbackDone{Branch: e.Branch})
				case Report:
					reported++
					outcome = e.Outcome
				}
			}
		}
		apply(m.Step(Commit{}))
		for len(queue) > 0 {
			i := r.IntN(len(queue))
			ev := queue[i]
			queue = append(queue[:i], queue[i+1:]...)
			switch ev := ev.(type) {
			case Voted:
				if m.Branch(ev.Branch).State == BranchPreparing {
					if ev.Err != nil || ev.Vote == participant.VoteNo {
						anyBad = true
					}
					if ev.Err == nil && ev.Vote == participant.VoteYes {
						votesYes++
					}
				}
			case PrepareTimedOut:
				if m.State() == StatePreparing {
					timedOut = true
				}
			case CommitDone:
				if ev.Err == nil {
					committed[ev.Branch] = true
				}
			}
			apply(m.Step(ev))
		}
		if reported != 1 {
			t.Fatalf("seed %d run %d: %d reports", seed, run, reported)
		}
		if !m.Settled() {
			t.Fatalf("seed %d run %d: not settled in %v", seed, run, m.State())
		}
		switch {
		case anyBad || timedOut:
			if outcome != OutcomeAborted || logged {
				t.Fatalf("seed %d run %d: a bad vote or timeout gave %v (logged %v)", seed, run, outcome, logged)
			}
		case votesYes == 0:
			if outcome != OutcomeCommitted || logged {
				t.Fatalf("seed %d run %d: all read-only gave %v (logged %v)", seed, run, outcome, logged)
			}
		default:
			if outcome != OutcomeCommitted || !logged || len(committed) != votesYes {
				t.Fatalf("seed %d run %d: all yes gave %v, logged %v, %d of %d committed", seed, run, outcome, logged, len(committed), votesYes)
			}
		}
	}
}

func holderCfg(h int) Config {
	c := cfg()
	c.HasHolder, c.Holder = true, h
	return c
}

var errLost = fmt.Errorf("conn reset: %w", participant.ErrOutcomeUnknown)

func TestHolderCommitsLastAndNothingIsLogged(t *testing.T) {
	m := New(3, holderCfg(1))
	step(t, m, Commit{}, "prepare[0 2]")
	if m.Branch(1).State != BranchActive {
		t.Fatalf("holder state %v before the votes", m.Branch(1).State)
	}
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 2, Vote: participant.VoteYes}, "commit-holder(1)[0 2]")
	if m.State() != StateHolding {
		t.Fatal(m.State())
	}
	step(t, m, HolderCommitted{}, "commit(0#1) commit(2#1)")
	step(t, m, CommitDone{Branch: 0}, "")
	step(t, m, CommitDone{Branch: 2}, "forget report:committed")
}

func TestHolderWithOneBranchIsAPlainOnePhaseCommit(t *testing.T) {
	m := New(1, holderCfg(0))
	step(t, m, Commit{}, "one-phase(0)")
	step(t, m, OnePhaseDone{}, "report:committed")
}

func TestHolderCarriesTheRowWhenTheOthersAreReadOnly(t *testing.T) {
	m := New(2, holderCfg(0))
	step(t, m, Commit{}, "prepare[1]")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteReadOnly}, "commit-holder(0)[]")
	step(t, m, HolderCommitted{}, "forget report:committed")
}

func TestHolderAnyNoAbortsAndTheHolderIsRolledBackUnprepared(t *testing.T) {
	m := New(3, holderCfg(2))
	step(t, m, Commit{}, "prepare[0 1]")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteNo}, "rollback(0,true) rollback(1,false) rollback(2,false)")
	step(t, m, RollbackDone{Branch: 0}, "")
	step(t, m, RollbackDone{Branch: 1}, "")
	step(t, m, RollbackDone{Branch: 2}, "report:aborted")
}

func TestHolderRefusalAbortsThePreparedBranches(t *testing.T) {
	m := New(2, holderCfg(0))
	step(t, m, Commit{}, "prepare[1]")
	step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
	step(t, m, HolderCommitted{Err: errBoom}, "rollback(0,false) rollback(1,true)")
	step(t, m, RollbackDone{Branch: 0}, "")
	e := step(t, m, RollbackDone{Branch: 1}, "report:aborted")
	if r := e[0].(Report); !errors.Is(r.Err, errBoom) {
		t.Fatalf("cause %v", r.Err)
	}
}

func TestI5LostHolderReplyIsFencedNeverGuessed(t *testing.T) {
	t.Run("the fence finds the commit", func(t *testing.T) {
		m := New(2, holderCfg(0))
		step(t, m, Commit{}, "prepare[1]")
		step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
		step(t, m, HolderCommitted{Err: errLost}, "fence#1")
		step(t, m, HolderFenced{Committed: true}, "commit(1#1)")
		step(t, m, CommitDone{Branch: 1}, "forget report:committed")
	})
	t.Run("the fence records the abort", func(t *testing.T) {
		m := New(2, holderCfg(0))
		step(t, m, Commit{}, "prepare[1]")
		step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
		step(t, m, HolderCommitted{Err: errLost}, "fence#1")
		step(t, m, HolderFenced{}, "rollback(1,true)")
		e := step(t, m, RollbackDone{Branch: 1}, "forget report:aborted")
		if r := e[1].(Report); !errors.Is(r.Err, ErrFenced) {
			t.Fatalf("cause %v", r.Err)
		}
	})
	t.Run("a failed rollback keeps the fence's row", func(t *testing.T) {
		m := New(2, holderCfg(0))
		step(t, m, Commit{}, "prepare[1]")
		step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
		step(t, m, HolderCommitted{Err: errLost}, "fence#1")
		step(t, m, HolderFenced{}, "rollback(1,true)")
		step(t, m, RollbackDone{Branch: 1, Err: errBoom}, "report:aborted")
	})
	t.Run("an unreachable holder is unknown and nothing is rolled back", func(t *testing.T) {
		m := New(2, holderCfg(0))
		step(t, m, Commit{}, "prepare[1]")
		step(t, m, Voted{Branch: 1, Vote: participant.VoteYes}, "commit-holder(0)[1]")
		step(t, m, HolderCommitted{Err: errLost}, "fence#1")
		for i := 2; i <= maxFenceAttempts; i++ {
			step(t, m, HolderFenced{Err: errBoom}, fmt.Sprintf("fence#%d", i))
		}
		step(t, m, HolderFenced{Err: errBoom}, "report:unknown")
		if m.State() != StateUnknown || m.Branch(1).State != BranchPrepared {
			t.Fatalf("state %v, branch %v", m.State(), m.Branch(1).State)
		}
	})
}

func TestHolderPrepareTimeoutAborts(t *testing.T) {
	m := New(2, holderCfg(1))
	step(t, m, Commit{}, "prepare[0]")
	step(t, m, PrepareTimedOut{}, "rollback(1,false)")
	step(t, m, RollbackDone{Branch: 1}, "report:aborted")
	step(t, m, Voted{Branch: 0, Vote: participant.VoteYes}, "rollback(0,true)")
	step(t, m, RollbackDone{Branch: 0}, "")
	if !m.Settled() {
		t.Fatal("not settled")
	}
}

// TestRandomHolderInterleavings checks the holder path against every order
// of votes, holder results and fences: nothing commits before the holder
// committed (I2), nothing is rolled back after it did (I3), and the report
// is never "aborted" for a holder that may have committed (I5).
func TestRandomHolderInterleavings(t *testing.T) {
	seed := protocolSeed(t)
	r := rand.New(rand.NewPCG(seed, 1))
	for run := 0; run < 3000; run++ {
		n := 2 + r.IntN(3)
		holder := r.IntN(n)
		c := Config{Backoff: backoff.Policy{Base: time.Millisecond, Max: time.Second}, Rand: r, HasHolder: true, Holder: holder}
		m := New(n, c)
		var queue []Event
		holderCommitted, holderMaybe := false, false // the holder's commit happened / may have
		reported := 0
		var outcome Outcome
		committed := map[int]bool{}
		rolledBack := map[int]bool{}
		apply := func(effs []Effect) {
			for _, e := range effs {
				switch e := e.(type) {
				case SendPrepare:
					for _, b := range e.Branches {
						if b == holder {
							t.Fatalf("seed %d run %d: the holder was prepared", seed, run)
						}
						var ev Voted
						switch x := r.IntN(10); {
						case x < 8:
							ev = Voted{Branch: b, Vote: participant.VoteYes}
						case x < 9:
							ev = Voted{Branch: b, Vote: participant.VoteReadOnly}
						default:
							ev = Voted{Branch: b, Vote: participant.VoteNo}
						}
						queue = append(queue, ev)
					}
				case CommitHolder:
					switch x := r.IntN(6); {
					case x < 3:
						holderCommitted = true
						queue = append(queue, HolderCommitted{})
					case x < 4:
						queue = append(queue, HolderCommitted{Err: errBoom})
					default:
						// Reply lost: the commit may or may not have happened.
						holderMaybe = true
						holderCommitted = r.IntN(2) == 0
						queue = append(queue, HolderCommitted{Err: errLost})
					}
				case FenceHolder:
					if r.IntN(3) == 0 {
						queue = append(queue, HolderFenced{Err: errBoom})
					} else {
						holderMaybe = false
						queue = append(queue, HolderFenced{Committed: holderCommitted})
					}
				case SendCommit:
					if !holderCommitted || holderMaybe {
						t.Fatalf("seed %d run %d: commit sent before the holder's commit was known", seed, run)
					}
					if rolledBack[e.Branch] {
						t.Fatalf("seed %d run %d: commit of a rolled-back branch", seed, run)
					}
					var err error
					if r.IntN(4) == 0 {
						err = errBoom
					}
					queue = append(queue, CommitDone{Branch: e.Branch, Err: err})
				case SendRollback:
					if holderCommitted || holderMaybe {
						t.Fatalf("seed %d run %d: rollback while the holder committed or may have", seed, run)
					}
					rolledBack[e.Branch] = true
					queue = append(queue, RollbackDone{Branch: e.Branch})
				case LogCommit:
					t.Fatalf("seed %d run %d: a holder transaction wrote a COMMIT record", seed, run)
				case Report:
					reported++
					outcome = e.Outcome
				}
			}
		}
		apply(m.Step(Commit{}))
		for len(queue) > 0 {
			i := r.IntN(len(queue))
			ev := queue[i]
			queue = append(queue[:i], queue[i+1:]...)
			if cd, ok := ev.(CommitDone); ok && cd.Err == nil {
				committed[cd.Branch] = true
			}
			apply(m.Step(ev))
		}
		if reported != 1 {
			t.Fatalf("seed %d run %d: %d reports", seed, run, reported)
		}
		switch outcome {
		case OutcomeAborted:
			if holderCommitted {
				t.Fatalf("seed %d run %d: aborted, but the holder committed", seed, run)
			}
		case OutcomeCommitted:
			if !holderCommitted {
				t.Fatalf("seed %d run %d: committed without the holder's commit", seed, run)
			}
		case OutcomeUnknown:
			if !holderMaybe {
				t.Fatalf("seed %d run %d: unknown though the fence answered", seed, run)
			}
		}
	}
}

// protocolSeed is a random test's seed: PROTOCOL_SEED, or the clock's. It
// is logged for replay.
func protocolSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PROTOCOL_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with PROTOCOL_SEED=%d)", seed, seed)
	return seed
}
