package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/txcoord/txcoord/internal/failpoint"
)

// The crash tests re-run this test binary as a child in a helper mode (see
// TestMain); the child arms a crash point through failpoint.EnvVar and dies
// by SIGKILL, and the parent reopens the file it left.
const (
	helperModeEnv = "TXCOORD_WAL_HELPER"
	helperPathEnv = "TXCOORD_WAL_HELPER_PATH"
)

// crashHelper runs in the child. It returns an exit code only if it was
// not killed, which the parent reports as a failure.
func crashHelper(mode, path string) int {
	ctx := context.Background()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "helper:", err); return 3 }
	switch mode {
	case "append-two":
		// Sync 1 writes the first decision; the armed crash point fires
		// around sync 2, which holds the second.
		l, err := OpenBolt(path, BoltOptions{})
		if err != nil {
			return fail(err)
		}
		for i := uint64(1); i <= 2; i++ {
			if _, err := l.Append(ctx, commitRec(helperTB{}, testID(i))); err != nil {
				return fail(err)
			}
		}
		return fail(errors.New("survived both appends"))
	case "end-unflushed":
		l, err := OpenBolt(path, BoltOptions{EndFlushDelay: time.Hour})
		if err != nil {
			return fail(err)
		}
		if _, err := l.Append(ctx, commitRec(helperTB{}, testID(1))); err != nil {
			return fail(err)
		}
		if err := l.End(testID(1)); err != nil {
			return fail(err)
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return fail(fmt.Errorf("unknown mode %q", mode))
}

// helperTB lets the child use the record builders outside a test.
type helperTB struct{ testing.TB }

func (helperTB) Helper() {}
func (helperTB) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, args...)
	os.Exit(4)
}

func runCrashChild(t *testing.T, mode, crash, path string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperModeEnv+"="+mode, helperPathEnv+"="+path, failpoint.EnvVar+"="+crash)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: err %v, want death by SIGKILL; output:\n%s", err, out)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL; output:\n%s", err, out)
	}
}

func TestCrashAroundSyncDecisionIsDurableOnlyAfterSync(t *testing.T) {
	for _, c := range []struct {
		crash       string
		secondThere bool
	}{
		{failpoint.WALBeforeSync + ":2", false},
		{failpoint.WALAfterSync + ":2", true},
	} {
		t.Run(c.crash, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wal.db")
			runCrashChild(t, "append-two", c.crash, path)
			l := openBolt(t, path, BoltOptions{})
			if l.Epoch() != 2 {
				t.Errorf("epoch %d after one crashed run, want 2", l.Epoch())
			}
			if _, err := l.Lookup(testID(1)); err != nil {
				t.Fatalf("first decision, synced before the crash: %v", err)
			}
			_, err := l.Lookup(testID(2))
			switch {
			case c.secondThere && err != nil:
				t.Fatalf("decision synced before the crash is lost: %v", err)
			case !c.secondThere && !errors.Is(err, ErrNotFound):
				t.Fatalf("decision killed before its sync: Lookup err %v, want ErrNotFound", err)
			}
			// The log keeps working after the crash.
			mustAppend(t, l, commitRec(t, testID(3)))
		})
	}
}

func TestCrashUnflushedEndMayBeLostDecisionNever(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wal.db")
	runCrashChild(t, "end-unflushed", "", path)
	l := openBolt(t, path, BoltOptions{})
	d, err := l.Lookup(testID(1))
	if err != nil {
		t.Fatalf("decision lost: %v", err)
	}
	// The END was still in memory (EndFlushDelay is an hour), so the crash
	// lost it: the decision is pending again and will be driven again.
	if d.Ended {
		t.Fatal("END that was never written survived the crash")
	}
	if p, _ := l.Pending(); len(p) != 1 || p[0].TxID != testID(1) {
		t.Fatalf("pending %+v, want the decision whose END was lost", p)
	}
}
