package faulttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

// One database of three down must not stop the rest: the coordinator
// starts without it, commits transactions at the other two, refuses
// branches at the one that is down, resolves in-doubt branches at the
// others within a recovery interval, and claims the lost one again when it
// is back.
func TestOneDatabaseDownStopsNothingElse(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	names := []string{"a", "b", "c"}
	servers := pgtest.StartManyT(t, 3, pgtest.Options{NoFsync: true})
	res := map[string]*postgres.Resource{}
	dbs := map[string]*sql.DB{}
	var list []participant.Resource
	for i, n := range names {
		if err := servers[i].CreateDB(ctx, n); err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("postgres", servers[i].DSN(n))
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(2)
		t.Cleanup(func() { db.Close() })
		if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts VALUES (1, 1000)`); err != nil {
			t.Fatal(err)
		}
		dbs[n] = db
		r, err := postgres.Open(ctx, n, "postgres", servers[i].DSN(n)+"&connect_timeout=2", postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		res[n] = r
		list = append(list, r)
	}
	// Branches of an earlier run, prepared at a and b: recovery rolls
	// them back at once (presumed abort).
	earlier := func() []string {
		id, err := ids.NewTxID()
		if err != nil {
			t.Fatal(err)
		}
		var gids []string
		for _, n := range []string{"a", "b"} {
			g, err := ids.NewGID(ids.DefaultPrefix, "partial", id, n)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dbs[n].ExecContext(ctx, fmt.Sprintf("BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = 1; PREPARE TRANSACTION %s", ids.QuoteLiteral(g.String()))); err != nil {
				t.Fatal(err)
			}
			gids = append(gids, g.String())
		}
		return gids
	}
	stillPrepared := func() int {
		n := 0
		for _, name := range []string{"a", "b"} {
			var k int
			if err := dbs[name].QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'txc.partial.%'").Scan(&k); err != nil {
				t.Fatal(err)
			}
			n += k
		}
		return n
	}
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "c.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	time.Sleep(2 * time.Millisecond) // the branches begin after the log
	_ = earlier()

	// c is down before the coordinator starts.
	if err := servers[2].Kill(); err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(ctx, coordinator.Config{ID: "partial", Log: log, Resources: list,
		RecoveryInterval: 300 * time.Millisecond, InDoubtTimeout: 500 * time.Millisecond, CallTimeout: 3 * time.Second, OwnerWait: 2 * time.Second})
	if err != nil {
		t.Fatalf("a coordinator with one database of three down did not start: %v", err)
	}
	defer c.Close()
	if down := c.DownResources(); len(down) != 1 || down["c"] == "" {
		t.Fatalf("down resources: %v, want c", down)
	}
	transfer := func(from, to string) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		for _, step := range []struct {
			name  string
			delta int
		}{{from, -5}, {to, 5}} {
			b, err := tx.Enlist(ctx, res[step.name])
			if err != nil {
				_ = tx.Rollback(ctx)
				return err
			}
			if _, err := b.(*postgres.Branch).ExecContext(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = 1", step.delta); err != nil {
				_ = tx.Rollback(ctx)
				return err
			}
		}
		return tx.Commit(ctx)
	}
	for i := 0; i < 5; i++ {
		if err := transfer("a", "b"); err != nil {
			t.Fatalf("a transfer between the two databases that are up: %v", err)
		}
	}
	if err := transfer("a", "c"); !errors.Is(err, coordinator.ErrResourceDown) {
		t.Fatalf("a branch at the database that is down: %v, want ErrResourceDown", err)
	}
	// The start-up pass and the loop resolve a and b's branches while c
	// is down.
	waitUntil(t, 5*time.Second, "the earlier run's branches at a and b resolved while c is down", func() bool { return stillPrepared() == 0 })

	// c back: claimed again by the next pass, and usable.
	if err := servers[2].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "c claimed again", func() bool { return len(c.DownResources()) == 0 })
	if err := transfer("a", "c"); err != nil {
		t.Fatalf("a transfer to c once it is back: %v", err)
	}

	// c killed while the coordinator runs: its claim is lost, and the
	// others' branches are still resolved within a recovery interval or
	// two.
	if err := servers[2].Kill(); err != nil {
		t.Fatal(err)
	}
	_ = earlier()
	began := time.Now()
	waitUntil(t, 5*time.Second, "branches at a and b resolved after c died", func() bool { return stillPrepared() == 0 })
	t.Logf("with c down, the others' in-doubt branches were resolved %v after they appeared (recovery interval 300ms, in-doubt timeout 500ms)", time.Since(began).Round(time.Millisecond))
	if err := transfer("b", "a"); err != nil {
		t.Fatalf("a transfer between a and b while c is down: %v", err)
	}
	rep, err := c.Recover(ctx)
	if err != nil {
		t.Fatalf("a pass with c down: %v", err)
	}
	if len(rep.Down) != 1 || rep.Down[0] != "c" || !strings.Contains(rep.Err().Error(), "resource down") {
		t.Fatalf("the pass reports down %v, errors %v", rep.Down, rep.Errors)
	}
	var sum int
	for _, n := range []string{"a", "b"} {
		var bal int
		if err := dbs[n].QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&bal); err != nil {
			t.Fatal(err)
		}
		sum += bal
	}
	// a and b started at 1000 each; one transfer moved 5 from a to c.
	if sum != 1995 {
		t.Fatalf("a + b = %d, want 1995", sum)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
