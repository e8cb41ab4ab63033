package faulttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	_ "github.com/lib/pq"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

func TestMain(m *testing.M) {
	// toxiproxy's own link goroutine can stay blocked handing a chunk to a
	// link its proxy already stopped (toxics/noop.go): the proxy's, not
	// txcoord's.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"))
}

// hooks run around a branch's prepare and a resource's phase-two commit.
type hooks struct {
	mu                          sync.Mutex
	beforePrepare, afterPrepare func()
	beforeCommit, afterCommit   func(err error)
	// Around a decision holder's commit (CommitDecision).
	beforeHold, afterHold func(err error)
}

func (h *hooks) get() hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	return hooks{beforePrepare: h.beforePrepare, afterPrepare: h.afterPrepare, beforeCommit: h.beforeCommit, afterCommit: h.afterCommit,
		beforeHold: h.beforeHold, afterHold: h.afterHold}
}

func (h *hooks) set(f func(*hooks)) {
	h.mu.Lock()
	f(h)
	h.mu.Unlock()
}

// resource is a PostgreSQL resource with hooks.
type resource struct {
	*postgres.Resource
	h *hooks
}

func (r *resource) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	b, err := r.Resource.Begin(ctx, gid)
	if err != nil {
		return nil, err
	}
	return &branch{Branch: b.(*postgres.Branch), r: r}, nil
}

func (r *resource) Commit(ctx context.Context, gid ids.GID) error {
	h := r.h.get()
	if h.beforeCommit != nil {
		h.beforeCommit(nil)
	}
	err := r.Resource.Commit(ctx, gid)
	if h.afterCommit != nil {
		h.afterCommit(err)
	}
	return err
}

type branch struct {
	*postgres.Branch
	r *resource
}

func (b *branch) Resource() participant.Resource { return b.r }

func (b *branch) Prepare(ctx context.Context) (participant.Vote, error) {
	h := b.r.h.get()
	if h.beforePrepare != nil {
		h.beforePrepare()
	}
	v, err := b.Branch.Prepare(ctx)
	if h.afterPrepare != nil {
		h.afterPrepare()
	}
	return v, err
}

// rig is two PostgreSQL servers, a proxy in front of each, and a
// coordinator reaching them through the proxies.
type rig struct {
	t       *testing.T
	pg      [2]*pgtest.Server
	proxy   [2]*toxiproxy.Proxy
	direct  [2]*sql.DB // past the proxies, for checks
	res     [2]*resource
	h       [2]*hooks
	c       *coordinator.Coordinator
	log     *wal.Bolt
	toxiSrv *toxiproxy.ApiServer
}

func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

// newRigWith is newRig with the coordinator's configuration changed by mod.
func newRigWith(t *testing.T, mod func(*coordinator.Config)) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	r := &rig{t: t, toxiSrv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
	for i := range r.pg {
		s := pgtest.StartT(t, pgtest.Options{})
		if err := s.CreateDB(ctx, "bank"); err != nil {
			t.Fatal(err)
		}
		r.pg[i] = s
		p := toxiproxy.NewProxy(r.toxiSrv, fmt.Sprintf("pg%d", i), "127.0.0.1:0", "127.0.0.1:"+strconv.Itoa(s.Port()))
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		r.proxy[i] = p
		db, err := sql.Open("postgres", s.DSN("bank"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if _, err := db.Exec(`CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts VALUES (1, 1000)`); err != nil {
			t.Fatal(err)
		}
		r.direct[i] = db
		_, port, _ := net.SplitHostPort(p.Listen)
		dsn := strings.Replace(s.DSN("bank"), ":"+strconv.Itoa(s.Port())+"/", ":"+port+"/", 1)
		if dsn == s.DSN("bank") {
			t.Fatalf("cannot point %q at the proxy", dsn)
		}
		pr, err := postgres.Open(ctx, fmt.Sprintf("bank%d", i), "postgres", dsn+"&connect_timeout=5", postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pr.Close() })
		r.h[i] = &hooks{}
		r.res[i] = &resource{Resource: pr, h: r.h[i]}
	}
	var err error
	r.log, err = wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.log.Close() })
	cfg := coordinator.Config{ID: "faults", Log: r.log, Resources: []participant.Resource{r.res[0], r.res[1]},
		PrepareTimeout: 2 * time.Second, CallTimeout: 2 * time.Second, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		RecoveryInterval: -1, InDoubtTimeout: time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	r.c, err = coordinator.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r
}

func (r *rig) toxic(i int, name, typ, stream string, attrs string) {
	r.t.Helper()
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"attributes":{%s}}`, name, typ, stream, attrs)
	if _, err := r.proxy[i].Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		r.t.Fatalf("toxic %s: %v", js, err)
	}
}

func (r *rig) clear(i int, name string) {
	_ = r.proxy[i].Toxics.RemoveToxic(context.Background(), name)
}

// transfer moves 10 from bank0 to bank1 and returns Commit's result.
func (r *rig) transfer(ctx context.Context) error {
	return r.c.Do(ctx, func(ctx context.Context, tx *coordinator.Tx) error {
		for i, delta := range []int{-10, 10} {
			br, err := tx.Enlist(ctx, r.res[i])
			if err != nil {
				return err
			}
			exec := br.(interface {
				ExecContext(context.Context, string, ...any) (sql.Result, error)
			})
			if _, err := exec.ExecContext(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = 1", delta); err != nil {
				return err
			}
		}
		return nil
	})
}

// settle clears every toxic, runs recovery until nothing is prepared, and
// checks that the transfer is in both databases or in neither and that
// the outcome the caller heard agrees.
func (r *rig) settle(outcome error) {
	t := r.t
	t.Helper()
	for i := range r.proxy {
		r.proxy[i].Toxics.ResetToxics(context.Background())
		r.h[i].set(func(h *hooks) {
			h.beforePrepare, h.afterPrepare, h.beforeCommit, h.afterCommit, h.beforeHold, h.afterHold = nil, nil, nil, nil, nil, nil
		})
	}
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := r.c.Recover(ctx)
		left := 0
		for _, db := range r.direct {
			var n int
			if qerr := db.QueryRow("SELECT count(*) FROM pg_prepared_xacts").Scan(&n); qerr != nil {
				err = qerr
			}
			left += n
		}
		rows := 0
		if qerr := r.direct[0].QueryRow("SELECT count(*) FROM " + postgres.DefaultDecisionTable).Scan(&rows); qerr != nil && postgres.SQLState(qerr) != "42P01" {
			err = qerr
		}
		if err == nil && left == 0 && r.c.Stats().Log.Pending == 0 && rows == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled after a minute of recovery: %d prepared, %d pending, %d decision rows, %v", left, r.c.Stats().Log.Pending, rows, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var b [2]int
	for i, db := range r.direct {
		if err := db.QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&b[i]); err != nil {
			t.Fatal(err)
		}
	}
	committed := b == [2]int{990, 1010}
	if !committed && b != [2]int{1000, 1000} {
		t.Fatalf("I1 broken: balances %v", b)
	}
	switch coordinator.OutcomeOf(outcome) {
	case coordinator.Committed:
		if !committed {
			t.Fatalf("I5 broken: told committed (%v), balances %v", outcome, b)
		}
	case coordinator.Aborted:
		if committed {
			t.Fatalf("I5 broken: told aborted (%v), balances %v", outcome, b)
		}
	}
	t.Logf("told %v (%v); ended %s", coordinator.OutcomeOf(outcome), outcome, map[bool]string{true: "committed", false: "rolled back"}[committed])
}

func TestLatency(t *testing.T) {
	r := newRig(t)
	r.toxic(1, "slow", "latency", "downstream", `"latency": 100, "jitter": 20`)
	r.toxic(1, "slow-up", "latency", "upstream", `"latency": 50`)
	err := r.transfer(context.Background())
	if err != nil {
		t.Fatalf("a slow link should only slow the commit: %v", err)
	}
	r.settle(err)
}

// The connection to bank1 is reset while PREPARE TRANSACTION is on its
// way.
func TestCutDuringPrepare(t *testing.T) {
	r := newRig(t)
	r.h[1].set(func(h *hooks) {
		h.beforePrepare = func() { r.toxic(1, "cut", "reset_peer", "upstream", `"timeout": 0`) }
		h.afterPrepare = func() { r.clear(1, "cut") }
	})
	err := r.transfer(context.Background())
	if coordinator.OutcomeOf(err) == coordinator.Committed {
		t.Fatalf("committed with PREPARE cut off: %v", err)
	}
	r.settle(err)
}

// bank1 carries out COMMIT PREPARED but its reply is lost: phase two
// retries and finds the branch already committed.
func TestReplyToCommitPreparedLost(t *testing.T) {
	r := newRig(t)
	var once sync.Once
	r.h[1].set(func(h *hooks) {
		h.beforeCommit = func(error) {
			once.Do(func() { r.toxic(1, "drop-reply", "limit_data", "downstream", `"bytes": 0`) })
		}
		h.afterCommit = func(error) { r.clear(1, "drop-reply") }
	})
	err := r.transfer(context.Background())
	if coordinator.OutcomeOf(err) != coordinator.Committed {
		t.Fatalf("the decision was logged; the outcome must be committed, got %v", err)
	}
	r.settle(err)
	if r.c.Stats().Retries == 0 {
		t.Fatal("phase two did not retry the lost commit")
	}
}

// The link to bank1 turns into a blackhole during PREPARE: the prepare
// timeout aborts the transaction.
func TestBlackholeDuringPrepare(t *testing.T) {
	r := newRig(t)
	r.h[1].set(func(h *hooks) {
		h.beforePrepare = func() { r.toxic(1, "hole", "timeout", "upstream", `"timeout": 0`) }
	})
	start := time.Now()
	err := r.transfer(context.Background())
	if coordinator.OutcomeOf(err) == coordinator.Committed {
		t.Fatalf("committed through a blackhole: %v", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("the prepare timeout did not bound a blackholed prepare: %v", time.Since(start))
	}
	r.settle(err)
}

// bank1's server is killed -9 at each step of the protocol and restarted;
// recovery brings the transfer to one outcome in both databases.
func TestDatabaseKilledInEachPhase(t *testing.T) {
	phases := []struct {
		name string
		set  func(r *rig, kill func())
	}{
		{"before-prepare", func(r *rig, kill func()) { r.h[1].set(func(h *hooks) { h.beforePrepare = kill }) }},
		{"after-prepare", func(r *rig, kill func()) { r.h[1].set(func(h *hooks) { h.afterPrepare = kill }) }},
		{"before-commit-prepared", func(r *rig, kill func()) {
			r.h[1].set(func(h *hooks) { h.beforeCommit = func(error) { kill() } })
		}},
		{"after-commit-prepared", func(r *rig, kill func()) {
			r.h[1].set(func(h *hooks) { h.afterCommit = func(error) { kill() } })
		}},
		{"other-side-after-prepare", func(r *rig, kill func()) { r.h[0].set(func(h *hooks) { h.afterPrepare = kill }) }},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			r := newRig(t)
			var once sync.Once
			restarted := make(chan struct{})
			kill := func() {
				once.Do(func() {
					if err := r.pg[1].Kill(); err != nil {
						t.Error(err)
					}
					go func() {
						defer close(restarted)
						time.Sleep(500 * time.Millisecond)
						if err := r.pg[1].Restart(context.Background()); err != nil {
							t.Error(err)
						}
					}()
				})
			}
			ph.set(r, kill)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := r.transfer(ctx)
			cancel()
			once.Do(func() { close(restarted) })
			<-restarted
			if errors.Is(err, context.DeadlineExceeded) && coordinator.OutcomeOf(err) == coordinator.Committed {
				t.Logf("phase two still going after the deadline: %v", err)
			}
			r.settle(err)
		})
	}
}
