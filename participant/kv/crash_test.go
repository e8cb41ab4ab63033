package kv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

// The crash tests re-run the test binary as a helper that prepares (and in
// commit mode commits) one branch writing k=v, with a crash point armed.
const (
	helperEnv     = "KV_TEST_HELPER" // "prepare" or "commit"
	helperPathEnv = "KV_TEST_HELPER_PATH"
	helperGIDEnv  = "KV_TEST_HELPER_GID"
)

func helperMode() string { return os.Getenv(helperEnv) }

// runHelper runs in the child process and exits it.
func runHelper(mode string) {
	err := helper(mode)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helper(mode string) error {
	ctx := context.Background()
	g, err := ids.ParseGID(os.Getenv(helperGIDEnv))
	if err != nil {
		return err
	}
	s, err := Open(os.Getenv(helperPathEnv), "kv1", Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	b, err := s.begin(ctx, g)
	if err != nil {
		return err
	}
	if err := b.Put(ctx, "k", []byte("v")); err != nil {
		return err
	}
	if v, err := b.Prepare(ctx); v != participant.VoteYes {
		return fmt.Errorf("prepare voted %v: %v", v, err)
	}
	if mode == "commit" {
		return s.Commit(ctx, g)
	}
	return nil
}

func TestCrashAtKVCrashPoints(t *testing.T) {
	for _, tc := range []struct {
		point        string
		mode         string
		wantPrepared bool // the branch is listed as prepared after restart
		wantApplied  bool // k=v is committed after restart
	}{
		{failpoint.KVBeforePrepare, "prepare", false, false},
		{failpoint.KVAfterPrepare, "prepare", true, false},
		{failpoint.KVBeforeCommit, "commit", true, false},
		{failpoint.KVAfterCommit, "commit", false, true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			path := tempPath(t)
			g := newGID(t, "kv1")

			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(withoutEnv(os.Environ(), failpoint.EnvVar),
				helperEnv+"="+tc.mode,
				helperPathEnv+"="+path,
				helperGIDEnv+"="+g.String(),
				failpoint.EnvVar+"="+tc.point,
			)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || !killed(exit) {
				t.Fatalf("helper was not killed at %s: %v\n%s", tc.point, err, out)
			}

			s := openStore(t, path)
			prepared := preparedGIDs(t, s)
			if got := slices.Contains(prepared, g.String()); got != tc.wantPrepared {
				t.Fatalf("after crash at %s prepared = %v; want branch prepared %v", tc.point, prepared, tc.wantPrepared)
			}
			if _, got := committed(t, s)["k"]; got != tc.wantApplied {
				t.Fatalf("after crash at %s k applied = %v; want %v", tc.point, got, tc.wantApplied)
			}
			if tc.wantPrepared {
				blocked := begin(t, s, newGID(t, "kv1"))
				if err := blocked.Put(ctx, "k", []byte("other")); err != nil {
					t.Fatal(err)
				}
				mustConflict(t, blocked)
				if err := s.Commit(ctx, g); err != nil {
					t.Fatalf("Commit after restart: %v", err)
				}
				if got := committed(t, s)["k"]; got != "v" {
					t.Fatalf("k = %q after commit; want v", got)
				}
			} else if err := s.Rollback(ctx, g); !errors.Is(err, participant.ErrUnknownBranch) {
				t.Fatalf("Rollback of a branch not prepared = %v; want ErrUnknownBranch", err)
			}
		})
	}
}

func killed(e *exec.ExitError) bool {
	ws, ok := e.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func withoutEnv(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		return strings.HasPrefix(kv, name+"=")
	})
}
