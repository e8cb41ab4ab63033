package saga

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"
	_ "github.com/lib/pq"
	"github.com/txcoord/txcoord/internal/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	o   *Orchestrator
	log *Log
	dbs []*sql.DB
}

func setup(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := pgtest.StartT(t, pgtest.Options{})
	ctx := context.Background()
	e := &env{}
	for _, name := range []string{"a", "b"} {
		if err := pg.CreateDB(ctx, name); err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("postgres", pg.DSN(name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if _, err := db.Exec(`CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); INSERT INTO accounts VALUES (1, 100), (2, 100); ` + Schema); err != nil {
			t.Fatal(err)
		}
		e.dbs = append(e.dbs, db)
	}
	e.open(t, filepath.Join(t.TempDir(), "saga.log"))
	return e
}

func (e *env) open(t *testing.T, path string) {
	t.Helper()
	log, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	e.log, e.o = log, New(log, e.dbs)
}

func (e *env) balance(t *testing.T, db int, acct int64) int64 {
	t.Helper()
	var b int64
	if err := e.dbs[db].QueryRow("SELECT balance FROM accounts WHERE id = $1", acct).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) pending(t *testing.T) int {
	t.Helper()
	p, err := e.log.pending()
	if err != nil {
		t.Fatal(err)
	}
	return len(p)
}

var transfer = Plan{Steps: []Step{{DB: 1, Account: 1, Delta: 10}, {DB: 0, Account: 1, Delta: -10}}}

func TestSagaCommitsAndCompensates(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	res, err := e.o.Run(ctx, transfer)
	if err != nil {
		t.Fatal(err)
	}
	if e.balance(t, 0, 1) != 90 || e.balance(t, 1, 1) != 110 || res.FirstCommit.IsZero() || res.LastCommit.Before(res.FirstCommit) {
		t.Fatalf("after a saga: %d, %d, %+v", e.balance(t, 0, 1), e.balance(t, 1, 1), res)
	}
	doomed := Plan{Steps: []Step{{DB: 1, Account: 2, Delta: 10}, {DB: 0, Account: -1, Delta: -10}}}
	res, err = e.o.Run(ctx, doomed)
	if !errors.Is(err, ErrAborted) || !errors.Is(err, ErrClosedAccount) || res.Compensated != 1 {
		t.Fatalf("a failing last step: %v, %+v", err, res)
	}
	if e.balance(t, 1, 2) != 100 {
		t.Fatalf("the credit was not compensated: %d", e.balance(t, 1, 2))
	}
	if n := e.pending(t); n != 0 {
		t.Fatalf("%d sagas left in the log", n)
	}
}

// A redelivered step applies once; a step compensated before it ran never
// applies.
func TestStepsAreIdempotent(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	id := uuid.Must(uuid.NewV7())
	st := Step{DB: 0, Account: 2, Delta: 5}
	for i := 0; i < 3; i++ {
		if err := e.o.do(ctx, id, 0, st); err != nil {
			t.Fatal(err)
		}
	}
	if b := e.balance(t, 0, 2); b != 105 {
		t.Fatalf("three deliveries of one step: %d", b)
	}
	for i := 0; i < 2; i++ {
		if _, err := e.o.undo(ctx, id, 0, st); err != nil {
			t.Fatal(err)
		}
	}
	if b := e.balance(t, 0, 2); b != 100 {
		t.Fatalf("two compensations: %d", b)
	}
	late := uuid.Must(uuid.NewV7())
	if did, err := e.o.undo(ctx, late, 0, st); err != nil || did {
		t.Fatalf("compensating a step that never ran: %v %v", did, err)
	}
	if err := e.o.do(ctx, late, 0, st); err == nil {
		t.Fatal("a step ran after its compensation")
	}
	if b := e.balance(t, 0, 2); b != 100 {
		t.Fatalf("a late step applied: %d", b)
	}
}

// A saga cut off after its first step runs forward at recovery; one cut
// off while compensating is compensated.
func TestRecoverFinishesCutOffSagas(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	forward := uuid.Must(uuid.NewV7())
	if err := e.log.put(ctx, forward, record{Plan: transfer}, true); err != nil {
		t.Fatal(err)
	}
	if err := e.o.do(ctx, forward, 0, transfer.Steps[0]); err != nil {
		t.Fatal(err)
	}
	back := uuid.Must(uuid.NewV7())
	plan2 := Plan{Steps: []Step{{DB: 1, Account: 2, Delta: 7}, {DB: 0, Account: 2, Delta: -7}}}
	if err := e.log.put(ctx, back, record{Plan: plan2, Aborting: true}, true); err != nil {
		t.Fatal(err)
	}
	if err := e.o.do(ctx, back, 0, plan2.Steps[0]); err != nil {
		t.Fatal(err)
	}
	// What a restarted orchestrator does first.
	n, err := e.o.Recover(ctx)
	if err != nil || n != 2 {
		t.Fatalf("recover: %d %v", n, err)
	}
	if e.balance(t, 0, 1) != 90 || e.balance(t, 1, 1) != 110 {
		t.Fatal("the forward saga did not finish")
	}
	if e.balance(t, 1, 2) != 100 || e.balance(t, 0, 2) != 100 {
		t.Fatal("the aborting saga was not compensated")
	}
	if e.pending(t) != 0 {
		t.Fatal("sagas left in the log")
	}
}

// Concurrent forced writes share bbolt commits.
func TestLogGroupCommit(t *testing.T) {
	log, err := OpenLog(filepath.Join(t.TempDir(), "g.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	const writers, each = 16, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := uuid.Must(uuid.NewV7())
				if err := log.put(context.Background(), id, record{Plan: transfer}, true); err != nil {
					t.Error(err)
					return
				}
				if err := log.end(id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s := log.Syncs(); s >= writers*each {
		t.Fatalf("%d commits for %d forced writes: no sharing", s, writers*each)
	}
	p, err := log.pending()
	if err != nil || len(p) != 0 {
		t.Fatalf("pending after every saga ended: %d %v", len(p), err)
	}
	if _, err := decode([]byte("{}\x00\x00\x00\x01")); err == nil {
		t.Fatal("a record with a bad checksum decoded")
	}
}
