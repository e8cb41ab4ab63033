package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/coordinator/protocol"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type rig struct {
	c   *Coordinator
	log *wal.Mem
	rs  []*fake.Resource
}

func newRig(t *testing.T, n int, mod func(*Config)) *rig {
	t.Helper()
	r := &rig{log: wal.NewMem()}
	var res []participant.Resource
	for i := 0; i < n; i++ {
		f := fake.New("db" + strconv.Itoa(i))
		r.rs = append(r.rs, f)
		res = append(res, f)
	}
	cfg := Config{ID: "test", Log: r.log, Resources: res, RetryBase: time.Millisecond, RetryMax: 4 * time.Millisecond, RecoveryInterval: -1}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.c = c
	t.Cleanup(func() { c.Close() })
	return r
}

// begin starts a transaction with one branch at each resource.
func (r *rig) begin(t *testing.T) (*Tx, []participant.Branch) {
	t.Helper()
	ctx := context.Background()
	tx, err := r.c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var bs []participant.Branch
	for _, f := range r.rs {
		b, err := tx.Enlist(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	return tx, bs
}

// atomic checks I1 for one transaction: every branch that was prepared was
// committed, or none was committed.
func (r *rig) atomicity(t *testing.T, bs []participant.Branch) (committed int) {
	t.Helper()
	for i, b := range bs {
		f := r.rs[i]
		g := b.GID().String()
		if f.IsPrepared(g) {
			t.Fatalf("branch %s still prepared", g)
		}
		if f.IsCommitted(g) {
			committed++
		}
	}
	if committed != 0 && committed != len(bs) {
		t.Fatalf("I1 violated: %d of %d branches committed", committed, len(bs))
	}
	return committed
}

func TestCommitTwoBranches(t *testing.T) {
	r := newRig(t, 2, nil)
	tx, bs := r.begin(t)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := r.atomicity(t, bs); n != 2 {
		t.Fatalf("%d committed", n)
	}
	d, err := r.log.Lookup(tx.ID())
	if err != nil || d.Kind != wal.KindCommit || !d.Ended || len(d.Branches) != 2 {
		t.Fatalf("log: %+v %v", d, err)
	}
	if s := r.c.Stats(); s.Committed != 1 || s.Live != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOneBranchWritesNoLog(t *testing.T) {
	r := newRig(t, 1, nil)
	tx, bs := r.begin(t)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !r.rs[0].IsCommitted(bs[0].GID().String()) {
		t.Fatal("not committed")
	}
	if r.log.Stats().Appends != 0 {
		t.Fatal("one-phase commit wrote the log")
	}
}

func TestI1AtomicityWhenABranchVotesNo(t *testing.T) {
	r := newRig(t, 3, nil)
	r.rs[1].SetHooks(fake.Hooks{Prepare: func(ctx context.Context, g ids.GID) (participant.Vote, error, bool) {
		return participant.VoteNo, nil, true
	}})
	tx, bs := r.begin(t)
	err := tx.Commit(context.Background())
	if !errors.Is(err, ErrAborted) || OutcomeOf(err) != Aborted {
		t.Fatalf("err %v", err)
	}
	if n := r.atomicity(t, bs); n != 0 {
		t.Fatal("committed")
	}
	if r.log.Stats().Appends != 0 {
		t.Fatal("presumed abort: an abort must write nothing")
	}
}

func TestI2NoCommitIsSentBeforeTheDecisionIsDurable(t *testing.T) {
	r := newRig(t, 3, nil)
	var violations atomic.Int32
	for _, f := range r.rs {
		f.SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error {
			if _, err := r.log.Lookup(g.TxID); err != nil {
				violations.Add(1)
			}
			return nil
		}})
	}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				tx, _ := r.begin(t)
				if err := tx.Commit(context.Background()); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Fatalf("I2 violated %d times", v)
	}
}

func TestI5DecisionWriteFailureIsOutcomeUnknownNeverAborted(t *testing.T) {
	r := newRig(t, 2, nil)
	r.log.SetFail(errors.New("disk on fire"))
	tx, bs := r.begin(t)
	err := tx.Commit(context.Background())
	if !errors.Is(err, ErrOutcomeUnknown) || OutcomeOf(err) != Unknown {
		t.Fatalf("err %v", err)
	}
	for i, b := range bs {
		if !r.rs[i].IsPrepared(b.GID().String()) {
			t.Fatal("a branch was resolved although the decision may be durable")
		}
	}
	if _, err := r.c.Begin(context.Background()); !errors.Is(err, ErrLogFailed) {
		t.Fatalf("new transaction after log failure: %v", err)
	}
	if _, err := r.c.Recover(context.Background()); !errors.Is(err, ErrLogFailed) {
		t.Fatalf("recovery with a failed log must refuse presumed abort: %v", err)
	}
}

func TestPrepareTimeoutAbortsAHangingBranch(t *testing.T) {
	r := newRig(t, 2, func(c *Config) { c.PrepareTimeout = 50 * time.Millisecond })
	r.rs[1].SetHooks(fake.Hooks{Prepare: func(ctx context.Context, g ids.GID) (participant.Vote, error, bool) {
		return 0, fake.Hang(ctx), true
	}})
	tx, bs := r.begin(t)
	start := time.Now()
	err := tx.Commit(context.Background())
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("commit took %v with a 50ms prepare timeout", el)
	}
	r.waitIdle(t)
	r.atomicity(t, bs)
}

func TestCallerDeadlineBoundsPrepare(t *testing.T) {
	r := newRig(t, 2, func(c *Config) { c.PrepareTimeout = time.Hour })
	r.rs[0].SetHooks(fake.Hooks{Prepare: func(ctx context.Context, g ids.GID) (participant.Vote, error, bool) {
		return 0, fake.Hang(ctx), true
	}})
	tx, bs := r.begin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := tx.Commit(ctx); !errors.Is(err, ErrAborted) {
		t.Fatalf("err %v", err)
	}
	r.waitIdle(t)
	r.atomicity(t, bs)
}

func (r *rig) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.c.Stats().Live != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("transactions still live: %+v", r.c.Transactions())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPhaseTwoRetriesUntilAcknowledgedAndCountsRetries(t *testing.T) {
	r := newRig(t, 2, nil)
	var fails atomic.Int32
	fails.Store(5)
	r.rs[1].SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error {
		if fails.Add(-1) >= 0 {
			return fmt.Errorf("connection refused: %w", fake.ErrInjected)
		}
		return nil
	}})
	tx, bs := r.begin(t)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.atomicity(t, bs)
	if got := r.c.Stats().Retries; got != 5 {
		t.Fatalf("retries %d, want 5", got)
	}
}

func TestCommitPendingWhenCallerGivesUpDuringPhaseTwo(t *testing.T) {
	r := newRig(t, 2, nil)
	release := make(chan struct{})
	r.rs[0].SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error {
		select {
		case <-release:
			return nil
		default:
			return fake.ErrInjected
		}
	}})
	tx, bs := r.begin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := tx.Commit(ctx)
	if !errors.Is(err, ErrCommitPending) || OutcomeOf(err) != Committed {
		t.Fatalf("err %v", err)
	}
	st := r.c.Transactions()
	if len(st) != 1 || st[0].State != protocol.StateCommitting || st[0].Branches[0].Attempts < 2 {
		t.Fatalf("status %+v", st)
	}
	close(release)
	r.waitIdle(t)
	if n := r.atomicity(t, bs); n != 2 {
		t.Fatal("not committed")
	}
}

func TestRollbackBeforeCommit(t *testing.T) {
	r := newRig(t, 2, nil)
	tx, bs := r.begin(t)
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(context.Background()); !errors.Is(err, ErrTxDone) {
		t.Fatalf("commit after rollback: %v", err)
	}
	r.atomicity(t, bs)
	for _, f := range r.rs {
		if j := f.Journal(); j[len(j)-1].Op != "abort" {
			t.Fatalf("journal %+v", j)
		}
	}
}

func TestEnlistOfUnregisteredResourceFails(t *testing.T) {
	r := newRig(t, 1, nil)
	tx, _ := r.begin(t)
	if _, err := tx.Enlist(context.Background(), fake.New("stranger")); !errors.Is(err, ErrUnknownResource) {
		t.Fatalf("err %v", err)
	}
	_ = tx.Rollback(context.Background())
}

func TestBadConfigIsRefused(t *testing.T) {
	cases := map[string]Config{
		"no id":        {Log: wal.NewMem()},
		"bad id":       {ID: "a.b", Log: wal.NewMem()},
		"no log":       {ID: "x"},
		"long id":      {ID: "abcdefghijklmnopqrstuvwxyz01234567890", Log: wal.NewMem()},
		"dup resource": {ID: "x", Log: wal.NewMem(), Resources: []participant.Resource{fake.New("a"), fake.New("a")}},
		"retry":        {ID: "x", Log: wal.NewMem(), RetryBase: time.Second, RetryMax: time.Millisecond},
	}
	for name, cfg := range cases {
		if _, err := New(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

func TestDoCommitsOnNilAndRollsBackOnError(t *testing.T) {
	r := newRig(t, 2, nil)
	ctx := context.Background()
	var gids []participant.Branch
	err := r.c.Do(ctx, func(ctx context.Context, tx *Tx) error {
		for _, f := range r.rs {
			b, err := tx.Enlist(ctx, f)
			if err != nil {
				return err
			}
			gids = append(gids, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.atomicity(t, gids)
	errApp := errors.New("insufficient funds")
	err = r.c.Do(ctx, func(ctx context.Context, tx *Tx) error { return errApp })
	if !errors.Is(err, ErrAborted) || !errors.Is(err, errApp) {
		t.Fatalf("err %v", err)
	}
}

func TestCloseIsSafeTwiceAndRefusesNewWork(t *testing.T) {
	r := newRig(t, 2, nil)
	tx, _ := r.begin(t)
	r.c.Close()
	r.c.Close()
	if err := tx.Commit(context.Background()); !errors.Is(err, ErrAborted) || !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after close: %v", err)
	}
	if _, err := r.c.Begin(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("begin after close: %v", err)
	}
}

// A rollback the closed coordinator refuses still answers nil, and whoever
// waits on the transaction's Result reads aborted, never committed.
func TestRollbackRefusedAtCloseReadsAborted(t *testing.T) {
	r := newRig(t, 2, nil)
	tx, _ := r.begin(t)
	r.c.Close()
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatalf("rollback after close: %v", err)
	}
	if err := tx.Result(); OutcomeOf(err) != Aborted || !errors.Is(err, ErrClosed) {
		t.Fatalf("result of a rollback refused at close: %v (%v)", err, OutcomeOf(err))
	}
}

// TestI1AtomicityUnderRandomFaults runs concurrent transactions while the
// fakes vote no, fail prepares, hang past the prepare timeout and fail
// phase-two commits at random, then checks every transaction is all or
// nothing and nothing is left prepared. Replay with COORD_SEED.
func TestI1AtomicityUnderRandomFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("COORD_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (replay with COORD_SEED=%d)", seed, seed)
	var rmu sync.Mutex
	rnd := rand.New(rand.NewPCG(seed, 7))
	intn := func(n int) int { rmu.Lock(); defer rmu.Unlock(); return rnd.IntN(n) }
	r := newRig(t, 3, func(c *Config) { c.PrepareTimeout = 20 * time.Millisecond; c.Seed = seed })
	for _, f := range r.rs {
		f.SetHooks(fake.Hooks{
			Prepare: func(ctx context.Context, g ids.GID) (participant.Vote, error, bool) {
				switch x := intn(40); {
				case x == 0:
					return participant.VoteNo, nil, true
				case x == 1:
					return 0, fake.ErrInjected, true
				case x == 2:
					return 0, fake.Hang(ctx), true
				case x == 3:
					return participant.VoteReadOnly, nil, true
				}
				return 0, nil, false
			},
			Commit: func(ctx context.Context, g ids.GID) error {
				if intn(5) == 0 {
					return fake.ErrInjected
				}
				return nil
			},
		})
	}
	type result struct {
		bs  []participant.Branch
		err error
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				tx, bs := r.begin(t)
				err := tx.Commit(context.Background())
				mu.Lock()
				results = append(results, result{bs, err})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.waitIdle(t)
	var committed, aborted int
	for _, res := range results {
		n := 0
		prepared := 0
		for i, b := range res.bs {
			g := b.GID().String()
			if r.rs[i].IsCommitted(g) {
				n++
			}
			if r.rs[i].IsPrepared(g) {
				prepared++
			}
		}
		if prepared != 0 {
			t.Fatalf("%d branches left prepared (err %v)", prepared, res.err)
		}
		switch OutcomeOf(res.err) {
		case Committed:
			committed++
			// Read-only branches leave without committing.
		case Aborted:
			aborted++
			if n != 0 {
				t.Fatalf("I1/I5: reported aborted but %d branches committed: %v", n, res.err)
			}
		default:
			t.Fatalf("unexpected outcome: %v", res.err)
		}
	}
	t.Logf("committed %d, aborted %d, retries %d", committed, aborted, r.c.Stats().Retries)
	if committed == 0 || aborted == 0 {
		t.Fatalf("the fault mix produced committed=%d aborted=%d; both must occur", committed, aborted)
	}
}

func TestCloseDuringPhaseTwoLeavesTheDecisionForRestart(t *testing.T) {
	r := newRig(t, 2, nil)
	r.rs[1].SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error {
		return fmt.Errorf("database down: %w", fake.ErrInjected)
	}})
	tx, bs := r.begin(t)
	errc := make(chan error, 1)
	go func() { errc <- tx.Commit(context.Background()) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st := r.c.Transactions(); len(st) == 1 && st[0].Retries > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("phase two never retried")
		}
		time.Sleep(time.Millisecond)
	}
	r.c.Close()
	err := <-errc
	if !errors.Is(err, ErrCommitPending) || !errors.Is(err, ErrClosed) || OutcomeOf(err) != Committed {
		t.Fatalf("commit cut short by Close: %v", err)
	}
	if p, _ := r.log.Pending(); len(p) != 1 || p[0].TxID != tx.ID() {
		t.Fatalf("pending after close: %+v", p)
	}
	// A restart on the same log finishes it.
	r.rs[1].SetHooks(fake.Hooks{})
	c2, err := New(context.Background(), Config{ID: "test", Log: r.log.Restart(), Resources: []participant.Resource{r.rs[0], r.rs[1]}, RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n := r.atomicity(t, bs); n != 2 {
		t.Fatalf("%d of 2 committed after restart", n)
	}
}

func TestI5DoNeverCallsACommittedTransactionAborted(t *testing.T) {
	r := newRig(t, 2, nil)
	errAfter := errors.New("failed after commit")
	var bs []participant.Branch
	err := r.c.Do(context.Background(), func(ctx context.Context, tx *Tx) error {
		for _, f := range r.rs {
			b, err := tx.Enlist(ctx, f)
			if err != nil {
				return err
			}
			bs = append(bs, b)
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		return errAfter
	})
	if errors.Is(err, ErrAborted) || !errors.Is(err, errAfter) {
		t.Fatalf("Do after fn committed: %v", err)
	}
	if n := r.atomicity(t, bs); n != 2 {
		t.Fatal("not committed")
	}
}

func TestCallerDeadlineEndsTheWaitEvenWhenACommitHangs(t *testing.T) {
	r := newRig(t, 2, func(c *Config) { c.CallTimeout = time.Hour })
	release := make(chan struct{})
	r.rs[1].SetHooks(fake.Hooks{Commit: func(ctx context.Context, g ids.GID) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	tx, bs := r.begin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := tx.Commit(ctx)
	if !errors.Is(err, ErrCommitPending) {
		t.Fatalf("err %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("caller waited %v for a hung commit", el)
	}
	close(release)
	r.waitIdle(t)
	if n := r.atomicity(t, bs); n != 2 {
		t.Fatal("not committed")
	}
}

func TestALogOfAnotherCoordinatorIsRefused(t *testing.T) {
	log, err := wal.OpenBolt(t.TempDir()+"/other.wal", wal.BoltOptions{Owner: "txc.someone-else"})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	_, err = New(context.Background(), Config{ID: "test", Log: log, RecoveryInterval: -1})
	if !errors.Is(err, ErrConfig) || !errors.Is(err, wal.ErrWrongOwner) {
		t.Fatalf("err %v", err)
	}
}

// A prepare whose answer was lost can complete on the server after the
// coordinator's rollback found nothing there (MariaDB finishes an XA
// PREPARE sent just before its client gave up). The next recovery pass
// rolls such a branch back, though it is younger than InDoubtTimeout: its
// transaction was aborted here. A young branch of a transaction this run
// knows nothing of still waits.
func TestBranchPreparedAfterItsAbortIsRolledBackByTheNextPass(t *testing.T) {
	r := newRig(t, 2, func(c *Config) { c.InDoubtTimeout = time.Hour })
	// Transaction ids tell their time to the millisecond: one made in the
	// millisecond the coordinator started reads as an earlier run's.
	time.Sleep(3 * time.Millisecond)
	lost := errors.New("connection lost during prepare")
	r.rs[1].SetHooks(fake.Hooks{Prepare: func(context.Context, ids.GID) (participant.Vote, error, bool) {
		return participant.VoteNo, lost, true
	}})
	tx, bs := r.begin(t)
	if err := tx.Commit(context.Background()); !errors.Is(err, ErrAborted) {
		t.Fatalf("commit: %v, want aborted", err)
	}
	late := bs[1].GID().String()
	r.rs[1].AddPrepared(late) // the server finished the prepare after all
	other, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	young, err := ids.NewGID("txc", "test", other, "x")
	if err != nil {
		t.Fatal(err)
	}
	r.rs[1].AddPrepared(young.String())

	rep, err := r.c.Recover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recovery: %+v", rep.Actions)
	if r.rs[1].IsPrepared(late) || !r.rs[1].IsRolledBack(late) {
		t.Fatalf("the aborted transaction's late branch is still prepared after a pass")
	}
	if !r.rs[1].IsPrepared(young.String()) {
		t.Fatal("a young branch of an unknown transaction was resolved before InDoubtTimeout")
	}
}
