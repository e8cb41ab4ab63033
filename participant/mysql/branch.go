package mysql

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

// Branch is one transaction's work in a MariaDB or MySQL database, on one
// connection pinned from XA START to XA PREPARE (or XA COMMIT ... ONE
// PHASE, or XA ROLLBACK).
//
// ExecContext, QueryContext and QueryRowContext run statements in the
// branch and remember any error they return: a branch that saw an error
// votes no. Conn gives the raw connection for anything else; errors met
// there are the application's to handle. Do not run BEGIN, COMMIT,
// ROLLBACK, START TRANSACTION or XA statements on it: the server refuses
// them inside an XA branch, or ends the branch.
//
// A Branch is used by one goroutine at a time; concurrent calls are
// serialised. After Prepare, CommitOnePhase or Abort its statement methods
// return participant.ErrBranchDone.
type Branch struct {
	r   *Resource
	gid ids.GID
	xid string

	s        sqlbranch.Stmts
	conn     *sql.Conn
	wrote    bool // a statement may have changed data: the branch prepares
	state    state
	prepared bool // Prepare ran: vote and voteErr hold its answer
	vote     participant.Vote
	voteErr  error
}

var _ participant.Branch = (*Branch)(nil)

type state int

const (
	stateActive     state = 1 + iota // XA START ran; the connection is pinned
	statePrepared                    // XA PREPARE succeeded
	stateCommitted                   // XA COMMIT ... ONE PHASE succeeded
	stateReadOnly                    // changed nothing; committed by Prepare
	stateRolledBack                  // rolled back, by XA ROLLBACK or by closing the session
	stateInDoubt                     // the connection was lost during a commit
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
	b := &Branch{r: r, gid: gid, xid: XID(gid, r.database), conn: conn, state: stateActive}
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

// ran notes whether a statement may have changed data. Only a DML
// statement that reports no changed row, or a SELECT, is known not to
// have; one text holding several statements may have.
func (b *Branch) ran(k sqlbranch.Kind, query string, res sql.Result, err error) {
	if b.wrote {
		return
	}
	if k == sqlbranch.Query {
		b.wrote = !isSelect(query) || several(query)
		return
	}
	n, rerr := int64(1), error(nil)
	if err == nil {
		n, rerr = res.RowsAffected()
	}
	b.wrote = !isDML(query) || rerr != nil || n != 0 || several(query)
}

// GID returns the branch's gid.
func (b *Branch) GID() ids.GID { return b.gid }

// XID returns the branch's xid as XA statements take it.
func (b *Branch) XID() string { return b.xid }

// Resource returns the resource the branch belongs to.
func (b *Branch) Resource() participant.Resource { return b.r }

// Conn returns the pinned connection for direct use. Errors on it are not
// recorded by the branch, and a branch whose Conn was asked for prepares
// even if it changed nothing.
func (b *Branch) Conn() *sql.Conn {
	if b.s.Lock(context.Background()) == nil {
		b.wrote = true
		b.s.Unlock()
	}
	return b.conn
}

// Err returns the first error a statement method of the branch returned,
// or nil.
func (b *Branch) Err() error { return b.s.Err() }

func (b *Branch) doneErr() error {
	return fmt.Errorf("%w: mysql: %s: branch %s is %s", participant.ErrBranchDone, b.r.name, b.gid, b.state)
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

// several reports whether query may hold more than one statement (a ';'
// before its end), whose changed rows the result may not all count.
func several(query string) bool {
	return strings.Contains(strings.TrimRight(query, "; \t\r\n"), ";")
}

// isSelect reports whether query starts with SELECT.
func isSelect(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n(")
	return len(q) > 6 && strings.EqualFold(q[:6], "SELECT") && strings.ContainsRune(" \t\r\n", rune(q[6]))
}

// isDML reports whether query starts with INSERT, UPDATE, DELETE, REPLACE
// or MERGE.
func isDML(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n(")
	for _, kw := range [...]string{"INSERT", "UPDATE", "DELETE", "REPLACE"} {
		if len(q) > len(kw) && strings.EqualFold(q[:len(kw)], kw) {
			switch q[len(kw)] {
			case ' ', '\t', '\r', '\n':
				return true
			}
		}
	}
	return false
}

// Prepare votes on the branch:
//   - a branch that saw an error, or that the server rolled back (a
//     deadlock victim, say), is rolled back and votes participant.VoteNo
//     with an error wrapping ErrRolledBack and the cause;
//   - a branch known to have changed nothing commits with XA COMMIT ...
//     ONE PHASE and votes participant.VoteReadOnly. The server cannot tell
//     (XA has no read-only vote, and InnoDB's transaction list is a cache
//     up to 0.1 s old), so the branch knows it only from its own
//     statements: SELECTs through QueryContext or QueryRowContext, and
//     INSERT, UPDATE, DELETE or REPLACE through ExecContext that report no
//     changed row. Any other statement, or a call of Conn, makes it
//     prepare. A stored function that changes data, called from a SELECT
//     through QueryContext, is not seen: call it through ExecContext or
//     Conn;
//   - otherwise its marker is inserted, XA END and XA PREPARE run, and it
//     votes participant.VoteYes.
//
// If the connection is lost while XA PREPARE is in flight, the xid is
// rolled back on another connection and the branch votes no; if that
// cannot be made sure of, the error wraps participant.ErrOutcomeUnknown:
// the branch may be left prepared, and rolling back its gid (presumed
// abort) resolves it.
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
	if !b.wrote {
		if err := b.commitOnePhase(ctx, stateReadOnly); err != nil {
			return participant.VoteNo, err
		}
		return participant.VoteReadOnly, nil
	}
	stmts := []string{"XA END " + b.xid, "XA PREPARE " + b.xid}
	if b.r.markers != "" {
		stmts = append([]string{b.r.markStmt(b.gid)}, stmts...)
	}
	err := b.run(ctx, stmts, failpoint.MySQLBeforePrepare)
	var early *beforeLast
	if errors.As(err, &early) {
		return participant.VoteNo, b.failed(ctx, "prepare", early.err)
	}
	if err == nil {
		failpoint.Hit(failpoint.MySQLAfterPrepare)
		b.state = statePrepared
		if b.r.detaches() {
			_ = b.conn.Close()
		} else {
			b.r.attach(b.gid, b.conn)
		}
		return participant.VoteYes, nil
	}
	if !outcomeUnknown(ctx, err) {
		return participant.VoteNo, b.failed(ctx, "xa prepare", err)
	}
	discard(b.conn)
	b.state = stateRolledBack
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if rerr := b.rollbackLostPrepare(cctx); rerr != nil {
		return participant.VoteNo, fmt.Errorf("%w: mysql: %s: xa prepare %s: connection lost, and rolling back the xid failed (%v); the branch may be left prepared: %w",
			participant.ErrOutcomeUnknown, b.r.name, b.gid, rerr, err)
	}
	return participant.VoteNo, fmt.Errorf("%w: %s: xa prepare %s: %w", ErrRolledBack, b.r.name, b.gid, err)
}

// run sends stmts on the branch's connection, in one round trip where the
// pool takes several statements (the server runs nothing after one that
// fails), else one by one; the crash point before is hit before the last
// is sent. An error of a statement before the last, sent alone, is a
// *beforeLast: the last one was not sent.
func (b *Branch) run(ctx context.Context, stmts []string, before string) error {
	if b.r.multi() {
		stmts = []string{strings.Join(stmts, "; ")}
	}
	for i, q := range stmts {
		last := i == len(stmts)-1
		if last {
			failpoint.Hit(before)
		}
		if _, err := b.conn.ExecContext(ctx, q); err != nil {
			if !last {
				return &beforeLast{err}
			}
			return err
		}
	}
	return nil
}

// beforeLast is the error of a statement that run sent before the last.
type beforeLast struct{ err error }

func (e *beforeLast) Error() string { return e.err.Error() }
func (e *beforeLast) Unwrap() error { return e.err }

// failed ends a branch whose statement in Prepare failed before anything
// was prepared, and returns the error to vote no with.
func (b *Branch) failed(ctx context.Context, what string, err error) error {
	if outcomeUnknown(ctx, err) {
		// Closing the session rolls back a branch that is not prepared;
		// XA PREPARE was not sent.
		discard(b.conn)
		b.state = stateRolledBack
	} else {
		b.rollback(ctx)
	}
	return fmt.Errorf("%w: %s: %s %s: %w", ErrRolledBack, b.r.name, what, b.gid, err)
}

// rollbackLostPrepare makes sure an XA PREPARE whose connection was lost
// leaves nothing prepared: it rolls the xid back, waiting while XA RECOVER
// lists it on a session that has not ended yet (ErrBusy). A session the
// server has not noticed is gone may still prepare it later (seen when the
// prepare was cancelled because another branch voted no); the coordinator's
// next recovery pass rolls that back, since it aborted the transaction
// (recovery.Config.Aborted).
func (b *Branch) rollbackLostPrepare(ctx context.Context) error {
	for {
		err := b.r.Rollback(ctx, b.gid)
		switch {
		case err == nil, errors.Is(err, participant.ErrUnknownBranch):
			return nil
		case !errors.Is(err, participant.ErrBusy) && !errors.Is(err, participant.ErrOutcomeUnknown):
			return err
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// CommitOnePhase commits the branch without prepare (XA END, then XA
// COMMIT ... ONE PHASE). An error wrapping ErrRolledBack means the work was
// rolled back; one wrapping participant.ErrOutcomeUnknown means the
// connection was lost while the commit was in flight.
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
	return b.commitOnePhase(ctx, stateCommitted)
}

// commitOnePhase ends and commits the branch in one phase, leaving it in
// st. b.s is locked.
func (b *Branch) commitOnePhase(ctx context.Context, st state) error {
	err := b.run(ctx, []string{"XA END " + b.xid, "XA COMMIT " + b.xid + " ONE PHASE"}, "")
	var early *beforeLast
	if errors.As(err, &early) {
		return b.failed(ctx, "xa end", early.err)
	}
	switch {
	case err == nil:
		_ = b.conn.Close()
		b.state = st
		return nil
	case outcomeUnknown(ctx, err):
		discard(b.conn)
		b.state = stateInDoubt
		return fmt.Errorf("%w: mysql: %s: xa commit one phase %s: %w", participant.ErrOutcomeUnknown, b.r.name, b.gid, err)
	}
	b.rollback(ctx)
	return fmt.Errorf("%w: %s: xa commit one phase %s: %w", ErrRolledBack, b.r.name, b.gid, err)
}

// Abort rolls back a branch that was not prepared and returns its
// connection. It returns nil if the branch was already rolled back, voted
// no or read-only, or was aborted before; it returns
// participant.ErrBranchDone for a branch that is prepared (roll that back
// with Resource.Rollback) or committed.
func (b *Branch) Abort(ctx context.Context) error {
	if err := b.s.Lock(ctx); err != nil {
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

// rollback ends the branch with XA END and XA ROLLBACK and returns the
// connection to the pool, or closes it (which rolls the branch back) if
// either fails. b.s is locked.
func (b *Branch) rollback(ctx context.Context) {
	b.state = stateRolledBack
	if ctx.Err() != nil {
		discard(b.conn)
		return
	}
	if _, err := b.conn.ExecContext(ctx, "XA END "+b.xid); err != nil && !rolledBackByServer(err) && errNumber(err) != erRMFail {
		discard(b.conn)
		return
	}
	if _, err := b.conn.ExecContext(ctx, "XA ROLLBACK "+b.xid); err != nil {
		// Rolled back already (a deadlock victim) or not: the session's
		// state is not known for sure, so it is not pooled.
		discard(b.conn)
		return
	}
	_ = b.conn.Close()
}
