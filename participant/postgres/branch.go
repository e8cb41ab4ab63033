package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/internal/sqlbranch"
	"github.com/txcoord/txcoord/participant"
)

// Branch is one transaction's work in a PostgreSQL database, on one
// connection pinned from BEGIN to PREPARE TRANSACTION (or COMMIT, or
// ROLLBACK), after which the connection goes back to the pool.
//
// ExecContext, QueryContext and QueryRowContext run statements in the
// branch and remember any error they return: a branch that saw an error
// votes no. Conn gives the raw connection for anything else; errors met
// there are the application's to handle (for example with savepoints), and
// Prepare still votes no if PostgreSQL considers the transaction failed.
//
// A Branch is used by one goroutine at a time; concurrent calls are
// serialised. After Prepare, CommitOnePhase or Abort its statement methods
// return participant.ErrBranchDone.
type Branch struct {
	r   *Resource
	gid ids.GID

	s        sqlbranch.Stmts
	conn     *sql.Conn
	wrote    bool // a statement method reported affected rows: the transaction has an id
	holder   bool // begun by BeginHolder: ends with CommitDecision
	state    state
	prepared bool // Prepare ran: vote and voteErr hold its answer
	vote     participant.Vote
	voteErr  error
}

var _ participant.Branch = (*Branch)(nil)

// state is where a branch is in its life. The zero value is invalid.
type state int

const (
	stateActive     state = 1 + iota // BEGIN ran; the connection is pinned
	statePrepared                    // PREPARE TRANSACTION succeeded
	stateCommitted                   // COMMIT succeeded (one phase)
	stateReadOnly                    // wrote nothing; committed locally by Prepare
	stateRolledBack                  // rolled back, by ROLLBACK or by closing the session
	stateInDoubt                     // the connection was lost during COMMIT
)

func (s state) String() string {
	switch s {
	case stateActive:
		return "active"
	case statePrepared:
		return "prepared"
	case stateCommitted:
		return "committed"
	case stateReadOnly:
		return "committed read-only"
	case stateRolledBack:
		return "rolled back"
	case stateInDoubt:
		return "in doubt"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

func newBranch(r *Resource, gid ids.GID, conn *sql.Conn) *Branch {
	b := &Branch{r: r, gid: gid, conn: conn, state: stateActive}
	b.s.Init(conn, b.open, b.ran)
	return b
}

// open reports whether the branch takes statements. b.s is locked.
func (b *Branch) open() error {
	if b.state != stateActive {
		return b.doneErr()
	}
	return nil
}

// ran notes a statement: rows changed by INSERT, UPDATE, DELETE or MERGE
// mean the transaction has an id, and the read-only test can be skipped.
func (b *Branch) ran(k sqlbranch.Kind, query string, res sql.Result, err error) {
	if k == sqlbranch.Exec && err == nil && !b.wrote && isDML(query) {
		if n, rerr := res.RowsAffected(); rerr == nil && n > 0 {
			b.wrote = true
		}
	}
}

// GID returns the branch's gid.
func (b *Branch) GID() ids.GID { return b.gid }

// Resource returns the resource the branch belongs to.
func (b *Branch) Resource() participant.Resource { return b.r }

// Conn returns the pinned connection for direct use. Do not end the
// transaction on it (COMMIT, ROLLBACK, PREPARE TRANSACTION): the branch
// does that. Errors on it are not recorded by the branch. After the branch
// is finished the connection is closed and its methods return
// sql.ErrConnDone.
func (b *Branch) Conn() *sql.Conn { return b.conn }

// Err returns the first error a statement method of the branch returned,
// or nil.
func (b *Branch) Err() error { return b.s.Err() }

func (b *Branch) doneErr() error {
	return fmt.Errorf("%w: postgres: %s: branch %s is %s", participant.ErrBranchDone, b.r.name, b.gid, b.state)
}

// ExecContext runs a statement in the branch.
func (b *Branch) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return b.s.ExecContext(ctx, query, args...)
}

// QueryContext runs a query in the branch. Errors met while reading the
// rows are not recorded; close the rows before Prepare.
func (b *Branch) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return b.s.QueryContext(ctx, query, args...)
}

// Row is the result of QueryRowContext. Its Scan records errors in the
// branch, except sql.ErrNoRows.
type Row = sqlbranch.Row

// QueryRowContext runs a query expected to return at most one row.
func (b *Branch) QueryRowContext(ctx context.Context, query string, args ...any) *Row {
	return b.s.QueryRowContext(ctx, query, args...)
}

// Prepare votes on the branch:
//   - a branch that saw an error, or whose transaction PostgreSQL has
//     aborted (for example after an error on Conn), is rolled back and
//     votes participant.VoteNo with an error wrapping ErrRolledBack and the
//     cause;
//   - a branch that wrote nothing (no transaction id assigned) commits
//     locally and votes participant.VoteReadOnly;
//   - otherwise PREPARE TRANSACTION runs: participant.VoteYes if it
//     succeeded; participant.VoteNo with PostgreSQL's error if it failed
//     (temporary tables, LISTEN, exported snapshots, deferred constraints).
//
// If the connection is lost while PREPARE TRANSACTION is in flight, the
// branch is rolled back by gid on another connection and votes no; if that
// fails too, the error wraps participant.ErrOutcomeUnknown: the branch may
// be left prepared, and rolling back its gid (presumed abort) resolves it.
//
// A second call returns the first answer.
func (b *Branch) Prepare(ctx context.Context) (participant.Vote, error) {
	if err := b.s.Lock(ctx); err != nil {
		return participant.VoteNo, err
	}
	defer b.s.Unlock()
	if b.prepared {
		return b.vote, b.voteErr
	}
	if b.state != stateActive {
		return participant.VoteNo, b.doneErr()
	}
	b.vote, b.voteErr = b.prepare(ctx)
	b.prepared = true
	return b.vote, b.voteErr
}

func (b *Branch) prepare(ctx context.Context) (participant.Vote, error) {
	if b.s.FirstErr() != nil {
		b.rollback(ctx)
		return participant.VoteNo, fmt.Errorf("%w: %s: branch %s saw an error: %w", ErrRolledBack, b.r.name, b.gid, b.s.FirstErr())
	}
	failpoint.Hit(failpoint.PGBeforePrepare)
	// One round trip: the check, the marker, then PREPARE TRANSACTION, in
	// one simple query. If the check fails, PostgreSQL runs nothing after
	// it, so a read-only branch writes no marker.
	_, err := b.conn.ExecContext(ctx, b.check()+b.r.markStmt(b.gid)+"; PREPARE TRANSACTION "+ids.QuoteLiteral(b.gid.String()))
	if err == nil {
		failpoint.Hit(failpoint.PGAfterPrepare)
		b.finish(statePrepared, false)
		return participant.VoteYes, nil
	}
	if isReadOnly(err) {
		if err := b.commitReadOnly(ctx); err != nil {
			return participant.VoteNo, err
		}
		return participant.VoteReadOnly, nil
	}
	if !outcomeUnknown(ctx, err) {
		// A failed check or PREPARE TRANSACTION leaves the transaction
		// aborted: roll it back.
		b.rollback(ctx)
		return participant.VoteNo, fmt.Errorf("%w: %s: prepare %s: %w", ErrRolledBack, b.r.name, b.gid, err)
	}
	b.finish(stateRolledBack, true)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if rerr := b.rollbackLostPrepare(cctx); rerr != nil {
		return participant.VoteNo, fmt.Errorf("%w: postgres: %s: prepare %s: connection lost, and rolling back the gid failed (%v); the branch may be left prepared: %w",
			participant.ErrOutcomeUnknown, b.r.name, b.gid, rerr, err)
	}
	return participant.VoteNo, fmt.Errorf("%w: %s: prepare %s: %w", ErrRolledBack, b.r.name, b.gid, err)
}

// readOnlyMarker is in the error checkStmt raises for a transaction that
// wrote nothing.
const readOnlyMarker = "txcoord: read-only branch"

// checkStmt goes in front of PREPARE TRANSACTION or COMMIT, in the same
// simple query: PostgreSQL runs nothing after a statement that fails.
//   - In an aborted transaction it fails (SQLSTATE 25P02), where PREPARE
//     TRANSACTION and COMMIT would answer ROLLBACK without an error.
//   - In a transaction with no transaction id, one that wrote nothing, it
//     fails with readOnlyMarker (SQLSTATE 22P02) inside a savepoint, so that
//     the transaction can still commit locally (commitReadOnly). The marker
//     is built at run time so that the planner cannot fold it into an error
//     for every transaction.
const checkStmt = "SAVEPOINT txcoord_check; " +
	"SELECT CASE WHEN pg_current_xact_id_if_assigned() IS NULL THEN ('" + readOnlyMarker + " ' || pg_backend_pid())::int END; " +
	"RELEASE SAVEPOINT txcoord_check"

// isDML reports whether query starts with INSERT, UPDATE, DELETE or MERGE
// (a SELECT counts rows too, but may have no transaction id).
func isDML(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n(")
	for _, kw := range [...]string{"INSERT", "UPDATE", "DELETE", "MERGE"} {
		if len(q) > len(kw) && strings.EqualFold(q[:len(kw)], kw) {
			switch q[len(kw)] {
			case ' ', '\t', '\r', '\n':
				return true
			}
		}
	}
	return false
}

// abortedStmt is checkStmt without the read-only test, for a branch known
// to have written: SAVEPOINT fails in an aborted transaction (25P02) and
// costs the server less than a SELECT.
const abortedStmt = "SAVEPOINT txcoord_check; RELEASE SAVEPOINT txcoord_check"

// check returns the statement that goes in front of PREPARE TRANSACTION or
// COMMIT. b.s is locked.
func (b *Branch) check() string {
	if b.wrote {
		return abortedStmt
	}
	return checkStmt
}

// commitReadOnly commits a branch whose check said it wrote nothing: it
// leaves the failed savepoint and commits locally (a NOTIFY, say, is
// delivered). An error wraps ErrRolledBack, or participant.ErrOutcomeUnknown
// if the connection was lost during COMMIT. b.s is locked.
func (b *Branch) commitReadOnly(ctx context.Context) error {
	_, err := b.conn.ExecContext(ctx, "ROLLBACK TO SAVEPOINT txcoord_check; COMMIT")
	if err == nil {
		b.finish(stateReadOnly, false)
		return nil
	}
	if outcomeUnknown(ctx, err) {
		b.finish(stateInDoubt, true)
		return fmt.Errorf("%w: postgres: %s: commit of read-only %s: %w", participant.ErrOutcomeUnknown, b.r.name, b.gid, err)
	}
	// A read-only transaction can still fail to commit (a serialization
	// failure under SERIALIZABLE): its reads do not count.
	b.rollback(ctx)
	return fmt.Errorf("%w: %s: commit of read-only %s: %w", ErrRolledBack, b.r.name, b.gid, err)
}

// isReadOnly reports whether err is checkStmt's read-only signal.
func isReadOnly(err error) bool {
	return SQLState(err) == "22P02" && strings.Contains(err.Error(), readOnlyMarker)
}

// rollbackLostPrepare makes sure a PREPARE TRANSACTION whose connection was
// lost leaves nothing prepared. A backend may still be running it, so it
// waits until no backend is running a statement naming this gid, then
// rolls the gid back on another connection. (A backend that had the bytes
// but had not started the statement can still prepare it afterwards; the
// recovery pass rolls that back: no COMMIT was logged.)
func (b *Branch) rollbackLostPrepare(ctx context.Context) error {
	for {
		var busy bool
		err := b.r.db.QueryRowContext(ctx,
			"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle' AND strpos(query, $1) > 0)",
			"PREPARE TRANSACTION "+ids.QuoteLiteral(b.gid.String())).Scan(&busy)
		if err != nil {
			return err
		}
		if !busy {
			break
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	err := b.r.Rollback(ctx, b.gid)
	if errors.Is(err, participant.ErrUnknownBranch) {
		return nil
	}
	return err
}

// CommitOnePhase commits the branch without prepare. An error wrapping
// ErrRolledBack means the work was rolled back (the branch saw an error,
// PostgreSQL had aborted the transaction, or COMMIT failed); one wrapping
// participant.ErrOutcomeUnknown means the connection was lost while COMMIT
// was in flight, so the work may or may not be committed.
func (b *Branch) CommitOnePhase(ctx context.Context) error {
	if err := b.s.Lock(ctx); err != nil {
		return err
	}
	defer b.s.Unlock()
	if b.state != stateActive {
		return b.doneErr()
	}
	if b.s.FirstErr() != nil {
		b.rollback(ctx)
		return fmt.Errorf("%w: %s: branch %s saw an error: %w", ErrRolledBack, b.r.name, b.gid, b.s.FirstErr())
	}
	_, err := b.conn.ExecContext(ctx, b.check()+"; COMMIT")
	if err == nil {
		b.finish(stateCommitted, false)
		return nil
	}
	if isReadOnly(err) {
		return b.commitReadOnly(ctx)
	}
	if outcomeUnknown(ctx, err) {
		b.finish(stateInDoubt, true)
		return fmt.Errorf("%w: postgres: %s: commit %s: %w", participant.ErrOutcomeUnknown, b.r.name, b.gid, err)
	}
	// An error reply to COMMIT (a deferred constraint, a serialization
	// failure) ends the transaction rolled back.
	b.rollback(ctx)
	return fmt.Errorf("%w: %s: commit %s: %w", ErrRolledBack, b.r.name, b.gid, err)
}

// Abort rolls back a branch that was not prepared and returns its
// connection. It returns nil if the branch was already rolled back, voted
// no or read-only, or was aborted before; it returns
// participant.ErrBranchDone for a branch that is prepared (roll that back
// with Resource.Rollback) or committed. If ROLLBACK cannot be sent, the
// connection is closed instead, which rolls the transaction back.
func (b *Branch) Abort(ctx context.Context) error {
	if err := b.s.Lock(ctx); err != nil {
		// Another call holds the branch; it finishes or rolls it back.
		return err
	}
	defer b.s.Unlock()
	switch b.state {
	case stateActive:
	case stateRolledBack, stateReadOnly:
		return nil
	default:
		return b.doneErr()
	}
	b.rollback(ctx)
	return nil
}

// rollback runs ROLLBACK and finishes the branch, closing the connection
// instead of pooling it if ROLLBACK fails. b.s is locked.
func (b *Branch) rollback(ctx context.Context) {
	_, err := b.conn.ExecContext(ctx, "ROLLBACK")
	b.finish(stateRolledBack, err != nil)
}

// finish releases the pinned connection: back to the pool when the session
// is known to be outside any transaction, else closed. b.s is locked.
func (b *Branch) finish(st state, discardConn bool) {
	if discardConn {
		discard(b.conn)
	} else {
		_ = b.conn.Close()
	}
	b.state = st
}
