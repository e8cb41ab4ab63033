package crashtest

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/wal"
)

// Two running coordinators with one id would each take the other's
// prepared branches for their own; the second is refused at start.
func TestSecondCoordinatorWithTheSameIDIsRefused(t *testing.T) {
	if testingChild() {
		t.Skip("child")
	}
	r := setup(t, kindPostgres)
	ctx := context.Background()
	start := func(walName string) (*coordinator.Coordinator, error) {
		log, err := wal.OpenBolt(filepath.Join(t.TempDir(), walName), wal.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { log.Close() })
		var res []participant.Resource
		for i, name := range []string{"bank_a", "bank_b"} {
			p, err := postgres.Open(ctx, name, "postgres", r.dsn[i], postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			res = append(res, p)
		}
		// bank_a holds the decisions: the id's owner is what keeps a second
		// coordinator from fencing the first one's holder transactions.
		return coordinator.New(ctx, coordinator.Config{ID: "same", Log: log, Resources: res, Holder: "bank_a", RecoveryInterval: -1, OwnerWait: 300 * time.Millisecond})
	}
	a, err := start("a.wal")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := start("b.wal"); !errors.Is(err, participant.ErrOwnerRunning) {
		t.Fatalf("second coordinator with the same id: %v, want ErrOwnerRunning", err)
	}
	a.Close()
	b, err := start("b.wal")
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	b.Close()
}

// A claim lost with its session (a server restart, a terminated backend)
// is taken again before a recovery pass; if another process took it
// meanwhile, the pass refuses to resolve anything.
func TestLostClaimIsRetakenOrRecoveryRefuses(t *testing.T) {
	if testingChild() {
		t.Skip("child")
	}
	r := setup(t, kindPostgres)
	ctx := context.Background()
	var res []participant.Resource
	for i, name := range []string{"bank_a", "bank_b"} {
		p, err := postgres.Open(ctx, name, "postgres", r.dsn[i], postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		res = append(res, p)
	}
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "c.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	c, err := coordinator.New(ctx, coordinator.Config{ID: "claims", Log: log, Resources: res, RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cut := func() {
		for _, db := range r.db {
			if _, err := db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND pid <> pg_backend_pid()`); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	cut()
	if _, err := c.Recover(ctx); err != nil {
		t.Fatalf("recovery after the claim's session ended: %v", err)
	}
	cut()
	thief, err := res[0].(*postgres.Resource).Guard(ctx, "txc.claims")
	if err != nil {
		t.Fatal(err)
	}
	defer thief.Release()
	if _, err := c.Recover(ctx); !errors.Is(err, participant.ErrOwnerRunning) {
		t.Fatalf("recovery while another process holds the id: %v, want ErrOwnerRunning", err)
	}
}
