package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

// Environment of the child process that crashes at a failpoint.
const (
	crashChildEnv = "TXCOORD_PGTEST_CRASH_CHILD" // "prepare", "commit" or "rollback"
	crashDSNEnv   = "TXCOORD_PGTEST_CRASH_DSN"
	crashGIDEnv   = "TXCOORD_PGTEST_CRASH_GID"
	crashTableEnv = "TXCOORD_PGTEST_CRASH_TABLE"
)

// crashChild runs one step against the server named in its environment,
// with failpoint.EnvVar armed; it returns only if the crash point was not
// reached.
func crashChild() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gid, err := ids.ParseGID(os.Getenv(crashGIDEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	r, err := Open(ctx, "crash", DriverPQ, os.Getenv(crashDSNEnv), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer r.Close()
	switch os.Getenv(crashChildEnv) {
	case "prepare":
		br, err := r.Begin(ctx, gid)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		b := br.(*Branch)
		if _, err := b.ExecContext(ctx, "INSERT INTO "+os.Getenv(crashTableEnv)+" VALUES ('x')"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		vote, err := b.Prepare(ctx)
		fmt.Fprintln(os.Stderr, "prepare returned", vote, err)
	case "commit":
		fmt.Fprintln(os.Stderr, "commit returned", r.Commit(ctx, gid))
	case "rollback":
		fmt.Fprintln(os.Stderr, "rollback returned", r.Rollback(ctx, gid))
	}
	return 3
}

// A process that dies on either side of PREPARE, COMMIT PREPARED or
// ROLLBACK PREPARED leaves the database in the state that side implies:
// nothing before PREPARE, a prepared branch for recovery after it, and the
// prepared branch still there before COMMIT/ROLLBACK PREPARED.
func TestCrashAroundEachDurableStepLeavesAConsistentBranch(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	r := openResource(t, srv, DriverPQ, appDB)
	for _, c := range []struct {
		point        string
		step         string // what the child does
		wantPrepared bool
		wantRows     int
	}{
		{failpoint.PGBeforePrepare, "prepare", false, 0},
		{failpoint.PGAfterPrepare, "prepare", true, 0},
		{failpoint.PGBeforeCommit, "commit", true, 0},
		{failpoint.PGAfterCommit, "commit", false, 1},
		{failpoint.PGBeforeRollback, "rollback", true, 0},
		{failpoint.PGAfterRollback, "rollback", false, 0},
	} {
		t.Run(c.point, func(t *testing.T) {
			table := newTable(t, db)
			gid := newGID(t, "b1")
			if c.step != "prepare" {
				b := begin(t, r, "b1")
				gid = b.GID()
				mustExec(t, b, "INSERT INTO "+table+" VALUES ('x')")
				if vote, err := b.Prepare(ctx); err != nil || vote != participant.VoteYes {
					t.Fatalf("Prepare = %v, %v", vote, err)
				}
			}
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(),
				crashChildEnv+"="+c.step,
				crashDSNEnv+"="+srv.DSN(appDB),
				crashGIDEnv+"="+gid.String(),
				crashTableEnv+"="+table,
				failpoint.EnvVar+"="+c.point,
			)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die at %s: %v\n%s", c.point, err, out)
			}
			if got := isPrepared(t, db, gid); got != c.wantPrepared {
				t.Fatalf("after a crash at %s: prepared = %v, want %v", c.point, got, c.wantPrepared)
			}
			if c.wantPrepared {
				if err := r.Rollback(ctx, gid); err != nil {
					t.Fatal(err)
				}
			}
			if n := count(t, db, table); n != c.wantRows {
				t.Fatalf("after a crash at %s: rows = %d, want %d", c.point, n, c.wantRows)
			}
		})
	}
}
