package coordinator

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

// smallDisk mounts a tmpfs of size bytes, or skips when it cannot.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small filesystem needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// A full disk under the log: the commit whose decision could not be
// written is not acknowledged (outcome unknown, nothing committed), every
// later commit is refused saying why, and every commit that was
// acknowledged is in the log.
func TestFullDiskRefusesCommitsAndAcknowledgesOnlyWhatIsDurable(t *testing.T) {
	// The journal takes 1 MiB at once; the bbolt file fills the rest.
	dir := smallDisk(t, "1200k")
	path := filepath.Join(dir, "txcoord.wal")
	log, err := wal.OpenBolt(path, wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := fake.New("a"), fake.New("b")
	c, err := New(context.Background(), Config{ID: "disk", Log: log, Resources: []participant.Resource{a, b}, RecoveryInterval: -1})
	if err != nil {
		log.Close()
		t.Fatal(err)
	}
	ctx := context.Background()
	var acked []ids.TxID
	var failed *Tx
	var failErr error
	for i := 0; i < 100000 && failed == nil; i++ {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []participant.Resource{a, b} {
			if _, err := tx.Enlist(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			failed, failErr = tx, err
			break
		}
		acked = append(acked, tx.ID())
	}
	if failed == nil {
		t.Fatal("the disk never filled")
	}
	if OutcomeOf(failErr) != Unknown || !strings.Contains(failErr.Error(), "no space left") {
		t.Fatalf("the commit that hit the full disk: %v; want outcome unknown, saying why", failErr)
	}
	st := failed.Status()
	for _, br := range st.Branches {
		if a.IsCommitted(br.GID.String()) || b.IsCommitted(br.GID.String()) {
			t.Fatalf("branch %s committed though its decision was not durable (I2)", br.GID)
		}
	}
	_, err = c.Begin(ctx)
	if !errors.Is(err, ErrLogFailed) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("a new transaction after the failure: %v; want ErrLogFailed saying why", err)
	}
	c.Close()
	log.Close()

	ro, err := wal.OpenBolt(path, wal.BoltOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("reading the log back: %v", err)
	}
	defer ro.Close()
	for _, id := range acked {
		if d, err := ro.Lookup(id); err != nil || d.Kind != wal.KindCommit {
			t.Fatalf("acknowledged commit %s is not in the log: %v", id, err)
		}
	}
	t.Logf("%d commits acknowledged before the disk filled; all durable", len(acked))
}
