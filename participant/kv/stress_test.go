package kv

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

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// TestConcurrentTransfersKeepTotalBalance runs concurrent transfers between
// accounts spread over two stores, each transfer a transaction driven by a
// small two-phase commit loop (prepare both, commit both if both voted yes,
// else roll back), and checks that money is neither made nor lost and that
// nothing is left prepared. KV_STRESS_SEED replays a run.
func TestConcurrentTransfersKeepTotalBalance(t *testing.T) {
	const (
		workers   = 8
		transfers = 200
		accounts  = 10
		initial   = 1000
	)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("KV_STRESS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("KV_STRESS_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay with KV_STRESS_SEED=%d)", seed, seed)

	ctx := context.Background()
	stores := []*Store{openStore(t, tempPath(t)), openStore(t, tempPath(t))}
	// Account i lives in stores[i%2].
	acct := func(i int) (*Store, string) { return stores[i%2], fmt.Sprintf("acct-%02d", i) }
	for _, s := range stores {
		b := begin(t, s, newGID(t, "setup"))
		for i := range accounts {
			if as, key := acct(i); as == s {
				if err := b.PutInt64(ctx, key, initial); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := b.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
	}

	var committedN, abortedN atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for range transfers {
				from := rng.IntN(accounts)
				to := (from + 1 + rng.IntN(accounts-1)) % accounts
				amount := int64(1 + rng.IntN(200))
				ok, err := transfer(ctx, acct, from, to, amount)
				if err != nil {
					errs <- err
					return
				}
				if ok {
					committedN.Add(1)
				} else {
					abortedN.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var total int64
	for _, s := range stores {
		data, err := s.Scan(ctx, "acct-")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range data {
			n, err := ParseInt64(v)
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			if n < 0 {
				t.Errorf("%s is overdrawn: %d", k, n)
			}
			total += n
		}
		if got := preparedGIDs(t, s); len(got) != 0 {
			t.Errorf("%s: left prepared: %v", s.Name(), got)
		}
	}
	t.Logf("%d committed, %d aborted", committedN.Load(), abortedN.Load())
	if total != accounts*initial {
		t.Fatalf("total balance %d; want %d", total, accounts*initial)
	}
	if committedN.Load() == 0 {
		t.Fatal("no transfer committed")
	}
}

// transfer moves amount from one account to another in one transaction and
// reports whether it committed. A transfer that would overdraw changes
// nothing and commits read-only. Conflicts abort it; other errors are
// returned.
func transfer(ctx context.Context, acct func(int) (*Store, string), from, to int, amount int64) (bool, error) {
	id, err := ids.NewTxID()
	if err != nil {
		return false, err
	}
	branches := map[*Store]*Branch{}
	branchOf := func(s *Store) (*Branch, error) {
		if b := branches[s]; b != nil {
			return b, nil
		}
		g, err := ids.NewGID("txc", "stress", id, s.Name()+strconv.Itoa(len(branches)))
		if err != nil {
			return nil, err
		}
		b, err := s.begin(ctx, g)
		if err != nil {
			return nil, err
		}
		branches[s] = b
		return b, nil
	}
	abortAll := func() {
		for _, b := range branches {
			_ = b.Abort(ctx)
		}
	}

	fs, fk := acct(from)
	ts, tk := acct(to)
	fb, err := branchOf(fs)
	if err != nil {
		return false, err
	}
	tb, err := branchOf(ts)
	if err != nil {
		abortAll()
		return false, err
	}
	fbal, _, err := fb.GetInt64(ctx, fk)
	if err != nil {
		abortAll()
		return false, err
	}
	if fbal >= amount {
		tbal, _, err := tb.GetInt64(ctx, tk)
		if err == nil {
			err = fb.PutInt64(ctx, fk, fbal-amount)
		}
		if err == nil {
			err = tb.PutInt64(ctx, tk, tbal+amount)
		}
		if err != nil {
			abortAll()
			return false, err
		}
	}

	if len(branches) == 1 {
		err := fb.CommitOnePhase(ctx)
		if errors.Is(err, ErrConflict) {
			return false, nil
		}
		return err == nil, err
	}

	// Phase one.
	var yes []*Branch
	decision := true
	var failure error
	for _, b := range branches {
		v, err := b.Prepare(ctx)
		switch {
		case v == participant.VoteYes:
			yes = append(yes, b)
		case v == participant.VoteReadOnly:
		case errors.Is(err, ErrConflict):
			decision = false
		default:
			decision = false
			failure = fmt.Errorf("prepare %s: vote %v: %w", b.GID(), v, err)
		}
	}
	// Phase two.
	for _, b := range yes {
		s := b.Resource()
		var err error
		if decision {
			err = s.Commit(ctx, b.GID())
		} else {
			err = s.Rollback(ctx, b.GID())
		}
		if err != nil {
			return false, err
		}
	}
	if !decision {
		abortAll()
	}
	return decision, failure
}
