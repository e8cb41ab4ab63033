package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	case "append-two-move":
		// Both decisions are in the journal; the END of the first waits.
		// The flush moves all three into the file, around which the armed
		// crash point fires.
		l, err := OpenBolt(path, BoltOptions{EndFlushDelay: time.Hour})
		if err != nil {
			return fail(err)
		}
		for i := uint64(1); i <= 2; i++ {
			if _, err := l.Append(ctx, commitRec(helperTB{}, testID(i))); err != nil {
				return fail(err)
			}
		}
		if err := l.End(testID(1)); err != nil {
			return fail(err)
		}
		if err := l.Flush(ctx); err != nil {
			return fail(err)
		}
		return fail(errors.New("survived the move"))
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

func TestCrashAroundMovingTheJournalLosesNoDecision(t *testing.T) {
	for _, c := range []struct {
		crash string
		ended bool
	}{
		{failpoint.WALBeforeMove + ":1", false},
		{failpoint.WALAfterMove + ":1", true},
	} {
		t.Run(c.crash, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wal.db")
			runCrashChild(t, "append-two-move", c.crash, path)
			l := openBolt(t, path, BoltOptions{})
			for i := uint64(1); i <= 2; i++ {
				if _, err := l.Lookup(testID(i)); err != nil {
					t.Fatalf("decision %d, in the journal before the crash: %v", i, err)
				}
			}
			d, _ := l.Lookup(testID(1))
			if d.Ended != c.ended {
				t.Fatalf("first decision ended %v after a crash at %s, want %v", d.Ended, c.crash, c.ended)
			}
			if p, _ := l.Pending(); len(p) != map[bool]int{true: 1, false: 2}[c.ended] {
				t.Fatalf("pending %d decisions", len(p))
			}
			// Opening moved the journal's decisions into the file: a
			// second open finds the same, and the log goes on.
			l = reopen(t, l, BoltOptions{})
			if p, _ := l.Pending(); len(p) != map[bool]int{true: 1, false: 2}[c.ended] {
				t.Fatalf("pending %d decisions after a second open", len(p))
			}
			mustAppend(t, l, commitRec(t, testID(3)))
		})
	}
}

// crashedWithTwoInJournal leaves a log whose two decisions are in the
// journal alone (the process killed after the second journal write), and
// returns its path and the journal's bytes.
func crashedWithTwoInJournal(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wal.db")
	runCrashChild(t, "append-two", failpoint.WALAfterSync+":2", path)
	data, err := os.ReadFile(JournalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestReadOnlyOpenSeesTheJournalsDecisions(t *testing.T) {
	path, _ := crashedWithTwoInJournal(t)
	l := openBolt(t, path, BoltOptions{ReadOnly: true})
	if p, _ := l.Pending(); len(p) != 2 {
		t.Fatalf("pending %+v, want the journal's two decisions", p)
	}
	var n int
	_ = l.Records(func(Record) error { n++; return nil })
	if n != 2 {
		t.Fatalf("Records listed %d, want 2", n)
	}
	if _, err := l.Append(context.Background(), commitRec(t, testID(9))); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Append on a read-only log: %v", err)
	}
}

func TestJournalLeftByACrashIsReadWithNoJournal(t *testing.T) {
	path, _ := crashedWithTwoInJournal(t)
	l := openBolt(t, path, BoltOptions{NoJournal: true})
	if p, _ := l.Pending(); len(p) != 2 {
		t.Fatalf("pending %+v, want the journal's two decisions", p)
	}
	mustAppend(t, l, commitRec(t, testID(3)))
	if s := l.Stats(); s.Syncs != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDamagedJournal(t *testing.T) {
	_, clean := crashedWithTwoInJournal(t)
	recs, err := scanJournal("j", clean, 0)
	if err != nil || len(recs) != 2 {
		t.Fatalf("journal as left: %d records, %v", len(recs), err)
	}
	second := int(recs[1].off)
	for _, c := range []struct {
		name    string
		damage  func(b []byte) []byte
		want    error // nil: opens
		decided int   // decisions found when it opens
	}{
		// A block acknowledged, then damaged, before a whole newer one.
		{"first block", func(b []byte) []byte { b[journalHeader+blockHeader+20] ^= 0x40; return b }, ErrCorrupt, 0},
		// The last write, cut short by the crash: its decision was never
		// acknowledged.
		{"last block torn", func(b []byte) []byte {
			for i := second + blockHeader + 10; i < second+blockHeader+40; i++ {
				b[i] = 0
			}
			return b
		}, nil, 1},
		{"last block's header torn", func(b []byte) []byte { b[second+5] ^= 0xff; return b }, nil, 1},
		{"not a journal", func(b []byte) []byte { copy(b, "something else.."); return b }, ErrBadFile, 0},
		{"empty file", func([]byte) []byte { return nil }, ErrBadFile, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, own := crashedWithTwoInJournal(t)
			if err := os.WriteFile(JournalPath(path), c.damage(own), 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := OpenBolt(path, BoltOptions{})
			if c.want != nil {
				if !errors.Is(err, c.want) {
					t.Fatalf("open: %v, want %v", err, c.want)
				}
				if !strings.Contains(err.Error(), JournalPath(path)) {
					t.Fatalf("error %q does not name the journal", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer l.Close()
			if p, _ := l.Pending(); len(p) != c.decided || p[0].TxID != testID(1) {
				t.Fatalf("pending %+v, want the first decision alone", p)
			}
		})
	}
}

func TestJournalAndLogFileBelongTogether(t *testing.T) {
	path, _ := crashedWithTwoInJournal(t)
	_, other := crashedWithTwoInJournal(t)
	if err := os.WriteFile(JournalPath(path), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path, BoltOptions{}); !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), "not kept together") {
		t.Fatalf("open with another log's journal: %v, want ErrBadFile", err)
	}
	// The log file gone, its journal left: a new log file does not take it.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBolt(path, BoltOptions{}); !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), "from an earlier log") {
		t.Fatalf("new log file beside an old journal: %v, want ErrBadFile", err)
	}
}
