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
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/internal/dsn"
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

// serverInfo is what New learned of the server.
type serverInfo struct {
	version  string
	mariadb  bool
	detached bool // a prepared branch leaves its session at XA PREPARE
	multi    bool // the pool's connections take several statements in one query
	warnings []string
}

// held is the session of a prepared branch that is still attached to it.
type held struct {
	conn  *sql.Conn
	timer *time.Timer
}

var _ participant.Resource = (*Resource)(nil)

// New makes a Resource named name of db, a pool of go-sql-driver/mysql
// connections. It checks the server version (else ErrUnsupportedServer),
// the database (else ErrWrongDatabase) and the marker table. The caller
// keeps ownership of db.
func New(ctx context.Context, name string, db *sql.DB, opts Options) (*Resource, error) {
	if err := ids.ValidateName("resource name", name); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, fmt.Errorf("mysql: resource %s: nil *sql.DB", name)
	}
	r := &Resource{name: name, db: db, database: opts.Database, detachAfter: opts.DetachAfter, attached: map[string]*held{}}
	if r.detachAfter <= 0 {
		r.detachAfter = DefaultDetachAfter
	}
	if !opts.NoMarkers {
		r.markers = opts.MarkerTable
		if r.markers == "" {
			r.markers = DefaultMarkerTable
		}
		if err := ids.ValidateName("marker table", r.markers); err != nil {
			return nil, err
		}
	}
	if err := r.check(ctx, opts.Database == ""); err != nil {
		if !opts.AllowDown || opts.Database == "" || !Unreachable(err) {
			return nil, err
		}
		r.pending.Store(true)
	}
	return r, nil
}

// check makes sure the server can take part; learn records the database
// reached.
func (r *Resource) check(ctx context.Context, learn bool) error {
	var (
		database             sql.NullString
		version              string
		logBin, flush, syncB int64
	)
	err := r.db.QueryRowContext(ctx,
		"SELECT DATABASE(), VERSION(), @@log_bin, @@innodb_flush_log_at_trx_commit, @@sync_binlog").
		Scan(&database, &version, &logBin, &flush, &syncB)
	if err != nil {
		return fmt.Errorf("mysql: resource %s: check the server: %w", r.name, err)
	}
	if !database.Valid || database.String == "" {
		return fmt.Errorf("%w: resource %s: the connection is in no database; name one in the DSN", ErrWrongDatabase, r.name)
	}
	if !learn && database.String != r.database {
		return fmt.Errorf("%w: resource %s expects database %q but the connection reached %q; check the DSN", ErrWrongDatabase, r.name, r.database, database.String)
	}
	info, err := parseVersion(version)
	if err != nil {
		return fmt.Errorf("mysql: resource %s: %w", r.name, err)
	}
	if !info.mariadb {
		// MySQL 8.0.29 added xa_detach_on_prepare (ON by default); before
		// it, or with it off, a prepared branch stays on its session.
		var detach int64
		if err := r.db.QueryRowContext(ctx, "SELECT @@xa_detach_on_prepare").Scan(&detach); err == nil {
			info.detached = detach == 1
		}
	}
	// Several statements in one query (multiStatements in the DSN, which
	// Open sets) save the branch round trips at prepare.
	_, err = r.db.ExecContext(ctx, "DO 0; DO 0")
	info.multi = err == nil
	if flush != 1 {
		info.warnings = append(info.warnings, fmt.Sprintf("innodb_flush_log_at_trx_commit is %d: a prepared or committed branch can be lost in an operating-system crash or power cut (set it to 1)", flush))
	}
	if logBin == 1 && syncB != 1 {
		info.warnings = append(info.warnings, fmt.Sprintf("sync_binlog is %d with the binary log on: a prepared branch can be lost from the binary log, and so from replicas, in a crash (set it to 1)", syncB))
	}
	r.mu.Lock()
	r.server = info
	r.mu.Unlock()
	if learn {
		r.database = database.String
	}
	if r.markers != "" {
		if err := r.markersReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// isMariaDB reports whether VERSION() names MariaDB.
func isMariaDB(version string) bool { return strings.Contains(strings.ToLower(version), "mariadb") }

// parseVersion reads VERSION(): "10.11.19-MariaDB-0+deb12u1-log" or
// "8.0.36".
func parseVersion(v string) (serverInfo, error) {
	info := serverInfo{version: v, mariadb: isMariaDB(v)}
	num := v
	if i := strings.IndexFunc(num, func(c rune) bool { return c != '.' && (c < '0' || c > '9') }); i >= 0 {
		num = num[:i]
	}
	parts := strings.Split(num, ".")
	var n [3]int
	for i := 0; i < len(parts) && i < 3; i++ {
		x, err := strconv.Atoi(parts[i])
		if err != nil {
			return info, fmt.Errorf("%w: cannot read version %q", ErrUnsupportedServer, v)
		}
		n[i] = x
	}
	if len(parts) < 2 {
		return info, fmt.Errorf("%w: cannot read version %q", ErrUnsupportedServer, v)
	}
	older := func(a, b, c int) bool {
		return n[0] < a || n[0] == a && (n[1] < b || n[1] == b && n[2] < c)
	}
	if info.mariadb {
		if older(10, 5, 2) {
			return info, fmt.Errorf("%w: MariaDB %s rolls a prepared XA transaction back when its client disconnects; use 10.5.2 or later", ErrUnsupportedServer, v)
		}
		return info, nil
	}
	if older(8, 0, 0) {
		return info, fmt.Errorf("%w: MySQL %s: use 8.0 or later", ErrUnsupportedServer, v)
	}
	return info, nil
}

// ready checks a resource opened while its server was down on first
// contact.
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

// ParseDSN reads a go-sql-driver/mysql DSN
// ("user:pass@tcp(host:3306)/db?param=value") or a URL
// ("mysql://user:pass@host:3306/db?param=value", also "mariadb://").
func ParseDSN(s string) (*gomysql.Config, error) {
	if i := strings.Index(s, "://"); i > 0 {
		scheme := s[:i]
		if scheme != "mysql" && scheme != "mariadb" {
			return nil, fmt.Errorf("mysql: URL scheme %q: want mysql:// or mariadb://", scheme)
		}
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "3306")
		}
		var b strings.Builder
		if u.User != nil {
			b.WriteString(u.User.Username())
			if p, ok := u.User.Password(); ok {
				b.WriteString(":" + p)
			}
			b.WriteString("@")
		}
		b.WriteString("tcp(" + host + ")/" + strings.TrimPrefix(u.Path, "/"))
		if u.RawQuery != "" {
			b.WriteString("?" + u.RawQuery)
		}
		s = b.String()
	}
	return gomysql.ParseDSN(s)
}

// Open opens a connection pool for a DSN or mysql:// URL (ParseDSN) and
// makes a Resource of it, as New does. Unless opts.Database is set, the
// database the DSN names is the one New requires. Close closes the pool.
func Open(ctx context.Context, name, connStr string, opts Options) (*Resource, error) {
	cfg, err := ParseDSN(connStr)
	if err != nil {
		return nil, fmt.Errorf("mysql: resource %s: parse DSN: %w", name, dsn.Scrub(err, connStr))
	}
	if cfg.DBName == "" {
		return nil, fmt.Errorf("%w: resource %s: the DSN names no database", ErrWrongDatabase, name)
	}
	if opts.Database == "" {
		opts.Database = cfg.DBName
	}
	// The marker, XA END and XA PREPARE go in one round trip. A statement
	// with arguments is still prepared on the server, one statement at a
	// time.
	cfg.MultiStatements = true
	c, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mysql: resource %s: %w", name, err)
	}
	db := sql.OpenDB(c)
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

// OpenWait is Open that waits, up to wait, for a server that is down or
// still starting (Unreachable), retrying with a growing delay and calling
// onWait before each retry. Any other error fails at once.
func OpenWait(ctx context.Context, name, connStr string, opts Options, wait time.Duration, onWait func(err error, retryIn time.Duration)) (*Resource, error) {
	return backoff.Until(ctx, wait, "mysql: "+name, func() (*Resource, error) { return Open(ctx, name, connStr, opts) }, Unreachable, onWait)
}

// Close closes the sessions of prepared branches it still holds (which
// leaves those branches prepared, for any session to finish) and the pool
// if Open opened it.
func (r *Resource) Close() error {
	r.mu.Lock()
	hs := r.attached
	r.attached = map[string]*held{}
	r.mu.Unlock()
	for _, h := range hs {
		h.timer.Stop()
		discard(h.conn)
	}
	if !r.owned {
		return nil
	}
	return r.db.Close()
}

// Name returns the resource's name.
func (r *Resource) Name() string { return r.name }

// Database returns the database the resource reached.
func (r *Resource) Database() string { return r.database }

// DB returns the connection pool.
func (r *Resource) DB() *sql.DB { return r.db }

// Unchecked reports a resource opened with AllowDown whose server has not
// been reached yet.
func (r *Resource) Unchecked() bool { return r.pending.Load() }

// Version returns the server's VERSION() as New read it.
func (r *Resource) Version() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.server.version
}

// Warnings returns the server settings New found that weaken durability
// (innodb_flush_log_at_trx_commit, sync_binlog), each as a sentence.
func (r *Resource) Warnings() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.server.warnings...)
}

// detaches reports whether the server detaches a branch from its session at
// XA PREPARE.
func (r *Resource) detaches() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.server.detached
}

// multi reports whether the pool's connections take several statements in
// one query.
func (r *Resource) multi() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.server.multi
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

// listed reports whether XA RECOVER lists gid's xid.
func (r *Resource) listed(ctx context.Context, gid ids.GID) (bool, error) {
	_, ok, err := r.listedAs(ctx, gid)
	return ok, err
}

// listedAs reports whether XA RECOVER lists gid's branch in this database,
// and the xid it is listed under, as SQL.
func (r *Resource) listedAs(ctx context.Context, gid ids.GID) (string, bool, error) {
	xs, err := r.recoverXIDs(ctx)
	if err != nil {
		return "", false, err
	}
	tag := tagOf(r.database)
	for _, x := range xs {
		if g, _ := x.gid(); g == gid && x.in(tag) {
			return x.sql(), true, nil
		}
	}
	return "", false, nil
}

// recoverXIDs runs XA RECOVER, retried on another connection if a pooled
// one turns out to be dead.
func (r *Resource) recoverXIDs(ctx context.Context) ([]recovered, error) {
	r.mu.Lock()
	mariadb := r.server.mariadb
	r.mu.Unlock()
	const attempts = 3
	for i := 1; ; i++ {
		out, err := xaRecover(ctx, r.db, mariadb)
		if err == nil {
			return out, nil
		}
		if i == attempts || ctx.Err() != nil || !connLost(err) {
			return nil, fmt.Errorf("mysql: %s: %w", r.name, err)
		}
	}
}

// xaRecover runs XA RECOVER on db: on MariaDB its data column holds the
// raw bytes, on MySQL XA RECOVER CONVERT XID gives them in hex.
func xaRecover(ctx context.Context, db *sql.DB, mariadb bool) ([]recovered, error) {
	q, split := "XA RECOVER", splitData
	if !mariadb {
		q, split = "XA RECOVER CONVERT XID", splitHexData
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	var out []recovered
	for rows.Next() {
		var (
			format, gl, bl int64
			data           []byte
		)
		if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
		x, err := split(format, gl, bl, data)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	return out, nil
}

// Scan lists the prepared XA transactions of the server db reaches, as
// Resource.Prepared does, without creating or checking anything: for
// tools that only look (txctl scan).
func Scan(ctx context.Context, db *sql.DB) ([]participant.Prepared, error) {
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	xs, err := xaRecover(ctx, db, isMariaDB(version))
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	return prepared(xs, ""), nil
}

// prepared lists xs; with a tag, only the txcoord branches that may be in
// the database with that tag, and every foreign xid.
func prepared(xs []recovered, tag string) []participant.Prepared {
	out := make([]participant.Prepared, 0, len(xs))
	for _, x := range xs {
		g, _ := x.gid()
		if !g.IsZero() && tag != "" && !x.in(tag) {
			continue // a branch in another database of the server
		}
		out = append(out, participant.Prepared{Raw: x.raw(), GID: g, Native: x.sql()})
	}
	return out
}

// Prepared lists the prepared XA transactions of the server that are this
// database's: XA RECOVER lists every database's, and the tag in each
// txcoord bqual tells them apart (a branch whose name leaves no room for
// the tag is listed by every Resource on the server). Ours carry their
// gid; foreign ones (another format id, or not a gid) a zero GID and, as
// Raw, the xid as SQL; Native is the xid as SQL for both. The server
// keeps no preparation time.
func (r *Resource) Prepared(ctx context.Context) ([]participant.Prepared, error) {
	if err := r.ready(ctx); err != nil {
		return nil, err
	}
	xs, err := r.recoverXIDs(ctx)
	if err != nil {
		return nil, err
	}
	return prepared(xs, tagOf(r.database)), nil
}

// MySQL and MariaDB error numbers the adapter tells apart.
const (
	erNotA           = 1397 // XAER_NOTA: unknown XID
	erInval          = 1398 // XAER_INVAL
	erRMFail         = 1399 // XAER_RMFAIL: wrong state for the command
	erOutside        = 1400 // XAER_OUTSIDE: work done outside the global transaction
	erRMErr          = 1401 // XAER_RMERR: the branch was rolled back after an error
	erRBRollback     = 1402 // XA_RBROLLBACK
	erDupID          = 1440 // XAER_DUPID: the XID already exists
	erRBTimeout      = 1613 // XA_RBTIMEOUT
	erRBDeadlock     = 1614 // XA_RBDEADLOCK
	erLockDeadlock   = 1213 // ER_LOCK_DEADLOCK
	erLockWait       = 1205 // ER_LOCK_WAIT_TIMEOUT
	erServerShutdown = 1053 // ER_SERVER_SHUTDOWN
	erConnKilled     = 1927 // ER_CONNECTION_KILLED (MariaDB)
	erQueryKilled    = 1317 // ER_QUERY_INTERRUPTED
)

// errNumber returns the server error number in err's chain, or 0.
func errNumber(err error) uint16 {
	var me *gomysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// rolledBackByServer reports an error after which the server has rolled
// the branch back (or marked it rollback-only).
func rolledBackByServer(err error) bool {
	switch errNumber(err) {
	case erRMErr, erRBRollback, erRBTimeout, erRBDeadlock, erLockDeadlock:
		return true
	}
	return false
}

// outcomeUnknown reports whether err leaves open whether the server ran
// the statement.
func outcomeUnknown(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || connLost(err)
}

// connLost reports whether err is not an error reply from a live session.
func connLost(err error) bool {
	switch errNumber(err) {
	case 0:
		return true
	case erServerShutdown, erConnKilled:
		return true
	}
	return false
}

// discard closes conn without returning it to the pool: its session may
// hold an ACTIVE, IDLE or PREPARED branch. Closing the session rolls back
// one that was not prepared and detaches one that was.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// Unreachable reports whether err says the server cannot be reached now.
func Unreachable(err error) bool {
	var ne net.Error
	switch {
	case err == nil:
		return false
	case errors.As(err, &ne), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, gomysql.ErrInvalidConn),
		errors.Is(err, driver.ErrBadConn):
		return true
	}
	switch errNumber(err) {
	case erServerShutdown, erConnKilled, 1040: // 1040: too many connections
		return true
	}
	return false
}
