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
	r := setup(t)
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
		return coordinator.New(ctx, coordinator.Config{ID: "same", Log: log, Resources: res, RecoveryInterval: -1, OwnerWait: 300 * time.Millisecond})
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
