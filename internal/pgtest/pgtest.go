// Package pgtest starts throwaway PostgreSQL servers for tests, the demo and
// benchmarks.
//
// Start runs initdb into a fresh temporary directory, picks a free port on
// 127.0.0.1 and runs postgres as a child process in its own process group.
// When the calling process is root, initdb and postgres run as the operating
// system user "postgres". A server never depends on one that happens to be
// running already, and it does not outlive its owner: Stop shuts it down
// and removes its files, StartT registers Stop with t.Cleanup, and the
// postmaster gets SIGQUIT (immediate shutdown) if the process that started
// it dies first.
//
// Kill and Restart simulate a crash: kill -9 of the whole server, then a
// start on the same data directory and port, where PostgreSQL's own crash
// recovery runs and prepared transactions survive.
package pgtest

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/txcoord/txcoord/internal/dbproc"
)

var (
	// ErrNoBinaries reports that no PostgreSQL server binaries were found.
	ErrNoBinaries = errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found; install them with `apt-get install postgresql` or set " + EnvBin)
	// ErrNoPostgresUser reports that the process runs as root and there is
	// no "postgres" operating system user to run the server as (PostgreSQL
	// refuses to run as root).
	ErrNoPostgresUser = errors.New("pgtest: running as root but there is no `postgres` OS user to run the server as; create it (`useradd --system postgres`) or run as an unprivileged user")
	// ErrStopped reports use of a server after Stop.
	ErrStopped = errors.New("pgtest: server stopped")
	// ErrExited reports that the postmaster exited while it was expected to
	// run or start.
	ErrExited = errors.New("pgtest: postgres exited")
)

// Defaults for Options fields left zero.
const (
	DefaultMaxPreparedTransactions = 100
	DefaultMaxConnections          = 200
)

// Bounds of the waits that take no context.
const (
	stopTimeout = 30 * time.Second
	killTimeout = 10 * time.Second
)

// Options configure a server. The zero value is a durable server (fsync on,
// synchronous_commit on) with prepared transactions enabled.
type Options struct {
	// MaxPreparedTransactions is max_prepared_transactions: 0 means
	// DefaultMaxPreparedTransactions, a negative value means 0 (prepared
	// transactions disabled, PostgreSQL's own default).
	MaxPreparedTransactions int
	// MaxConnections is max_connections: 0 means DefaultMaxConnections.
	MaxConnections int
	// NoFsync turns fsync off, for fast tests that do not survive a power
	// cut. synchronous_commit stays on (commits still wait for WAL writes and
	// synchronous standbys), and a kill -9 of the server loses nothing,
	// since the operating system still holds the written data.
	NoFsync bool
	// Config holds extra postgresql.conf settings, applied after the ones
	// above (and so overriding them).
	Config map[string]string
	// BaseDir is where the temporary directory is created; empty means
	// os.TempDir().
	BaseDir string
}

// Server is a PostgreSQL server owned by the process that started it. Its
// methods are safe for concurrent use.
type Server struct {
	bin     string
	root    string // temporary directory, removed by Stop
	dataDir string
	logPath string
	port    int
	cred    *syscall.Credential // nil unless running as root
	env     []string

	mu      sync.Mutex
	run     *dbproc.Run // the running postmaster, nil if none
	stopped bool
}

// StartT starts a server for a test or benchmark and stops it when the test
// ends. Without server binaries it fails the test with one line naming what
// to install; it never skips.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if errors.Is(err, ErrNoBinaries) {
		t.Fatal(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: stop: %v", err)
		}
	})
	return s
}

// Start creates and starts a server. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(opts.BaseDir, "txcoord-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{
		bin:     bin,
		root:    root,
		dataDir: filepath.Join(root, "data"),
		logPath: filepath.Join(root, "data", "postgres.log"),
		cred:    cred,
		env:     []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "LANG=C", "HOME=" + root},
	}
	if err := s.create(ctx, opts); err != nil {
		s.mu.Lock()
		s.killLocked()
		s.stopped = true
		s.mu.Unlock()
		_ = os.RemoveAll(root)
		return nil, err
	}
	return s, nil
}

// StartMany starts n servers in parallel (initdb is most of a start). If
// one fails, those started are stopped and the errors are joined. The
// caller must stop each server.
func StartMany(ctx context.Context, n int, opts Options) ([]*Server, error) {
	servers := make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { servers[i], errs[i] = Start(ctx, opts) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range servers {
			if s != nil {
				_ = s.Stop()
			}
		}
		return nil, err
	}
	return servers, nil
}

// StartManyT is StartMany for a test: the servers stop when the test ends,
// and a failure to start fails the test.
func StartManyT(t testing.TB, n int, opts Options) []*Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	servers, err := StartMany(ctx, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(func() {
			if err := s.Stop(); err != nil {
				t.Errorf("pgtest: stop: %v", err)
			}
		})
	}
	return servers
}

func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoPostgresUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgtest: user postgres has non-numeric uid %q or gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Server) create(ctx context.Context, opts Options) error {
	if err := os.Chmod(s.root, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := s.chown(s.root); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "initdb"),
		"-D", s.dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.Dir = s.root
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, dbproc.Tail(out, 20))
	}
	if err := s.appendFile(filepath.Join(s.dataDir, "postgresql.conf"), "\ninclude 'txcoord.conf'\n"); err != nil {
		return err
	}
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_ = f.Close()
	if err := s.chown(s.logPath); err != nil {
		return err
	}
	// A port is free when picked but another process may take it before
	// postgres binds it: try again with another.
	const attempts = 5
	for i := 1; ; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
		if err := s.writeConf(opts); err != nil {
			return err
		}
		err = s.start(ctx)
		if err == nil {
			return nil
		}
		if i == attempts || !errors.Is(err, errPortInUse) {
			return err
		}
	}
}

var errPortInUse = errors.New("pgtest: port in use")

func freePort() (int, error) {
	port, err := dbproc.FreePort()
	if err != nil {
		return 0, fmt.Errorf("pgtest: %w", err)
	}
	return port, nil
}

var confKey = regexp.MustCompile(`^[a-z_][a-z0-9_.]*$`)

func (s *Server) writeConf(opts Options) error {
	mpt := opts.MaxPreparedTransactions
	switch {
	case mpt == 0:
		mpt = DefaultMaxPreparedTransactions
	case mpt < 0:
		mpt = 0
	}
	maxConn := opts.MaxConnections
	if maxConn == 0 {
		maxConn = DefaultMaxConnections
	}
	fsync := "on"
	if opts.NoFsync {
		fsync = "off"
	}
	settings := [][2]string{
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(s.port)},
		{"unix_socket_directories", ""},
		{"max_prepared_transactions", strconv.Itoa(mpt)},
		{"max_connections", strconv.Itoa(maxConn)},
		{"fsync", fsync},
		{"synchronous_commit", "on"},
		{"shared_buffers", "16MB"},
		{"logging_collector", "off"},
		{"log_destination", "stderr"},
		{"log_line_prefix", "%m [%p] "},
	}
	keys := make([]string, 0, len(opts.Config))
	for k := range opts.Config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		settings = append(settings, [2]string{k, opts.Config[k]})
	}
	var b bytes.Buffer
	b.WriteString("# Written by txcoord's pgtest.\n")
	for _, kv := range settings {
		if !confKey.MatchString(kv[0]) {
			return fmt.Errorf("pgtest: bad setting name %q", kv[0])
		}
		fmt.Fprintf(&b, "%s = %s\n", kv[0], confQuote(kv[1]))
	}
	path := filepath.Join(s.dataDir, "txcoord.conf")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return s.chown(path)
}

// confQuote quotes v as a postgresql.conf string value, where a backslash
// starts an escape.
func confQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(v) + "'"
}

func (s *Server) appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if _, err := f.WriteString(text); err != nil {
		_ = f.Close()
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// start runs the postmaster and waits until it accepts connections.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrStopped
	}
	if s.run != nil {
		s.mu.Unlock()
		return errors.New("pgtest: server already running")
	}
	r, logStart, err := s.spawn()
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.run = r
	s.mu.Unlock()

	err = s.waitReady(ctx, r.Exited())
	if err == nil {
		return nil
	}
	s.mu.Lock()
	if s.run == r {
		s.killLocked()
	}
	s.mu.Unlock()
	if strings.Contains(s.logSince(logStart), "Address already in use") {
		return fmt.Errorf("%w: %d: %v", errPortInUse, s.port, err)
	}
	return err
}

// spawn starts the postmaster process. It returns the log offset at which
// this run's output begins.
func (s *Server) spawn() (*dbproc.Run, int64, error) {
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir)
	cmd.Dir = s.root
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: s.cred,
		// If the owner dies without Stop, the postmaster shuts down
		// immediately instead of living on.
		Pdeathsig: syscall.SIGQUIT,
	}
	r, off, err := dbproc.Start(cmd, s.logPath)
	if err != nil {
		return nil, 0, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	return r, off, nil
}

// waitReady polls with a connection until the server accepts one, the
// postmaster exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	c, err := pq.NewConnector(s.DSN("postgres") + "&connect_timeout=2")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		conn, err := c.Connect(ctx)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: waiting for postgres on port %d: %w (last: %v)\n%s", s.port, ctx.Err(), last, s.LogTail(20))
		case <-exited:
			return fmt.Errorf("%w while starting on port %d:\n%s", ErrExited, s.port, s.LogTail(20))
		case <-t.C:
		}
	}
}

// Stop shuts the server down (fast shutdown: SIGINT, then SIGKILL after
// 30 seconds) and removes its files. It is safe to call twice and
// concurrently; the waits are bounded.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	if s.run != nil {
		_ = s.run.Proc.Signal(syscall.SIGINT)
		if !s.waitExitLocked(stopTimeout) {
			errs = append(errs, fmt.Errorf("pgtest: postgres did not shut down within %v; killed", stopTimeout))
		}
		s.killLocked()
	}
	if err := os.RemoveAll(s.root); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: %w", err))
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to the postmaster and then to every other process of
// the server, as a crash would, and waits until all are gone (bounded: 10
// seconds). The data directory stays; Restart starts the
// server again.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	if s.run == nil {
		return nil
	}
	if !s.killLocked() {
		return fmt.Errorf("pgtest: processes of the server in %s still alive %v after SIGKILL", s.dataDir, killTimeout)
	}
	return nil
}

// killLocked kills the running postmaster and every process of the server,
// waits for them, and reports whether all are gone. s.mu is held.
func (s *Server) killLocked() bool {
	if s.run == nil {
		return true
	}
	_ = s.run.Proc.Kill()
	deadline := time.Now().Add(killTimeout)
	ok := s.waitExitLocked(killTimeout)
	s.run = nil
	// PostgreSQL's child processes each call setsid, so they are in no
	// group of ours. With the postmaster gone none can be forked; kill the
	// ones still running in the data directory, because a restart refuses
	// to start while any of them holds the old shared memory.
	for {
		pids := serverProcs(s.dataDir)
		if len(pids) == 0 {
			return ok
		}
		if time.Now().After(deadline) {
			return false
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitExitLocked waits up to d for the running postmaster to exit,
// releasing s.mu while it waits. It reports whether it exited. s.run is
// not nil.
func (s *Server) waitExitLocked(d time.Duration) bool {
	r := s.run
	s.mu.Unlock()
	defer s.mu.Lock()
	return r.WaitExit(d)
}

// serverProcs returns the live processes whose working directory is
// dataDir: every PostgreSQL process of that server (the postmaster changes
// into its data directory and its children inherit it). Zombies have no
// working directory and are not listed.
func serverProcs(dataDir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == dataDir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Restart starts the server again on the same data directory and port, for
// example after Kill; PostgreSQL's crash recovery runs and prepared
// transactions survive. A running server is first shut down (fast
// shutdown).
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrStopped
	}
	if s.run != nil {
		_ = s.run.Proc.Signal(syscall.SIGINT)
		if !s.waitExitLocked(stopTimeout) {
			s.killLocked()
			s.mu.Unlock()
			return fmt.Errorf("pgtest: postgres did not shut down within %v before restart; killed", stopTimeout)
		}
		s.killLocked()
	}
	s.mu.Unlock()
	return s.start(ctx)
}

// Running reports whether the postmaster is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run != nil && s.run.Alive()
}

// Pid returns the postmaster's process id, or 0 if it is not running.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		return 0
	}
	return s.run.Proc.Pid
}

// Port returns the TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// DataDir returns the data directory.
func (s *Server) DataDir() string { return s.dataDir }

// LogPath returns the server's log file.
func (s *Server) LogPath() string { return s.logPath }

// DSN returns a lib/pq URL for database dbname as user postgres, which pgx
// accepts too.
func (s *Server) DSN(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// LogTail returns the last n lines of the server log.
func (s *Server) LogTail(n int) string { return dbproc.LogTail(s.logPath, n) }

func (s *Server) logSince(off int64) string { return dbproc.LogSince(s.logPath, off) }

// exec runs statements one by one on a fresh connection to dbname.
func (s *Server) exec(ctx context.Context, dbname string, stmts ...string) error {
	c, err := pq.NewConnector(s.DSN(dbname))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("pgtest: connect to %q: %w", dbname, err)
	}
	defer conn.Close()
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("pgtest: %s: %w", q, err)
		}
	}
	return nil
}

// CreateDB creates database name.
func (s *Server) CreateDB(ctx context.Context, name string) error {
	return s.exec(ctx, "postgres", "CREATE DATABASE "+pq.QuoteIdentifier(name))
}

// SetConf sets a server setting with ALTER SYSTEM and reloads the
// configuration. Settings that need a restart take effect at Restart. The
// reload is asynchronous: other server processes apply it shortly after
// SetConf returns.
func (s *Server) SetConf(ctx context.Context, key, value string) error {
	if !confKey.MatchString(key) {
		return fmt.Errorf("pgtest: bad setting name %q", key)
	}
	return s.exec(ctx, "postgres",
		"ALTER SYSTEM SET "+key+" = "+pq.QuoteLiteral(value),
		"SELECT pg_reload_conf()")
}

// ResetConf undoes SetConf for key and reloads the configuration.
func (s *Server) ResetConf(ctx context.Context, key string) error {
	if !confKey.MatchString(key) {
		return fmt.Errorf("pgtest: bad setting name %q", key)
	}
	return s.exec(ctx, "postgres", "ALTER SYSTEM RESET "+key, "SELECT pg_reload_conf()")
}
