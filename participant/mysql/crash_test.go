package mysql

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
	crashChildEnv = "TXCOORD_MYSQLTEST_CRASH_CHILD" // "prepare", "commit" or "rollback"
	crashDSNEnv   = "TXCOORD_MYSQLTEST_CRASH_DSN"
	crashGIDEnv   = "TXCOORD_MYSQLTEST_CRASH_GID"
	crashTableEnv = "TXCOORD_MYSQLTEST_CRASH_TABLE"
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
	r, err := Open(ctx, "crash", os.Getenv(crashDSNEnv), Options{})
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
		if _, err := b.ExecContext(ctx, "UPDATE "+os.Getenv(crashTableEnv)+" SET v = v + 1 WHERE id = 1"); err != nil {
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

// A process that dies on either side of XA PREPARE, XA COMMIT or XA
// ROLLBACK leaves the database in the state that side implies: nothing
// before XA PREPARE (its session's death rolls the branch back), a
// prepared branch for recovery after it, and the prepared branch still
// there before XA COMMIT or XA ROLLBACK.
func TestCrashAroundEachXAStepLeavesAConsistentBranch(t *testing.T) {
	ctx := testCtx(t)
	db := rawDB(t, srv, appDB)
	r := openResource(t, srv, appDB, Options{})
	for _, c := range []struct {
		point        string
		step         string
		wantPrepared bool
		wantV        int
	}{
		{failpoint.MySQLBeforePrepare, "prepare", false, 0},
		{failpoint.MySQLAfterPrepare, "prepare", true, 0},
		{failpoint.MySQLBeforeCommit, "commit", true, 0},
		{failpoint.MySQLAfterCommit, "commit", false, 1},
		{failpoint.MySQLBeforeRollback, "rollback", true, 0},
		{failpoint.MySQLAfterRollback, "rollback", false, 0},
	} {
		t.Run(c.point, func(t *testing.T) {
			table := newTable(t, db)
			gid := newGID(t, "b1")
			if c.step != "prepare" {
				b := begin(t, r, "b1")
				gid = b.GID()
				mustExec(t, b, "UPDATE "+table+" SET v = v + 1 WHERE id = 1")
				mustPrepare(t, b, participant.VoteYes)
				release(t, r, gid)
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
				// The dead child's session ends on the server shortly
				// after it: until then the branch is busy.
				if err := finishBusy(t, func() error { return r.Rollback(ctx, gid) }); err != nil {
					t.Fatal(err)
				}
			}
			if got := value(t, db, table, 1); got != c.wantV {
				t.Fatalf("after a crash at %s: v = %d, want %d", c.point, got, c.wantV)
			}
		})
	}
}

// release lets go of the session r holds gid prepared on, as a
// coordinator that restarted would have, and waits until the server has
// ended it: the branch is then detached, for any session to finish.
func release(t *testing.T, r *Resource, gid ids.GID) {
	t.Helper()
	h := r.take(gid.String())
	if h == nil {
		return
	}
	ctx := testCtx(t)
	var id int64
	if err := h.conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	discard(h.conn)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %d of %s did not end", id, gid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// finishBusy runs f (a Commit or Rollback) until the branch is no longer
// on a session that has not ended yet.
func finishBusy(t *testing.T, f func() error) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if !errors.Is(err, participant.ErrBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
