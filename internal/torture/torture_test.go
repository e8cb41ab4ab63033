package torture

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	gomysql "github.com/go-sql-driver/mysql"
	"github.com/lib/pq"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/mariadbtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/proctest"
	"github.com/txcoord/txcoord/participant/postgres"
)

// Environment of a run.
const (
	envDuration = "TORTURE_DURATION"  // how long faults are injected (default 25s)
	envSeed     = "TORTURE_SEED"      // seed of the schedule and the orders (default random)
	envWorkers  = "TORTURE_WORKERS"   // concurrent clients (default 4)
	envKeepLogs = "TORTURE_KEEP_LOGS" // "1": keep the logs of a run that passed
	envFailover = "TORTURE_FAILOVER"  // "1": two coordinators on etcd, a primary and a standby
)

const (
	defaultDuration = 25 * time.Second
	defaultWorkers  = 4
	// slotLen is the schedule's unit of time.
	slotLen = time.Second
	// calmSlots start the run with no fault.
	calmSlots = 2
	// maxActive bounds the faults on at once.
	maxActive = 3
	// coordinatorID is txcoord's id, in every gid.
	coordinatorID = "torture"
)

// Deadlines. They are generous: the short run shares two cores with the
// race detector and other packages' tests, and they bound waiting, never
// assert speed.
const (
	readyTimeout    = 2 * time.Minute // a process answering its health check
	restartTimeout  = time.Minute     // a database server or a link back up
	recoveryTimeout = 3 * time.Minute // the databases settled after healing
	stopTimeout     = 20 * time.Second
	askTimeout      = 5 * time.Minute // asking the coordinator about every transaction
	afterOrders     = 10              // orders placed after healing, each of which must commit
	afterAttempts   = 10
)

type config struct {
	duration time.Duration
	seed     uint64
	workers  int
	slots    int
	failover bool
}

func configFromEnv() (config, error) {
	cfg := config{duration: defaultDuration, seed: rand.Uint64(), workers: defaultWorkers}
	if s := os.Getenv(envDuration); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 5*slotLen {
			return cfg, fmt.Errorf("%s=%q: want a duration of at least %v", envDuration, s, 5*slotLen)
		}
		cfg.duration = d
	}
	if s := os.Getenv(envSeed); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cfg, fmt.Errorf("%s=%q: want an unsigned integer", envSeed, s)
		}
		cfg.seed = seed
	}
	if s := os.Getenv(envWorkers); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return cfg, fmt.Errorf("%s=%q: want a positive integer", envWorkers, s)
		}
		cfg.workers = n
	}
	switch s := os.Getenv(envFailover); s {
	case "", "0":
	case "1":
		cfg.failover = true
	default:
		return cfg, fmt.Errorf("%s=%q: want 1 or 0", envFailover, s)
	}
	cfg.slots = int(cfg.duration / slotLen)
	return cfg, nil
}

// replay is the command that runs the same schedule and orders again.
func (c config) replay() string {
	cmd := fmt.Sprintf("make torture SEED=%d DURATION=%v", c.seed, c.duration)
	if c.workers != defaultWorkers {
		cmd = fmt.Sprintf("%s=%d %s", envWorkers, c.workers, cmd)
	}
	if c.failover {
		cmd += " FAILOVER=1"
	}
	return cmd
}

// TestTorture places concurrent orders through txcoord and the order
// example's services while a seeded schedule kills and restarts the
// coordinator, the services and their database servers and cuts, delays
// and blackholes the links between them; then it heals everything, waits
// for recovery, and checks that every order is in all three databases or
// none as its client was told, that money and stock are conserved, and that
// nothing is left prepared.
func TestTorture(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts txcoord, three services, three PostgreSQL servers and a MariaDB server")
	}
	cfg, err := configFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	torture(t, cfg)
}

// TestTortureFailover is TestTorture with two coordinators on etcd, a
// primary and a standby (TORTURE_FAILOVER=1), so that a plain go test
// runs both; make torture runs one, as FAILOVER says.
func TestTortureFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts two txcoords, three services, three PostgreSQL servers, a MariaDB server and etcd")
	}
	cfg, err := configFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.failover {
		t.Skip(envFailover + "=1: TestTorture runs with failover")
	}
	cfg.failover = true
	torture(t, cfg)
}

func torture(t *testing.T, cfg config) {
	mode := "one coordinator, its log in bbolt"
	if cfg.failover {
		mode = "two coordinators, a primary and a standby, their log on a 3-member etcd cluster"
	}
	t.Logf("seed %d: %v of faults, %d workers, %s (replay: %s)", cfg.seed, cfg.duration, cfg.workers, mode, cfg.replay())
	began := time.Now()
	r := newRig(t, cfg.failover)
	setup := time.Since(began)
	t.Logf("set up in %v; logs in %s", setup.Round(time.Millisecond), r.logDir)

	faults := plan(cfg.seed, planConfig{slots: cfg.slots, calm: calmSlots, maxActive: maxActive, failover: cfg.failover})
	planned := map[faultKind]int{}
	for _, f := range faults {
		planned[f.kind]++
	}
	t.Logf("schedule: %d faults in %d slots of %v", len(faults), cfg.slots, slotLen)

	w, err := newWorkload(cfg.seed, r.data, r.clientCoordAddrs(), r.clientAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()

	// Faults and orders.
	chaosBegan := time.Now()
	r.ev.restart()
	r.ev.logf("faults begin: %d planned", len(faults))
	ctx, stop := context.WithDeadline(context.Background(), chaosBegan.Add(time.Duration(cfg.slots)*slotLen))
	defer stop()
	var workers sync.WaitGroup
	for i := range cfg.workers {
		workers.Go(func() { w.run(ctx, i) })
	}
	h, err := newHostile(r.certs["intruder"], r.clientCoordAddrs(), r.clientAddrs(), w)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	workers.Go(func() { h.run(ctx) })
	r.runSchedule(ctx, chaosBegan, faults)
	<-ctx.Done()
	r.ev.logf("faults end: healing")
	healBegan := time.Now()
	r.heal()
	workers.Wait()
	r.ev.logf("clients stopped")
	r.waitReady()
	records := w.snapshot()
	problems, converged := r.converge(records, recoveryTimeout)
	recovery := time.Since(healBegan)
	r.ev.logf("recovery: converged %v after %v", converged, recovery.Round(time.Millisecond))

	// What the coordinator says now of every transaction.
	r.ask(records)

	// The healed system must work again.
	var afterErrs []string
	if converged {
		var after []*record
		after, afterErrs = r.placeAfter(w)
		records = append(records, after...)
		problems, converged = r.converge(records, recoveryTimeout)
	}

	// The verdict comes from the databases once no process can change them.
	r.stopAll()
	vctx, vcancel := context.WithTimeout(context.Background(), time.Minute)
	final, err := readState(vctx, r.dbs)
	vcancel()
	var violations []string
	if err != nil {
		violations = append(problems, fmt.Sprintf("reading the databases after stopping every process: %v", err))
	} else {
		violations = checkViolations(final, r.data, records, r.lostTxs(), true)
	}
	hostileReport, accepted := h.report()
	violations = append(violations, accepted...)
	var procProblems []string
	for _, name := range r.procNames() {
		procProblems = append(procProblems, r.procs[name].problems()...)
	}
	procProblems = append(procProblems, r.failures()...)

	r.writeRecords(records)
	t.Log(r.summary(cfg, summaryInput{
		records: records, planned: planned, setup: setup, recovery: recovery, total: time.Since(began),
		violations: len(violations), after: afterErrs,
	}) + "\n" + hostileReport)
	for i, v := range violations {
		if i == 50 {
			t.Errorf("... and %d more violations", len(violations)-i)
			break
		}
		t.Errorf("violation: %s", v)
	}
	if !converged && len(violations) == 0 {
		t.Errorf("the databases did not settle within %v of healing: %s", recoveryTimeout, strings.Join(problems, "\n"))
	}
	for _, e := range afterErrs {
		t.Errorf("after healing: %s", e)
	}
	for _, p := range procProblems {
		t.Error(p)
	}
	if t.Failed() {
		r.dump(t)
	}
}

// rig is the running system.
type rig struct {
	failover bool
	binDir   string
	logDir   string
	ev       *events
	data     shopData
	certs    map[string]tlsFiles // by process, and the intruder

	pg  map[string]dbServer // by service, and the ledger
	dbs map[string]*sql.DB  // by service, straight to the server
	// ledger is the coordinator's decision holder, straight to its server.
	ledger *sql.DB
	procs  map[string]*proc // the coordinators and the services
	links  map[string]*link
	proxy  *toxiproxy.ApiServer
	// etcd holds the coordinators' log in a failover run.
	etcd *etcdtest.Cluster

	coordAddr map[string]string // by coordinator
	svcAddr   map[string]string

	mu       sync.Mutex
	injected map[faultKind]int
	// lost holds the transactions a rollbackByHand fault rolled a
	// prepared branch of back, with the gids.
	lost  map[ids.TxID][]string
	armed int      // kills whose restart armed a crash point
	fails []string // harness actions that failed
}

func newRig(t *testing.T, failover bool) *rig {
	r := &rig{
		failover: failover, binDir: t.TempDir(), coordAddr: map[string]string{},
		pg: map[string]dbServer{}, dbs: map[string]*sql.DB{}, procs: map[string]*proc{},
		links: map[string]*link{}, svcAddr: map[string]string{}, injected: map[faultKind]int{}, lost: map[ids.TxID][]string{},
	}
	logDir, err := os.MkdirTemp("", "txcoord-torture-")
	if err != nil {
		t.Fatal(err)
	}
	r.logDir = logDir
	t.Cleanup(func() {
		if t.Failed() || os.Getenv(envKeepLogs) == "1" {
			t.Logf("logs kept in %s", logDir)
			return
		}
		_ = os.RemoveAll(logDir)
	})
	r.ev, err = newEvents(filepath.Join(logDir, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.ev.close)

	var wg sync.WaitGroup
	var buildErr error
	var etcdErr error
	wg.Go(func() {
		if buildErr = build(r.binDir, failover); buildErr == nil && failover {
			// Its members are processes: their goroutines are not the
			// test's, and they die with it.
			r.etcd, etcdErr = etcdtest.StartProcesses(3, filepath.Join(r.binDir, etcdMember))
		}
	})
	r.startServers(t)
	wg.Wait()
	if r.etcd != nil {
		t.Cleanup(r.etcd.Close)
	}
	if etcdErr != nil {
		t.Fatal(etcdErr)
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := r.pg[ledger].CreateDB(ctx, ledger); err != nil {
		t.Fatal(err)
	}
	r.ledger, err = sql.Open("postgres", r.pg[ledger].(*pgtest.Server).DSN(ledger))
	if err != nil {
		t.Fatal(err)
	}
	r.ledger.SetMaxOpenConns(1)
	t.Cleanup(func() { r.ledger.Close() })
	for _, s := range services {
		if err := r.pg[s].CreateDB(ctx, s); err != nil {
			t.Fatal(err)
		}
		var db *sql.DB
		if my, ok := r.pg[s].(*mariadbtest.Server); ok {
			c, err := gomysql.NewConnector(my.Config(s))
			if err != nil {
				t.Fatal(err)
			}
			db = sql.OpenDB(c)
		} else if db, err = sql.Open("postgres", r.pg[s].(*pgtest.Server).DSN(s)); err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(2)
		t.Cleanup(func() { db.Close() })
		r.dbs[s] = db
	}

	// The processes' ports stay taken until the proxies have theirs.
	coords := r.coordinators()
	held := holdPorts(t, len(coords)+len(services))
	t.Cleanup(func() {
		for _, l := range held {
			l.Close()
		}
	})
	for i, c := range coords {
		r.coordAddr[c] = held[i].Addr().String()
	}
	for i, s := range services {
		r.svcAddr[s] = held[len(coords)+i].Addr().String()
	}
	r.proxy = newProxyServer()
	t.Cleanup(func() {
		for _, l := range r.links {
			l.close()
		}
	})
	add := func(from, to, upstream string) {
		l, err := newLink(r.proxy, linkName(from, to), upstream)
		if err != nil {
			t.Fatal(err)
		}
		r.links[l.name] = l
	}
	add(clientName, coordName, r.coordAddr[coordName])
	for _, s := range services {
		add(clientName, s, r.svcAddr[s])
		add(s, coordName, r.coordAddr[coordName])
		add(coordName, s, r.svcAddr[s])
		add(s, dbName(s), net.JoinHostPort("127.0.0.1", strconv.Itoa(r.pg[s].Port())))
	}
	add(coordName, dbName(ledger), net.JoinHostPort("127.0.0.1", strconv.Itoa(r.pg[ledger].Port())))
	if failover {
		add(clientName, coordB, r.coordAddr[coordB])
		for _, s := range services {
			add(s, coordB, r.coordAddr[coordB])
		}
		// Each coordinator reaches etcd through its own link, to a
		// member of its own.
		for i, c := range coords {
			u, err := url.Parse(r.etcd.Endpoints[i])
			if err != nil {
				t.Fatal(err)
			}
			add(c, etcdName, u.Host)
		}
	}

	certs, policy, err := issueTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r.certs = certs
	ct := certs[coordName]
	args := []string{"serve", "--metrics-listen", "off", "--id", coordinatorID,
		"--tls-cert", ct.cert, "--tls-key", ct.key, "--tls-client-ca", ct.ca, "--policy", policy,
		"--participant-tls-cert", ct.cert, "--participant-tls-key", ct.key, "--participant-tls-ca", ct.ca,
		"--tx-timeout", "20s", "--prepare-timeout", "5s", "--call-timeout", "5s",
		"--in-doubt-timeout", "3s", "--recovery-interval", "2s", "--shutdown-timeout", "10s", "--log-format", "text"}
	for _, s := range services {
		args = append(args, "--participant", s+"="+r.links[linkName(coordName, s)].addr)
	}
	ledgerDSN := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.links[linkName(coordName, dbName(ledger))].addr,
		Path: "/" + ledger, RawQuery: "sslmode=disable&connect_timeout=5"}
	args = append(args, "--resource", ledger+"="+ledgerDSN.String(), "--holder", ledger)
	for _, l := range held {
		l.Close()
	}
	for _, c := range coords {
		own := append([]string{"--listen", r.coordAddr[c]}, args...)
		if failover {
			// Both wait as standbys; the first to start is the primary.
			own = append(own, "--standby", "--etcd-endpoints", "http://"+r.links[linkName(c, etcdName)].addr, "--etcd-lease", "3s")
		} else {
			own = append(own, "--init-log", "--data-dir", filepath.Join(t.TempDir(), "txcoord"))
		}
		r.procs[c] = r.newProc(c, r.coordAddr[c], own...)
	}
	for _, s := range services {
		dsn := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.links[linkName(s, dbName(s))].addr,
			Path: "/" + s, RawQuery: "sslmode=disable&connect_timeout=5"}
		if s == mariaDB {
			dsn = url.URL{Scheme: "mysql", User: url.User("root"), Host: r.links[linkName(s, dbName(s))].addr, Path: "/" + s, RawQuery: "timeout=5s"}
		}
		r.procs[s] = r.newProc(s, r.svcAddr[s], "--listen", r.svcAddr[s],
			"--advertise", r.links[linkName(coordName, s)].addr, "--dsn", dsn.String(),
			"--coordinator", strings.Join(r.serviceCoordAddrs(s), ","),
			"--in-doubt-timeout", "2s", "--check-interval", "500ms", "--stop-timeout", "5s",
			"--tls-cert", certs[s].cert, "--tls-key", certs[s].key, "--tls-ca", certs[s].ca, "--coordinator-id", spiffeOf(coordName))
	}
	t.Cleanup(func() {
		for _, p := range r.procs {
			p.close()
		}
	})
	// The first coordinator is the primary once it serves; a second then
	// waits as its standby.
	for _, name := range r.procNames() {
		p := r.procs[name]
		if err := p.start(""); err != nil {
			t.Fatal(err)
		}
		if name == coordB {
			continue
		}
		if err := p.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r.data, err = readShop(ctx, r.dbs); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) newProc(name, addr string, args ...string) *proc {
	bin := name
	if name == coordB {
		bin = coordName
	}
	return newProc(name, filepath.Join(r.binDir, bin), addr, filepath.Join(r.logDir, name+".log"), r.ev, args...)
}

// coordinators lists the coordinator processes.
func (r *rig) coordinators() []string { return coordinators(r.failover) }

// procNames lists the processes, coordinators first.
func (r *rig) procNames() []string { return append(r.coordinators(), services...) }

// clientCoordAddrs returns where the client reaches the coordinators:
// through their links.
func (r *rig) clientCoordAddrs() []string {
	var out []string
	for _, c := range r.coordinators() {
		out = append(out, r.links[linkName(clientName, c)].addr)
	}
	return out
}

// serviceCoordAddrs returns where service s reaches the coordinators.
func (r *rig) serviceCoordAddrs(s string) []string {
	var out []string
	for _, c := range r.coordinators() {
		out = append(out, r.links[linkName(s, c)].addr)
	}
	return out
}

// coordAddrs returns the coordinators' own addresses, past the links.
func (r *rig) coordAddrs() []string {
	var out []string
	for _, c := range r.coordinators() {
		out = append(out, r.coordAddr[c])
	}
	return out
}

// clientAddrs returns where the client reaches each service: through its
// link.
func (r *rig) clientAddrs() map[string]string {
	out := map[string]string{}
	for _, s := range services {
		out[s] = r.links[linkName(clientName, s)].addr
	}
	return out
}

// dbServer is a database server of either kind.
type dbServer interface {
	CreateDB(ctx context.Context, name string) error
	Kill() error
	Restart(ctx context.Context) error
	Running() bool
	Port() int
	LogTail(n int) string
}

// startServers starts the database servers, in parallel: MariaDB for the
// mariaDB service, PostgreSQL for the others and the ledger.
func (r *rig) startServers(t *testing.T) {
	var pgs []string
	for _, s := range databases {
		if s != mariaDB {
			pgs = append(pgs, s)
		}
	}
	var wg sync.WaitGroup
	var my *mariadbtest.Server
	var myErr error
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		my, myErr = mariadbtest.Start(ctx, mariadbtest.Options{NoFsync: true})
	})
	list := pgtest.StartManyT(t, len(pgs), pgtest.Options{NoFsync: true})
	wg.Wait()
	if myErr != nil {
		t.Fatal(myErr)
	}
	t.Cleanup(func() {
		if err := my.Stop(); err != nil {
			t.Errorf("mariadbtest: stop: %v", err)
		}
	})
	for i, s := range pgs {
		r.pg[s] = list[i]
	}
	r.pg[mariaDB] = my
}

// holdPorts listens on n free loopback ports; the caller closes the
// listeners.
func holdPorts(t *testing.T, n int) []net.Listener {
	t.Helper()
	var out []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

func (r *rig) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.ev.logf("harness: %s", msg)
	r.mu.Lock()
	r.fails = append(r.fails, msg)
	r.mu.Unlock()
}

func (r *rig) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.fails...)
}

func (r *rig) waitReady() {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := r.waitPrimary(ctx); err != nil {
		r.fail("after healing: %v", err)
	}
	for _, name := range services {
		if err := r.procs[name].waitReady(ctx); err != nil {
			r.fail("after healing: %v", err)
		}
	}
}

// waitPrimary waits until one coordinator serves (a standby does not
// listen).
func (r *rig) waitPrimary(ctx context.Context) error {
	if !r.failover {
		return r.procs[coordName].waitReady(ctx)
	}
	conn, err := client.DialCoordinators(r.coordAddrs(), dialOptions()...)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := proctest.WaitServingConn(ctx, conn, nil); err != nil {
		var logs []string
		for _, c := range r.coordinators() {
			logs = append(logs, fmt.Sprintf("%s:\n%s", c, r.procs[c].tail(20)))
		}
		return fmt.Errorf("no coordinator serves: %v; logs:\n%s", err, strings.Join(logs, "\n"))
	}
	return nil
}

// converge waits until the databases obey every rule on three reads in a
// row, or timeout passes; it returns the problems of the last read.
func (r *rig) converge(records []*record, timeout time.Duration) ([]string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last []string
	for clean := 0; clean < 3; {
		s, err := readState(ctx, r.dbs)
		if err != nil {
			last = []string{fmt.Sprintf("reading the databases: %v", err)}
		} else {
			last = checkViolations(s, r.data, records, r.lostTxs(), false)
		}
		// Every decision the ledger held is finished and its row deleted,
		// but those of heuristic hazards, which stay until an operator
		// ends them.
		var lost []string
		for id := range r.lostTxs() {
			lost = append(lost, id.String())
		}
		var rows int
		if err := r.ledger.QueryRowContext(ctx, "SELECT count(*) FROM "+postgres.DefaultDecisionTable+" WHERE txid::text <> ALL($1)", pq.Array(lost)).Scan(&rows); err != nil && postgres.SQLState(err) != "42P01" {
			last = append(last, fmt.Sprintf("reading the ledger's decisions: %v", err))
		} else if rows > 0 {
			last = append(last, fmt.Sprintf("%d decision rows left at the ledger", rows))
		}
		if len(last) == 0 {
			clean++
		} else {
			clean = 0
		}
		select {
		case <-ctx.Done():
			return last, false
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil, true
}

// ask asks the coordinator, straight and not through a link, about the
// transaction of every record that has one, within askTimeout in all.
func (r *rig) ask(records []*record) {
	conn, err := client.DialCoordinators(r.coordAddrs(), dialOptions()...)
	if err != nil {
		r.fail("ask the coordinator: %v", err)
		return
	}
	defer conn.Close()
	tc := client.New(conn)
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	work := make(chan *record)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for rec := range work {
				for attempt := 0; ; attempt++ {
					actx, acancel := context.WithTimeout(ctx, 5*time.Second)
					rec.asked, rec.askErr = tc.Outcome(actx, rec.txid)
					acancel()
					if rec.askErr == nil || attempt == 4 || ctx.Err() != nil {
						break
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
	unasked := 0
	for _, rec := range records {
		if rec.txid.IsZero() {
			continue
		}
		if ctx.Err() != nil {
			rec.askErr = ctx.Err()
			unasked++
			continue
		}
		work <- rec
	}
	close(work)
	wg.Wait()
	if unasked > 0 {
		r.fail("the coordinator was not asked about %d transactions within %v", unasked, askTimeout)
	}
}

// placeAfter places orders once everything is healed, through the links;
// each must commit within afterAttempts attempts. It returns the records
// of every attempt and what went wrong.
func (r *rig) placeAfter(w *workload) ([]*record, []string) {
	var out []*record
	var errs []string
	for i := range afterOrders {
		var last *record
		for n := range afterAttempts {
			o, meant := w.newOrder("after-", i, n, 0)
			last = w.place(o, meant)
			out = append(out, last)
			if last.told == client.Committed {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if last.told != client.Committed {
			errs = append(errs, fmt.Sprintf("order %d did not commit in %d attempts; the last: %s", i, afterAttempts, last.describe()))
		}
	}
	r.ev.logf("after healing: %d orders placed in %d attempts", afterOrders, len(out))
	return out, errs
}

// stopAll stops the services, then the coordinator, gracefully; each must
// exit cleanly.
func (r *rig) stopAll() {
	// A standby first: it is not asked to take over. After failovers
	// either coordinator may be the primary, the one that serves.
	coords := r.coordinators()
	if len(coords) > 1 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if proctest.WaitServing(ctx, r.procs[coords[0]].addr, nil, dialOptions()...) == nil {
			slices.Reverse(coords)
		}
		cancel()
	}
	for _, name := range append(append([]string(nil), services...), coords...) {
		if err := r.procs[name].stop(stopTimeout); err != nil {
			r.fail("stop: %v", err)
		}
	}
}
