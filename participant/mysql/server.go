// The server behind a Resource: its version, what it can do, and whether
// it is ready.

package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/backoff"
	"github.com/txcoord/txcoord/internal/dsn"
	"github.com/txcoord/txcoord/participant"
)

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
