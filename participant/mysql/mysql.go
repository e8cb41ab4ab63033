// Package mysql is the MariaDB and MySQL participant, through XA: a
// Resource is one database, and a Branch is one transaction's work in it,
// held on one pinned connection from XA START to XA END and XA PREPARE.
//
// It works with any database/sql pool of github.com/go-sql-driver/mysql
// connections. New checks the server: MariaDB 10.5.2 or later (earlier ones
// roll a prepared XA transaction back when its client disconnects) or MySQL
// 8.0 or later.
//
// What the adapter handles that XA leaves to its user:
//   - The server gives no read-only vote: a branch whose own statements
//     show it changed nothing commits with XA COMMIT ... ONE PHASE and votes
//     read-only; any doubt, and it prepares (Branch.Prepare).
//   - MariaDB (and MySQL without xa_detach_on_prepare) keeps a prepared
//     branch attached to the session that prepared it: another session's XA
//     COMMIT answers "unknown XID" and the session can run nothing else.
//     The Resource keeps that connection and commits or rolls back on it;
//     a connection held longer than Options.DetachAfter is closed, which
//     detaches the branch for any session (and for recovery) to finish.
//   - "Unknown XID" is not proof of anything: on commit it is success only
//     when the branch's marker row shows it committed; on either it is
//     ErrBusy while XA RECOVER still lists the xid (prepared in a session
//     not yet gone).
//   - A connection whose branch is ACTIVE or IDLE never goes back to the
//     pool: it is closed, which rolls the branch back.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

var (
	// ErrUnsupportedServer reports a server too old for safe XA: MariaDB
	// before 10.5.2 or MySQL before 8.0.
	ErrUnsupportedServer = errors.New("mysql: server version not supported for XA")
	// ErrWrongDatabase reports a connection that reached another database
	// than the one expected, or none.
	ErrWrongDatabase = errors.New("mysql: connected to an unexpected database")
	// ErrRolledBack reports a branch that was rolled back instead of being
	// prepared or committed: the outcome is known, nothing was kept.
	ErrRolledBack = errors.New("mysql: branch rolled back")
)

// cleanupTimeout bounds statements sent to clean up after a failure, when
// the caller's context may already be done.
const cleanupTimeout = 5 * time.Second

// Defaults for Options fields left zero.
const (
	DefaultMaxIdleConns = 64
	DefaultMarkerTable  = "txcoord_markers"
	DefaultDetachAfter  = time.Minute
)

// Options configure a Resource.
type Options struct {
	// Database is the database the connections must reach. New fails with
	// ErrWrongDatabase if DATABASE() differs. Empty means the one the pool
	// reaches; Open fills it from the DSN.
	Database string
	// MaxIdleConns is how many idle connections a pool that Open creates
	// keeps (default DefaultMaxIdleConns). For a *sql.DB passed to New,
	// set db.SetMaxIdleConns yourself, and multiStatements=true in its DSN
	// (as Open does): a branch then prepares in one round trip instead of
	// three.
	MaxIdleConns int
	// MarkerTable names the table of markers that prove a branch committed
	// (default DefaultMarkerTable). New creates it when missing.
	MarkerTable string
	// NoMarkers keeps no markers: an XA COMMIT retried after a lost reply
	// then finds "unknown XID" and cannot tell a committed branch from a
	// lost one, and the coordinator reports a heuristic hazard.
	NoMarkers bool
	// DetachAfter is how long the Resource keeps the session of a prepared
	// branch on a server that does not detach it at prepare (MariaDB), so
	// that phase two runs on it; after that the connection is closed and
	// any session can finish the branch. Zero means DefaultDetachAfter.
	DetachAfter time.Duration
	// AllowDown makes Open (and New, when Database is set) succeed while
	// the server cannot be reached: the checks run on first contact, and
	// every call fails until they pass.
	AllowDown bool
}

// Resource is one MariaDB or MySQL database taking part in two-phase
// commit. Its methods are safe for concurrent use.
type Resource struct {
	name        string
	db          *sql.DB
	database    string
	owned       bool
	markers     string // the marker table; "" without markers
	detachAfter time.Duration

	mu       sync.Mutex
	server   serverInfo
	attached map[string]*held // prepared branches still on their session, by gid

	pending atomic.Bool // opened with AllowDown while the server was down
	initMu  sync.Mutex
}

// Enlist enlists a new branch of r in tx and returns it with its concrete
// type, for the application to do its work in.
func (r *Resource) Enlist(ctx context.Context, tx participant.Enlister) (*Branch, error) {
	br, err := tx.Enlist(ctx, r)
	if err != nil {
		return nil, err
	}
	b, ok := br.(*Branch)
	if !ok {
		return nil, fmt.Errorf("mysql: resource %s: enlist returned a %T, not a *mysql.Branch", r.name, br)
	}
	return b, nil
}

// Begin starts a branch: it takes one connection from the pool and runs XA
// START on it. The connection stays pinned to the branch until it is
// prepared, committed or rolled back. A pooled connection found dead (after
// a server restart, say) is replaced.
func (r *Resource) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	if err := gid.Validate(); err != nil {
		return nil, err
	}
	const attempts = 3
	for i := 1; ; i++ {
		conn, err := r.db.Conn(ctx)
		if err != nil {
			return nil, fmt.Errorf("mysql: %s: begin %s: %w", r.name, gid, err)
		}
		_, err = conn.ExecContext(ctx, "XA START "+XID(gid, r.database))
		if err == nil {
			return newBranch(r, gid, conn), nil
		}
		if connLost(err) {
			// The session is gone, and an XA START it may have run with it.
			discard(conn)
			if i < attempts && ctx.Err() == nil {
				continue
			}
		} else {
			_ = conn.Close()
		}
		if errNumber(err) == erDupID {
			return nil, fmt.Errorf("mysql: %s: begin %s: the xid is in use: %w", r.name, gid, err)
		}
		return nil, fmt.Errorf("mysql: %s: begin %s: %w", r.name, gid, err)
	}
}

// attach keeps the session of a branch prepared on it, for phase two.
func (r *Resource) attach(gid ids.GID, conn *sql.Conn) {
	key := gid.String()
	h := &held{conn: conn}
	r.mu.Lock()
	if old := r.attached[key]; old != nil {
		// Not expected: a gid is prepared once.
		old.timer.Stop()
		discard(old.conn)
	}
	r.attached[key] = h
	h.timer = time.AfterFunc(r.detachAfter, func() {
		if hh := r.take(key); hh != nil {
			discard(hh.conn)
		}
	})
	r.mu.Unlock()
}

// take removes and returns the held session of gid, or nil.
func (r *Resource) take(key string) *held {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.attached[key]
	if h == nil {
		return nil
	}
	delete(r.attached, key)
	h.timer.Stop()
	return h
}

// Held returns how many prepared branches are still on the session that
// prepared them.
func (r *Resource) Held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.attached)
}

// Commit runs XA COMMIT for gid: on the session that prepared it if the
// Resource still holds it, else on a pooled connection. When the server
// knows no such xid it answers nil if the branch's marker proves it
// committed, participant.ErrBusy if XA RECOVER still lists it (prepared in
// a session that has not ended yet), and otherwise an error wrapping
// participant.ErrUnknownBranch. It returns participant.ErrOutcomeUnknown
// if the connection was lost after the statement was sent.
func (r *Resource) Commit(ctx context.Context, gid ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	err := r.finish(ctx, gid, "XA COMMIT ", failpoint.MySQLBeforeCommit, failpoint.MySQLAfterCommit)
	if !errors.Is(err, participant.ErrUnknownBranch) {
		return err
	}
	return participant.ProvenCommit(err, r.markers != "", func() (bool, error) { return r.proven(ctx, gid) })
}

// Rollback runs XA ROLLBACK for gid. Its errors are those of Commit, but an
// unknown xid is participant.ErrUnknownBranch (presumed abort: nothing to
// roll back).
func (r *Resource) Rollback(ctx context.Context, gid ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	return r.finish(ctx, gid, xaRollback, failpoint.MySQLBeforeRollback, failpoint.MySQLAfterRollback)
}

const xaRollback = "XA ROLLBACK "

func (r *Resource) finish(ctx context.Context, gid ids.GID, stmt, before, after string) error {
	if err := gid.Validate(); err != nil {
		return err
	}
	xid := XID(gid, r.database)
	q := stmt + xid
	lost, err := r.execFinish(ctx, gid, q, before, after)
	var listed, looked bool
	var lerr error
	if !lost && errNumber(err) == erNotA {
		var stored string
		stored, listed, lerr = r.listedAs(ctx, gid)
		looked = true
		if lerr == nil && listed && stored != xid {
			// Prepared under the xid without the database's tag (by a
			// build before the tag): finished under the xid it has.
			q = stmt + stored
			lost, err = r.execFinish(ctx, gid, q, before, after)
			if !lost && errNumber(err) == erNotA {
				listed, lerr = r.listed(ctx, gid)
			}
		}
	}
	if lost && stmt == xaRollback && ctx.Err() == nil {
		// Rolling back twice is safe where committing twice is not.
		if lost2, err2 := r.execFinish(ctx, gid, q, "", ""); !lost2 && (err2 == nil || errNumber(err2) == erNotA) {
			if err2 == nil {
				return nil
			}
			lost, err, looked = false, err2, false
		}
	}
	if err == nil {
		return nil
	}
	what := strings.ToLower(strings.TrimSpace(stmt))
	if lost {
		return fmt.Errorf("%w: mysql: %s: %s %s: %w", participant.ErrOutcomeUnknown, r.name, what, gid, err)
	}
	switch errNumber(err) {
	case erNotA:
		if !looked {
			listed, lerr = r.listed(ctx, gid)
		}
		switch {
		case lerr != nil:
			return fmt.Errorf("mysql: %s: %s %s: unknown xid, and XA RECOVER failed (%v): %w", r.name, what, gid, lerr, err)
		case listed:
			return fmt.Errorf("%w: mysql: %s: %s %s: prepared in another session that has not ended: %w", participant.ErrBusy, r.name, what, gid, err)
		}
		return fmt.Errorf("%w: mysql: %s: %s %s: %w", participant.ErrUnknownBranch, r.name, what, gid, err)
	case erRMFail, erOutside:
		return fmt.Errorf("%w: mysql: %s: %s %s: %w", participant.ErrBusy, r.name, what, gid, err)
	}
	return fmt.Errorf("mysql: %s: %s %s: %w", r.name, what, gid, err)
}

// execFinish runs XA COMMIT or XA ROLLBACK on the branch's own session if
// it is held, else on a connection of its own: a pooled *sql.DB would retry
// on a fresh connection after a lost one. lost reports that the statement
// may or may not have run.
func (r *Resource) execFinish(ctx context.Context, gid ids.GID, q, before, after string) (lost bool, err error) {
	var conn *sql.Conn
	if h := r.take(gid.String()); h != nil {
		conn = h.conn
	} else if conn, err = r.db.Conn(ctx); err != nil {
		return false, err
	}
	failpoint.Hit(before)
	_, err = conn.ExecContext(ctx, q)
	switch {
	case err == nil:
		failpoint.Hit(after)
		_ = conn.Close()
		return false, nil
	case outcomeUnknown(ctx, err):
		discard(conn)
		return true, err
	}
	switch errNumber(err) {
	case erNotA, erRMErr, erRBRollback, erRBTimeout, erRBDeadlock:
		// The session is outside any branch.
		_ = conn.Close()
	default:
		// It may still hold a prepared branch of its own.
		discard(conn)
	}
	return false, err
}
