// Package postgres is the PostgreSQL participant: a Resource is one
// database, and a Branch is one transaction's work in it, held on one
// pinned connection from BEGIN to PREPARE TRANSACTION.
//
// It works with any database/sql connection to PostgreSQL; Open knows lib/pq
// ("postgres", the default) and pgx's stdlib driver ("pgx"). The server needs
// max_prepared_transactions > 0, which New checks.
//
// PostgreSQL answers PREPARE TRANSACTION and COMMIT of a transaction that
// already failed with the tag ROLLBACK and no error. A Branch therefore votes
// no when it saw any error, and asks the server whether the transaction is
// still healthy (and whether it wrote anything) before it prepares or
// commits: a yes vote is given only for a transaction PostgreSQL holds
// prepared.
package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/internal/dsn"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/participant"
)

var (
	// ErrNoPreparedTransactions reports a server whose
	// max_prepared_transactions is 0 (PostgreSQL's default), which makes
	// PREPARE TRANSACTION fail.
	ErrNoPreparedTransactions = errors.New("postgres: max_prepared_transactions is 0 on the server; two-phase commit needs it above 0")
	// ErrWrongDatabase reports a connection that reached another database
	// than the one expected.
	ErrWrongDatabase = errors.New("postgres: connected to an unexpected database")
	// ErrRolledBack reports a branch that was rolled back instead of being
	// prepared or committed: the outcome is known, nothing was kept.
	ErrRolledBack = errors.New("postgres: branch rolled back")
	// ErrUnsupportedDriver reports a driver name Open does not know.
	ErrUnsupportedDriver = errors.New("postgres: unsupported driver")
)

// Driver names accepted by Open.
const (
	// DriverPQ is lib/pq, the default.
	DriverPQ = "postgres"
	// DriverPGX is pgx's database/sql driver (github.com/jackc/pgx/v5/stdlib).
	DriverPGX = "pgx"
)

// cleanupTimeout bounds statements sent to clean up after a failure, when
// the caller's context may already be done.
const cleanupTimeout = 5 * time.Second

// Options configure a Resource.
type Options struct {
	// Database is the database the connections must reach. New fails with
	// ErrWrongDatabase if current_database() differs. Empty means no check
	// in New; Open fills it from the DSN.
	Database string
	// MaxIdleConns is how many idle connections a pool that Open creates
	// keeps (default DefaultMaxIdleConns). database/sql keeps only two by
	// default, so every concurrent branch beyond two would open a new
	// server connection (a new backend process) and close it again. For a
	// *sql.DB passed to New, set db.SetMaxIdleConns yourself.
	MaxIdleConns int
	// DecisionTable and DecisionSchema name the table that keeps commit
	// decisions when the resource is a transaction's decision holder
	// (default DefaultDecisionTable, in the first schema of search_path).
	// The marker table lives in DecisionSchema too.
	DecisionTable  string
	DecisionSchema string
	// MarkerTable names the table of markers that prove a branch committed
	// (default DefaultMarkerTable). New creates it when missing.
	MarkerTable string
	// NoMarkers keeps no markers: no table, no row per prepared branch.
	// COMMIT PREPARED that finds no prepared transaction then cannot be
	// told from a branch lost behind the coordinator's back, so a commit
	// whose reply was lost and is retried is reported as a heuristic
	// hazard instead of committed.
	NoMarkers bool
	// AllowDown makes Open (and New, when Database is set) succeed while
	// the server cannot be reached: the checks above run on first contact,
	// and every call fails until they pass. A coordinator then starts with
	// this resource down and claims it when it is back.
	AllowDown bool
}

// DefaultMaxIdleConns is Open's idle-pool size.
const DefaultMaxIdleConns = 64

// Resource is one PostgreSQL database taking part in two-phase commit. Its
// methods are safe for concurrent use.
type Resource struct {
	name     string
	db       *sql.DB
	database string
	owned    bool

	table, schema string // the decision table
	markers       string // the marker table's name; "" without markers
	holderMu      sync.Mutex
	holderReady   atomic.Bool // HolderReady succeeded

	pending atomic.Bool // opened with AllowDown while the server was down: not checked yet
	initMu  sync.Mutex  // one check at a time
}

var _ participant.Resource = (*Resource)(nil)

// New makes a Resource named name of db. It checks that the server has
// max_prepared_transactions > 0 (else ErrNoPreparedTransactions) and, if
// opts.Database is set, that db reaches that database (else
// ErrWrongDatabase). The caller keeps ownership of db.
func New(ctx context.Context, name string, db *sql.DB, opts Options) (*Resource, error) {
	if err := ids.ValidateName("resource name", name); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, fmt.Errorf("postgres: resource %s: nil *sql.DB", name)
	}
	r := &Resource{name: name, db: db, database: opts.Database, table: opts.DecisionTable, schema: opts.DecisionSchema}
	if r.table == "" {
		r.table = DefaultDecisionTable
	}
	if !opts.NoMarkers {
		r.markers = opts.MarkerTable
		if r.markers == "" {
			r.markers = DefaultMarkerTable
		}
	}
	if err := r.check(ctx, opts.Database == ""); err != nil {
		if !opts.AllowDown || opts.Database == "" || !Unreachable(err) {
			return nil, err
		}
		// Checked on first contact (ready).
		r.pending.Store(true)
	}
	return r, nil
}

// check makes sure the server can take part (the database, prepared
// transactions, the marker table); learn records the database reached.
func (r *Resource) check(ctx context.Context, learn bool) error {
	var (
		database    string
		maxPrepared int
	)
	err := r.db.QueryRowContext(ctx,
		"SELECT current_database(), current_setting('max_prepared_transactions')::int").Scan(&database, &maxPrepared)
	if err != nil {
		return fmt.Errorf("postgres: resource %s: check the server: %w", r.name, err)
	}
	if !learn && database != r.database {
		return fmt.Errorf("%w: resource %s expects database %q but the connection reached %q; check the DSN (in key=value form, an empty value such as \"password= \" takes the next keyword as its value)",
			ErrWrongDatabase, r.name, r.database, database)
	}
	if maxPrepared <= 0 {
		return fmt.Errorf("%w: resource %s (database %q): set max_prepared_transactions in postgresql.conf (at least max_connections) and restart the server",
			ErrNoPreparedTransactions, r.name, database)
	}
	if learn {
		r.database = database
	}
	if r.markers != "" {
		if err := r.markersReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// ready checks a resource opened while its server was down (AllowDown)
// on first contact; until that succeeds every call fails with why.
func (r *Resource) ready(ctx context.Context) error {
	if !r.pending.Load() {
		return nil
	}
	r.initMu.Lock()
	defer r.initMu.Unlock()
	if !r.pending.Load() {
		return nil
	}
	if err := r.check(ctx, false); err != nil {
		return err
	}
	r.pending.Store(false)
	return nil
}

// Open opens a connection pool with driverName (DriverPQ if empty, or
// DriverPGX) and makes a Resource of it, as New does. The DSN is parsed with
// the driver's own parser, and unless opts.Database is set the database it
// names (or, when it names none, the user name, as PostgreSQL defaults) is
// the one New requires. Close closes the pool.
func Open(ctx context.Context, name, driverName, connStr string, opts Options) (*Resource, error) {
	var (
		db     *sql.DB
		dbname string
	)
	switch driverName {
	case "", DriverPQ:
		cfg, err := pq.NewConfig(connStr)
		if err != nil {
			return nil, fmt.Errorf("postgres: resource %s: parse DSN: %w", name, dsn.Scrub(err, connStr))
		}
		dbname = cfg.Database
		if dbname == "" {
			dbname = cfg.User
		}
		c, err := pq.NewConnectorConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("postgres: resource %s: %w", name, err)
		}
		db = sql.OpenDB(c)
	case DriverPGX, "pgx/v5":
		cfg, err := pgx.ParseConfig(connStr)
		if err != nil {
			return nil, fmt.Errorf("postgres: resource %s: parse DSN: %w", name, dsn.Scrub(err, connStr))
		}
		dbname = cfg.Database
		if dbname == "" {
			dbname = cfg.User
		}
		db = stdlib.OpenDB(*cfg)
	default:
		return nil, fmt.Errorf("%w %q: use %q (lib/pq) or %q (pgx), or open the *sql.DB yourself and call New",
			ErrUnsupportedDriver, driverName, DriverPQ, DriverPGX)
	}
	if opts.Database == "" {
		opts.Database = dbname
	}
	if opts.MaxIdleConns <= 0 {
		opts.MaxIdleConns = DefaultMaxIdleConns
	}
	db.SetMaxIdleConns(opts.MaxIdleConns)
	r, err := New(ctx, name, db, opts)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	r.owned = true
	return r, nil
}

// Close closes the connection pool if Open opened it. It does not touch
// prepared branches.
func (r *Resource) Close() error {
	if !r.owned {
		return nil
	}
	return r.db.Close()
}

// Name returns the resource's name.
func (r *Resource) Name() string { return r.name }

// Unchecked reports a resource opened with AllowDown whose server has not
// been reached yet.
func (r *Resource) Unchecked() bool { return r.pending.Load() }

// Database returns the name of the database the resource reached.
func (r *Resource) Database() string { return r.database }

// DB returns the connection pool.
func (r *Resource) DB() *sql.DB { return r.db }

// Enlist enlists a new branch of r in tx and returns it with its concrete
// type, for the application to do its work in.
func (r *Resource) Enlist(ctx context.Context, tx participant.Enlister) (*Branch, error) {
	br, err := tx.Enlist(ctx, r)
	if err != nil {
		return nil, err
	}
	b, ok := br.(*Branch)
	if !ok {
		return nil, fmt.Errorf("postgres: resource %s: enlist returned a %T, not a *postgres.Branch", r.name, br)
	}
	return b, nil
}

// Begin starts a branch: it takes one connection from the pool and runs
// BEGIN on it. The connection stays pinned to the branch until it is
// prepared, committed or rolled back.
func (r *Resource) Begin(ctx context.Context, gid ids.GID) (participant.Branch, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	b, err := r.begin(ctx, gid)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (r *Resource) begin(ctx context.Context, gid ids.GID) (*Branch, error) {
	if err := gid.Validate(); err != nil {
		return nil, err
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: begin %s: %w", r.name, gid, err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		discard(conn)
		return nil, fmt.Errorf("postgres: %s: begin %s: %w", r.name, gid, err)
	}
	return newBranch(r, gid, conn), nil
}

// Commit runs COMMIT PREPARED for gid on a pooled connection. When the
// database holds no such prepared transaction (SQLSTATE 42704) it answers
// nil if the branch's marker proves it committed, and otherwise an error
// wrapping participant.ErrUnknownBranch (never prepared, or rolled back or
// lost: a heuristic hazard for the coordinator). It returns
// participant.ErrBusy if another session is finishing the branch (SQLSTATE
// 55000), and participant.ErrOutcomeUnknown if the connection was lost
// after the statement was sent. The driver's error stays wrapped.
func (r *Resource) Commit(ctx context.Context, gid ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	err := r.finishPrepared(ctx, gid, "COMMIT PREPARED ", failpoint.PGBeforeCommit, failpoint.PGAfterCommit)
	if !errors.Is(err, participant.ErrUnknownBranch) {
		return err
	}
	return participant.ProvenCommit(err, r.markers != "", func() (bool, error) { return r.proven(ctx, gid) })
}

// Rollback runs ROLLBACK PREPARED for gid on a pooled connection. Its
// errors are those of Commit.
func (r *Resource) Rollback(ctx context.Context, gid ids.GID) error {
	if err := r.ready(ctx); err != nil {
		return err
	}
	return r.finishPrepared(ctx, gid, rollbackPrepared, failpoint.PGBeforeRollback, failpoint.PGAfterRollback)
}

const rollbackPrepared = "ROLLBACK PREPARED "

func (r *Resource) finishPrepared(ctx context.Context, gid ids.GID, stmt, before, after string) error {
	if err := gid.Validate(); err != nil {
		return err
	}
	q := stmt + ids.QuoteLiteral(gid.String())
	lost, err := r.execAlone(ctx, q, before, after)
	if lost && stmt == rollbackPrepared && ctx.Err() == nil {
		// Rolling back twice is safe where committing twice to learn the
		// outcome is not: no COMMIT is logged for this gid, so "no such
		// prepared transaction" on a second try is success.
		if lost2, err2 := r.execAlone(ctx, q, "", ""); !lost2 && (err2 == nil || SQLState(err2) == "42704") {
			return nil
		}
	}
	if err == nil {
		return nil
	}
	what := strings.ToLower(strings.TrimSpace(stmt))
	switch {
	case lost:
		return fmt.Errorf("%w: postgres: %s: %s %s: %w", participant.ErrOutcomeUnknown, r.name, what, gid, err)
	}
	switch SQLState(err) {
	case "42704":
		return fmt.Errorf("%w: postgres: %s: %s %s: %w", participant.ErrUnknownBranch, r.name, what, gid, err)
	case "55000":
		return fmt.Errorf("%w: postgres: %s: %s %s: %w", participant.ErrBusy, r.name, what, gid, err)
	}
	return fmt.Errorf("postgres: %s: %s %s: %w", r.name, what, gid, err)
}

// execAlone runs one statement on a connection of its own: a pooled
// *sql.DB would retry on a fresh connection after a lost one and turn
// "outcome unknown" into "no such prepared transaction". lost reports that
// the statement may or may not have run. The crash points before and after
// bracket the statement.
func (r *Resource) execAlone(ctx context.Context, q, before, after string) (lost bool, err error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
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
	_ = conn.Close()
	return false, err
}

// Prepared lists the prepared transactions of this resource's database
// (pg_prepared_xacts lists those of every database on the server). Those
// whose name is not a txcoord gid are listed with a zero GID. The query is
// read-only and is retried on another connection if one from the pool
// turns out to be dead (after a server restart, for example).
func (r *Resource) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	const attempts = 3
	for i := 1; ; i++ {
		out, err := r.prepared(ctx)
		if err == nil || i == attempts || ctx.Err() != nil || !connLost(err) {
			return out, err
		}
	}
}

func (r *Resource) prepared(ctx context.Context) ([]participant.Prepared, error) {
	rows, err := r.db.QueryContext(ctx,
		"SELECT gid, prepared, owner, database FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared, gid")
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: list prepared transactions: %w", r.name, err)
	}
	defer rows.Close()
	var out []participant.Prepared
	for rows.Next() {
		var p participant.Prepared
		if err := rows.Scan(&p.Raw, &p.Since, &p.Owner, &p.Database); err != nil {
			return nil, fmt.Errorf("postgres: %s: list prepared transactions: %w", r.name, err)
		}
		if g, err := ids.ParseGID(p.Raw); err == nil {
			p.GID = g
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: %s: list prepared transactions: %w", r.name, err)
	}
	return out, nil
}

// SQLState returns the SQLSTATE code of a server error from lib/pq or pgx
// anywhere in err's chain, or "" if there is none.
func SQLState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// outcomeUnknown reports whether err, returned by a statement, leaves open
// whether the server ran it: anything but an error reply from a server
// that is still talking to us. The context is consulted because a
// cancelled statement may have completed before the cancel arrived.
func outcomeUnknown(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || connLost(err)
}

// connLost reports whether err is not an error reply from a live session:
// the connection was lost or closed, or the server ended the session.
func connLost(err error) bool {
	state := SQLState(err)
	switch {
	case state == "":
		// No reply from the server: a lost or closed connection
		// (driver.ErrBadConn, io.EOF, a network error). lib/pq reports a
		// FATAL error such as a terminated backend as driver.ErrBadConn.
		return true
	case strings.HasPrefix(state, "08"): // connection exception
		return true
	case state == "57P01", state == "57P02", state == "57P03", state == "57P05":
		// admin_shutdown, crash_shutdown, cannot_connect_now,
		// idle_session_timeout: the session is gone.
		return true
	}
	return false
}

// discard closes conn without returning it to the pool: its session may
// still be inside a transaction. Closing the session makes PostgreSQL roll
// back any transaction that was not prepared.
func discard(conn *sql.Conn) {
	// database/sql closes the driver connection when Raw's function
	// returns driver.ErrBadConn.
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// Unreachable reports whether err says the database server cannot be
// reached now: nothing listening, a connection cut, or a server starting
// up or shutting down (SQLSTATE class 57). A bad DSN, a wrong database or
// max_prepared_transactions at 0 are not.
func Unreachable(err error) bool {
	var ne net.Error
	switch {
	case err == nil:
		return false
	case errors.As(err, &ne), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	return strings.HasPrefix(SQLState(err), "57")
}

// OpenWait is Open that waits, up to wait, for a database server that is
// down or still starting (Unreachable), retrying with a growing delay and
// calling onWait before each retry. Any other error fails at once.
func OpenWait(ctx context.Context, name, driverName, dsn string, opts Options, wait time.Duration, onWait func(err error, retryIn time.Duration)) (*Resource, error) {
	return backoff.Until(ctx, wait, "postgres: "+name, func() (*Resource, error) { return Open(ctx, name, driverName, dsn, opts) }, Unreachable, onWait)
}
