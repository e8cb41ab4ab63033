// Package mariadbtest starts throwaway MariaDB servers for tests, the demo
// and benchmarks, the way internal/pgtest starts PostgreSQL ones.
//
// Start runs mariadb-install-db into a fresh temporary directory, picks a
// free port on 127.0.0.1 and runs mariadbd as a child process in its own
// process group, with the binary log on (as production XA setups have it)
// and durable settings (innodb_flush_log_at_trx_commit=1, sync_binlog=1).
// When the calling process is root, both run as the operating system user
// "mysql". A server never depends on one that happens to be running
// already (such as a system server on port 3306), and it does not outlive
// its owner: Stop shuts it down and removes its files, StartT registers
// Stop with t.Cleanup, and mariadbd gets SIGKILL if the process that
// started it dies first.
//
// Kill and Restart simulate a crash: kill -9 of the server, then a start on
// the same data directory and port, where InnoDB's crash recovery runs and
// prepared XA transactions survive.
package mariadbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
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

	"github.com/go-sql-driver/mysql"

	"github.com/txcoord/txcoord/internal/dbproc"
)

var (
	// ErrNoBinaries reports that no MariaDB server programs were found.
	ErrNoBinaries = errors.New("mariadbtest: MariaDB server programs (mariadbd, mariadb-install-db) not found; install them with `apt-get install mariadb-server` or set " + EnvBin)
	// ErrNoMySQLUser reports that the process runs as root and there is no
	// "mysql" operating system user to run the server as.
	ErrNoMySQLUser = errors.New("mariadbtest: running as root but there is no `mysql` OS user to run the server as; create it (`useradd --system mysql`) or run as an unprivileged user")
	// ErrStopped reports use of a server after Stop.
	ErrStopped = errors.New("mariadbtest: server stopped")
	// ErrExited reports that mariadbd exited while it was expected to run or
	// start.
	ErrExited = errors.New("mariadbtest: mariadbd exited")
)

// DefaultMaxConnections is max_connections when Options.MaxConnections is 0.
const DefaultMaxConnections = 200

const (
	stopTimeout = 30 * time.Second
	killTimeout = 10 * time.Second
)

// Options configure a server. The zero value is a durable server with the
// binary log on.
type Options struct {
	// MaxConnections is max_connections: 0 means DefaultMaxConnections.
	MaxConnections int
	// NoFsync sets innodb_flush_log_at_trx_commit=2 and sync_binlog=0, for
	// fast tests that do not survive a power cut. A kill -9 of the server
	// loses nothing, since the operating system still holds the written
	// data.
	NoFsync bool
	// NoBinlog runs without the binary log (log_bin off).
	NoBinlog bool
	// Config holds extra server options (name without the leading dashes,
	// value), applied after the ones above.
	Config map[string]string
	// BaseDir is where the temporary directory is created; empty means
	// os.TempDir().
	BaseDir string
}

// Server is a MariaDB server owned by the process that started it. Its
// methods are safe for concurrent use.
type Server struct {
	bin     binaries
	root    string // temporary directory, removed by Stop
	dataDir string
	logPath string
	port    int
	args    []string // mariadbd's options
	cred    *syscall.Credential
	env     []string

	mu      sync.Mutex
	run     *dbproc.Run
	stopped bool
}

// StartT starts a server for a test or benchmark and stops it when the test
// ends. Without server programs it fails the test with one line naming what
// to install; it never skips.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err.Error())
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("mariadbtest: stop: %v", err)
		}
	})
	return s
}

// Start creates and starts a server. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(opts.BaseDir, "txcoord-mariadbtest-")
	if err != nil {
		return nil, fmt.Errorf("mariadbtest: %w", err)
	}
	s := &Server{
		bin:     bin,
		root:    root,
		dataDir: filepath.Join(root, "data"),
		logPath: filepath.Join(root, "mariadb.log"),
		cred:    cred,
		env:     []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "LANG=C", "HOME=" + root, "TZ=UTC"},
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

// StartMany starts n servers in parallel. If one fails, those started are
// stopped and the errors are joined. The caller must stop each server.
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

func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("mysql")
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoMySQLUser, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("mariadbtest: user mysql has non-numeric uid %q or gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

var optName = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

// serverArgs returns the options mariadbd runs with (the port is added at
// each start).
func (s *Server) serverArgs(opts Options) ([]string, error) {
	maxConn := opts.MaxConnections
	if maxConn == 0 {
		maxConn = DefaultMaxConnections
	}
	flush, syncBinlog := "1", "1"
	if opts.NoFsync {
		flush, syncBinlog = "2", "0"
	}
	args := []string{
		"--no-defaults",
		"--datadir=" + s.dataDir,
		"--bind-address=127.0.0.1",
		"--socket=" + filepath.Join(s.root, "mysqld.sock"),
		"--pid-file=" + filepath.Join(s.root, "mysqld.pid"),
		"--log-error=" + s.logPath,
		"--skip-name-resolve",
		"--max-connections=" + strconv.Itoa(maxConn),
		"--innodb-flush-log-at-trx-commit=" + flush,
		"--sync-binlog=" + syncBinlog,
		"--innodb-buffer-pool-size=32M",
		"--innodb-log-file-size=16M",
		"--innodb-use-native-aio=0",
		"--performance-schema=OFF",
		"--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_bin",
		"--default-time-zone=+00:00",
		"--lock-wait-timeout=60",
	}
	if !opts.NoBinlog {
		args = append(args, "--log-bin="+filepath.Join(s.dataDir, "binlog"), "--server-id=1", "--binlog-format=ROW")
	}
	keys := make([]string, 0, len(opts.Config))
	for k := range opts.Config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !optName.MatchString(k) {
			return nil, fmt.Errorf("mariadbtest: bad option name %q", k)
		}
		args = append(args, "--"+k+"="+opts.Config[k])
	}
	return args, nil
}

func (s *Server) create(ctx context.Context, opts Options) error {
	args, err := s.serverArgs(opts)
	if err != nil {
		return err
	}
	s.args = args
	if err := os.Chmod(s.root, 0o700); err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
	}
	if err := s.chown(s.root); err != nil {
		return err
	}
	install := []string{
		"--no-defaults",
		"--datadir=" + s.dataDir,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--innodb-log-file-size=16M",
		"--innodb-buffer-pool-size=32M",
		"--innodb-use-native-aio=0",
	}
	if s.bin.basedir != "" {
		install = append(install, "--basedir="+s.bin.basedir)
	}
	cmd := exec.CommandContext(ctx, s.bin.install, install...)
	cmd.Dir = s.root
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mariadbtest: mariadb-install-db: %w\n%s", err, dbproc.Tail(out, 20))
	}
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
	}
	_ = f.Close()
	if err := s.chown(s.logPath); err != nil {
		return err
	}
	// A port is free when picked but another process may take it first:
	// try again with another.
	const attempts = 5
	for i := 1; ; i++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.port = port
		err = s.start(ctx)
		if err == nil {
			return nil
		}
		if i == attempts || !errors.Is(err, errPortInUse) {
			return err
		}
	}
}

var errPortInUse = errors.New("mariadbtest: port in use")

func freePort() (int, error) {
	port, err := dbproc.FreePort()
	if err != nil {
		return 0, fmt.Errorf("mariadbtest: %w", err)
	}
	return port, nil
}

func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
	}
	return nil
}

// start runs mariadbd and waits until it accepts connections.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrStopped
	}
	if s.run != nil {
		s.mu.Unlock()
		return errors.New("mariadbtest: server already running")
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
	if log := s.logSince(logStart); strings.Contains(log, "Address already in use") || strings.Contains(log, "Can't start server: Bind on TCP/IP port") {
		return fmt.Errorf("%w: %d: %v", errPortInUse, s.port, err)
	}
	return err
}

func (s *Server) spawn() (*dbproc.Run, int64, error) {
	args := append(append([]string(nil), s.args...), "--port="+strconv.Itoa(s.port))
	cmd := exec.Command(s.bin.server, args...)
	cmd.Dir = s.root
	cmd.Env = s.env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: s.cred,
		// If the owner dies without Stop, the server dies too instead of
		// living on.
		Pdeathsig: syscall.SIGKILL,
	}
	r, off, err := dbproc.Start(cmd, s.logPath)
	if err != nil {
		return nil, 0, fmt.Errorf("mariadbtest: start mariadbd: %w", err)
	}
	return r, off, nil
}

// waitReady polls with a connection until the server answers, mariadbd
// exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	cfg := s.Config("mysql")
	cfg.Timeout = 2 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
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
			return fmt.Errorf("mariadbtest: waiting for mariadbd on port %d: %w (last: %v)\n%s", s.port, ctx.Err(), last, s.LogTail(20))
		case <-exited:
			return fmt.Errorf("%w while starting on port %d:\n%s", ErrExited, s.port, s.LogTail(20))
		case <-t.C:
		}
	}
}

// Stop shuts the server down (SIGTERM, then SIGKILL after 30 seconds) and
// removes its files. It is safe to call twice and concurrently.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	if s.run != nil {
		_ = s.run.Proc.Signal(syscall.SIGTERM)
		if !s.waitExitLocked(stopTimeout) {
			errs = append(errs, fmt.Errorf("mariadbtest: mariadbd did not shut down within %v; killed", stopTimeout))
		}
		s.killLocked()
	}
	if err := os.RemoveAll(s.root); err != nil {
		errs = append(errs, fmt.Errorf("mariadbtest: %w", err))
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to the server, as a crash would, and waits until it is
// gone. The data directory stays; Restart starts the server again.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	if !s.killLocked() {
		return fmt.Errorf("mariadbtest: mariadbd in %s still alive %v after SIGKILL", s.dataDir, killTimeout)
	}
	return nil
}

// killLocked kills the running server's process group and waits for it.
// s.mu is held.
func (s *Server) killLocked() bool {
	if s.run == nil {
		return true
	}
	_ = syscall.Kill(-s.run.Proc.Pid, syscall.SIGKILL)
	_ = s.run.Proc.Kill()
	ok := s.waitExitLocked(killTimeout)
	s.run = nil
	return ok
}

// waitExitLocked waits up to d for the server to exit, releasing s.mu while
// it waits. s.run is not nil.
func (s *Server) waitExitLocked(d time.Duration) bool {
	r := s.run
	s.mu.Unlock()
	defer s.mu.Lock()
	return r.WaitExit(d)
}

// Restart starts the server again on the same data directory and port,
// for example after Kill; prepared XA transactions survive. A running
// server is first shut down.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrStopped
	}
	if s.run != nil {
		_ = s.run.Proc.Signal(syscall.SIGTERM)
		if !s.waitExitLocked(stopTimeout) {
			s.killLocked()
			s.mu.Unlock()
			return fmt.Errorf("mariadbtest: mariadbd did not shut down within %v before restart; killed", stopTimeout)
		}
		s.killLocked()
	}
	s.mu.Unlock()
	return s.start(ctx)
}

// Running reports whether mariadbd is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run != nil && s.run.Alive()
}

// Pid returns mariadbd's process id, or 0 if it is not running.
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

// LogPath returns the server's error log.
func (s *Server) LogPath() string { return s.logPath }

// Config returns a go-sql-driver/mysql configuration for database dbname
// as user root (empty password).
func (s *Server) Config(dbname string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	cfg.DBName = dbname
	return cfg
}

// DSN returns a go-sql-driver/mysql DSN for database dbname as user root.
func (s *Server) DSN(dbname string) string { return s.Config(dbname).FormatDSN() }

// URL returns the server's address as a mysql:// URL for database dbname,
// the form txcoord serve --resource takes.
func (s *Server) URL(dbname string) string {
	return "mysql://root@" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) + "/" + dbname
}

// LogTail returns the last n lines of the server log.
func (s *Server) LogTail(n int) string { return dbproc.LogTail(s.logPath, n) }

func (s *Server) logSince(off int64) string { return dbproc.LogSince(s.logPath, off) }

// Exec runs statements one by one on a fresh connection to dbname ("" for
// none).
func (s *Server) Exec(ctx context.Context, dbname string, stmts ...string) error {
	c, err := mysql.NewConnector(s.Config(dbname))
	if err != nil {
		return fmt.Errorf("mariadbtest: %w", err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("mariadbtest: connect to %q: %w", dbname, err)
	}
	defer conn.Close()
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("mariadbtest: %s: %w", q, err)
		}
	}
	return nil
}

// CreateDB creates database name.
func (s *Server) CreateDB(ctx context.Context, name string) error {
	return s.Exec(ctx, "", "CREATE DATABASE "+QuoteIdentifier(name))
}

// QuoteIdentifier quotes name as a MariaDB identifier.
func QuoteIdentifier(name string) string {
	return "`" + strings.ReplaceAll(name, "`", "``") + "`"
}
