package torture

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/lib/pq"
	"google.golang.org/grpc"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant/postgres"
)

// Environment of a run.
const (
	envDuration = "TORTURE_DURATION"  // how long faults are injected (default 25s)
	envSeed     = "TORTURE_SEED"      // seed of the schedule and the orders (default random)
	envWorkers  = "TORTURE_WORKERS"   // concurrent clients (default 4)
	envKeepLogs = "TORTURE_KEEP_LOGS" // "1": keep the logs of a run that passed
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
	cfg.slots = int(cfg.duration / slotLen)
	return cfg, nil
}

// replay is the command that runs the same schedule and orders again.
func (c config) replay() string {
	cmd := fmt.Sprintf("make torture SEED=%d DURATION=%v", c.seed, c.duration)
	if c.workers != defaultWorkers {
		cmd = fmt.Sprintf("%s=%d %s", envWorkers, c.workers, cmd)
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
		t.Skip("builds and starts txcoord, three services and three PostgreSQL servers")
	}
	cfg, err := configFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d: %v of faults, %d workers (replay: %s)", cfg.seed, cfg.duration, cfg.workers, cfg.replay())
	began := time.Now()
	r := newRig(t)
	setup := time.Since(began)
	t.Logf("set up in %v; logs in %s", setup.Round(time.Millisecond), r.logDir)

	faults := plan(cfg.seed, planConfig{slots: cfg.slots, calm: calmSlots, maxActive: maxActive})
	planned := map[faultKind]int{}
	for _, f := range faults {
		planned[f.kind]++
	}
	t.Logf("schedule: %d faults in %d slots of %v", len(faults), cfg.slots, slotLen)

	w, err := newWorkload(cfg.seed, r.data, r.links[linkName(clientName, coordName)].addr, r.clientAddrs())
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
	h, err := newHostile(r.certs["intruder"], r.links[linkName(clientName, coordName)].addr, r.clientAddrs(), w)
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
	binDir string
	logDir string
	ev     *events
	data   shopData
	certs  map[string]tlsFiles // by process, and the intruder

	pg  map[string]*pgtest.Server // by service
	dbs map[string]*sql.DB        // by service, straight to the server
	// ledger is the coordinator's decision holder, straight to its server.
	ledger *sql.DB
	procs  map[string]*proc // txcoord and the services
	links  map[string]*link
	proxy  *toxiproxy.ApiServer

	coordAddr string
	svcAddr   map[string]string

	mu       sync.Mutex
	injected map[faultKind]int
	// lost holds the transactions a rollbackByHand fault rolled a
	// prepared branch of back, with the gids.
	lost  map[ids.TxID][]string
	armed int      // kills whose restart armed a crash point
	fails []string // harness actions that failed
}

func newRig(t *testing.T) *rig {
	r := &rig{
		binDir: t.TempDir(),
		pg:     map[string]*pgtest.Server{}, dbs: map[string]*sql.DB{}, procs: map[string]*proc{},
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
	wg.Go(func() { buildErr = build(r.binDir) })
	r.startPostgres(t)
	wg.Wait()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := r.pg[ledger].CreateDB(ctx, ledger); err != nil {
		t.Fatal(err)
	}
	r.ledger, err = sql.Open("postgres", r.pg[ledger].DSN(ledger))
	if err != nil {
		t.Fatal(err)
	}
	r.ledger.SetMaxOpenConns(1)
	t.Cleanup(func() { r.ledger.Close() })
	for _, s := range services {
		if err := r.pg[s].CreateDB(ctx, s); err != nil {
			t.Fatal(err)
		}
		db, err := sql.Open("postgres", r.pg[s].DSN(s))
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(2)
		t.Cleanup(func() { db.Close() })
		r.dbs[s] = db
	}

	// The processes' ports stay taken until the proxies have theirs.
	held := holdPorts(t, 1+len(services))
	t.Cleanup(func() {
		for _, l := range held {
			l.Close()
		}
	})
	r.coordAddr = held[0].Addr().String()
	for i, s := range services {
		r.svcAddr[s] = held[1+i].Addr().String()
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
	add(clientName, coordName, r.coordAddr)
	for _, s := range services {
		add(clientName, s, r.svcAddr[s])
		add(s, coordName, r.coordAddr)
		add(coordName, s, r.svcAddr[s])
		add(s, dbName(s), net.JoinHostPort("127.0.0.1", strconv.Itoa(r.pg[s].Port())))
	}
	add(coordName, dbName(ledger), net.JoinHostPort("127.0.0.1", strconv.Itoa(r.pg[ledger].Port())))

	certs, policy, err := issueTLS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r.certs = certs
	ct := certs[coordName]
	args := []string{"serve", "--init-log", "--listen", r.coordAddr, "--metrics-listen", "off",
		"--data-dir", filepath.Join(t.TempDir(), "txcoord"), "--id", coordinatorID,
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
	r.procs[coordName] = r.newProc(coordName, r.coordAddr, args...)
	for _, s := range services {
		dsn := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.links[linkName(s, dbName(s))].addr,
			Path: "/" + s, RawQuery: "sslmode=disable&connect_timeout=5"}
		r.procs[s] = r.newProc(s, r.svcAddr[s], "--listen", r.svcAddr[s],
			"--advertise", r.links[linkName(coordName, s)].addr, "--dsn", dsn.String(),
			"--coordinator", r.links[linkName(s, coordName)].addr,
			"--in-doubt-timeout", "2s", "--check-interval", "500ms", "--stop-timeout", "5s",
			"--tls-cert", certs[s].cert, "--tls-key", certs[s].key, "--tls-ca", certs[s].ca, "--coordinator-id", spiffeOf(coordName))
	}
	t.Cleanup(func() {
		for _, p := range r.procs {
			p.close()
		}
	})
	for _, name := range r.procNames() {
		p := r.procs[name]
		if err := p.start(""); err != nil {
			t.Fatal(err)
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
	return newProc(name, filepath.Join(r.binDir, name), addr, filepath.Join(r.logDir, name+".log"), r.ev, args...)
}

// procNames lists the processes, coordinator first.
func (r *rig) procNames() []string { return append([]string{coordName}, services...) }

// clientAddrs returns where the client reaches each service: through its
// link.
func (r *rig) clientAddrs() map[string]string {
	out := map[string]string{}
	for _, s := range services {
		out[s] = r.links[linkName(clientName, s)].addr
	}
	return out
}

// startPostgres starts one PostgreSQL server per service and the ledger's,
// in parallel.
func (r *rig) startPostgres(t *testing.T) {
	list := pgtest.StartManyT(t, len(databases), pgtest.Options{NoFsync: true})
	for i, s := range databases {
		r.pg[s] = list[i]
	}
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

// runSchedule runs the faults, each target's in order on its own
// goroutine, at the start of their slots counted from began, until ctx
// ends. A fault still on when ctx ends is left for heal.
func (r *rig) runSchedule(ctx context.Context, began time.Time, faults []fault) {
	byTarget := map[string][]fault{}
	var targets []string
	for _, f := range faults {
		if len(byTarget[f.target]) == 0 {
			targets = append(targets, f.target)
		}
		byTarget[f.target] = append(byTarget[f.target], f)
	}
	at := func(slot int) time.Time { return began.Add(time.Duration(slot) * slotLen) }
	var wg sync.WaitGroup
	for _, target := range targets {
		wg.Go(func() {
			for _, f := range byTarget[target] {
				if !sleepUntil(ctx, at(f.start)) {
					return
				}
				r.begin(f)
				if !sleepUntil(ctx, at(f.end)) {
					return
				}
				r.end(ctx, f)
			}
		})
	}
	wg.Wait()
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// begin injects fault f.
func (r *rig) begin(f fault) {
	r.ev.logf("slot %d: %v", f.start, f)
	r.mu.Lock()
	r.injected[f.kind]++
	if f.arm != "" {
		r.armed++
	}
	r.mu.Unlock()
	switch f.kind {
	case killCoordinator, killService:
		r.procs[f.target].kill()
	case killDatabase:
		if err := r.pg[strings.TrimPrefix(f.target, "pg-")].Kill(); err != nil {
			r.fail("kill %s: %v", f.target, err)
		}
	case cutLink:
		r.links[f.target].cutOff()
	case delayLink:
		r.links[f.target].delay(f.latency, f.jitter)
	case blackholeLink:
		r.links[f.target].blackhole(f.dir)
	case rollbackByHand:
		r.rollbackByHand(f)
	}
}

// rollbackByHand rolls back one of the coordinator's prepared branches at
// the database f targets, straight and not through a link.
func (r *rig) rollbackByHand(f fault) {
	db := r.dbs[strings.TrimPrefix(f.target, "pg-")]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var raw string
	err := db.QueryRowContext(ctx, "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'txc.torture.%' ORDER BY random() LIMIT 1").Scan(&raw)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		r.ev.logf("slot %d: nothing prepared at %s to roll back", f.start, f.target)
		return
	case err != nil:
		r.ev.logf("slot %d: %s could not be asked for prepared branches: %v", f.start, f.target, err)
		return
	}
	g, err := ids.ParseGID(raw)
	if err != nil {
		r.fail("a prepared gid at %s does not parse: %q: %v", f.target, raw, err)
		return
	}
	if _, err := db.ExecContext(ctx, "ROLLBACK PREPARED "+ids.QuoteLiteral(raw)); err != nil {
		r.ev.logf("slot %d: ROLLBACK PREPARED %s at %s: %v", f.start, raw, f.target, err)
		return
	}
	r.mu.Lock()
	r.lost[g.TxID] = append(r.lost[g.TxID], raw)
	r.mu.Unlock()
	r.ev.logf("slot %d: rolled back %s at %s by hand", f.start, raw, f.target)
}

// lostTxs returns the transactions a branch of which was rolled back by
// hand.
func (r *rig) lostTxs() map[ids.TxID]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[ids.TxID]bool, len(r.lost))
	for id := range r.lost {
		out[id] = true
	}
	return out
}

// end ends fault f: what was killed starts again, the link heals. If ctx
// ends first, heal finishes the job.
func (r *rig) end(ctx context.Context, f fault) {
	switch f.kind {
	case killCoordinator, killService:
		if err := r.procs[f.target].start(f.arm); err != nil {
			r.fail("restart %s: %v", f.target, err)
		}
		if f.arm != "" {
			r.ev.logf("slot %d: %s restarted, armed with %s", f.end, f.target, f.arm)
		} else {
			r.ev.logf("slot %d: %s restarted", f.end, f.target)
		}
	case killDatabase:
		rctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
		defer cancel()
		if err := r.pg[strings.TrimPrefix(f.target, "pg-")].Restart(rctx); err != nil {
			r.ev.logf("slot %d: restart %s: %v (heal tries again)", f.end, f.target, err)
			return
		}
		r.ev.logf("slot %d: %s restarted", f.end, f.target)
	case cutLink:
		if err := r.links[f.target].restore(ctx); err != nil {
			r.ev.logf("slot %d: %v (heal tries again)", f.end, err)
			return
		}
		r.ev.logf("slot %d: %s restored", f.end, f.target)
	case delayLink, blackholeLink:
		r.links[f.target].clear()
		r.ev.logf("slot %d: %s clear", f.end, f.target)
	}
}

// heal ends every fault: links pass everything, every database server
// runs, every process runs, unarmed.
func (r *rig) heal() {
	ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
	defer cancel()
	for _, name := range links() {
		l := r.links[name]
		l.clear()
		if l.isCut() {
			if err := l.restore(ctx); err != nil {
				r.fail("heal: %v", err)
			} else {
				r.ev.logf("heal: %s restored", name)
			}
		}
	}
	for _, s := range databases {
		for !r.pg[s].Running() {
			err := r.pg[s].Restart(ctx)
			if err == nil {
				r.ev.logf("heal: %s restarted", dbName(s))
				break
			}
			if ctx.Err() != nil {
				r.fail("heal: restart %s: %v", dbName(s), err)
				break
			}
			// Its port may be taken for a moment.
			r.ev.logf("heal: restart %s: %v; trying again", dbName(s), err)
			time.Sleep(time.Second)
		}
	}
	for _, name := range r.procNames() {
		p := r.procs[name]
		r.disarm(p)
		if err := p.start(""); err != nil {
			r.fail("heal: start %s: %v", name, err)
		}
	}
}

// disarm stops a run armed with a crash point it has not reached yet, once
// the run is up (a SIGTERM before its handler is installed would kill it),
// so that it starts again unarmed.
func (r *rig) disarm(p *proc) {
	arm, running := p.armed()
	if !running || arm == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := p.waitReady(ctx); err != nil {
		r.ev.logf("heal: %s, armed with %s, not ready: %v", p.name, arm, err)
	}
	if now, running := p.armed(); !running || now != arm {
		return // it reached its crash point and runs again unarmed
	}
	if err := p.stop(stopTimeout); err != nil {
		r.fail("heal: stop %s, armed with %s: %v", p.name, arm, err)
	}
	r.ev.logf("heal: %s stopped to disarm %s", p.name, arm)
}

func (r *rig) waitReady() {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for _, name := range r.procNames() {
		if err := r.procs[name].waitReady(ctx); err != nil {
			r.fail("after healing: %v", err)
		}
	}
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
	conn, err := grpc.NewClient(r.coordAddr, dialOptions()...)
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
	for _, name := range append(append([]string(nil), services...), coordName) {
		if err := r.procs[name].stop(stopTimeout); err != nil {
			r.fail("stop: %v", err)
		}
	}
}

type summaryInput struct {
	records         []*record
	planned         map[faultKind]int
	setup, recovery time.Duration
	total           time.Duration
	violations      int
	after           []string
}

func (r *rig) summary(cfg config, in summaryInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "torture summary\n")
	fmt.Fprintf(&b, "  seed:          %d (replay: %s)\n", cfg.seed, cfg.replay())
	fmt.Fprintf(&b, "  run:           faults for %v (%d slots of %v), %d workers, race detector %v; set-up %v, recovery %v, total %v\n",
		cfg.duration, cfg.slots, slotLen, cfg.workers, raceEnabled, in.setup.Round(time.Second),
		in.recovery.Round(100*time.Millisecond), in.total.Round(time.Second))

	var told [4]int // by client.Outcome
	asMeant, begun := 0, 0
	var later [4]int
	for _, rec := range in.records {
		if strings.HasPrefix(rec.order.id, "after-") {
			continue
		}
		told[rec.told]++
		if rec.refusedAsMeant() {
			asMeant++
		}
		if !rec.txid.IsZero() {
			begun++
		}
		if rec.told == client.Unknown {
			later[rec.asked]++
		}
	}
	placed := told[client.Committed] + told[client.Aborted] + told[client.Unknown] + told[client.Hazard]
	fmt.Fprintf(&b, "  transactions:  %d placed (%d begun): committed %d, aborted %d (%d as meant: funds, stock or client abort), unknown %d, heuristic hazard %d\n",
		placed, begun, told[client.Committed], told[client.Aborted], asMeant, told[client.Unknown], told[client.Hazard])
	fmt.Fprintf(&b, "  unknown ones:  the coordinator says now: committed %d, aborted %d, heuristic hazard %d, still unknown %d\n",
		later[client.Committed], later[client.Aborted], later[client.Hazard], later[client.Unknown])
	lost := r.lostTxs()
	reported := 0
	for _, rec := range in.records {
		if lost[rec.txid] && rec.hazard(true) {
			reported++
		}
	}
	fmt.Fprintf(&b, "  rolled back by hand: %d transactions lost a prepared branch; %d reported as heuristic hazards (the checker allows a partial order only for those)\n",
		len(lost), reported)

	r.mu.Lock()
	injected := 0
	var kinds []string
	for _, k := range faultKinds {
		injected += r.injected[k]
		kinds = append(kinds, fmt.Sprintf("%v %d", k, r.injected[k]))
	}
	armed := r.armed
	r.mu.Unlock()
	planned := 0
	for _, n := range in.planned {
		planned += n
	}
	fmt.Fprintf(&b, "  faults:        %d injected of %d planned: %s\n", injected, planned, strings.Join(kinds, ", "))

	var fired []string
	nfired := 0
	var exits []string
	for _, name := range r.procNames() {
		crashes, ex := r.procs[name].counts()
		var specs []string
		for spec := range crashes {
			specs = append(specs, spec)
		}
		sort.Strings(specs)
		for _, spec := range specs {
			nfired += crashes[spec]
			what := fmt.Sprintf("%s at %s", name, spec)
			if crashes[spec] > 1 {
				what += fmt.Sprintf(" %d times", crashes[spec])
			}
			fired = append(fired, what)
		}
		if len(ex) > 0 {
			exits = append(exits, fmt.Sprintf("%s %d", name, len(ex)))
		}
	}
	fmt.Fprintf(&b, "  crash points:  %d armed at restarts, %d fired", armed, nfired)
	if len(fired) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(fired, ", "))
	}
	fmt.Fprintln(&b)
	if len(exits) > 0 {
		fmt.Fprintf(&b, "  exits:         processes that exited on their own and were restarted: %s\n", strings.Join(exits, ", "))
	}
	if len(in.after) == 0 {
		fmt.Fprintf(&b, "  after healing: %d orders committed\n", afterOrders)
	} else {
		fmt.Fprintf(&b, "  after healing: %d of %d orders could not commit\n", len(in.after), afterOrders)
	}
	fmt.Fprintf(&b, "  violations:    %d", in.violations)
	return b.String()
}

// writeRecords writes every order, its transaction, what its client was
// told and what the coordinator says now, to records.log.
func (r *rig) writeRecords(records []*record) {
	var b strings.Builder
	for _, rec := range records {
		fmt.Fprintf(&b, "%s\ttx %s\tmeant %v\ttold %v\tasked %v\t%v\n", rec.order.id, rec.txid, rec.meant, rec.told, rec.asked, rec.err)
	}
	if err := os.WriteFile(filepath.Join(r.logDir, "records.log"), []byte(b.String()), 0o644); err != nil {
		r.fail("write records: %v", err)
	}
}

// dump shows what a failed run needs to be understood.
func (r *rig) dump(t *testing.T) {
	t.Logf("--- timeline (%s):\n%s", r.ev.path, r.ev.tail(300))
	for _, name := range r.procNames() {
		t.Logf("--- last lines of %s's log:\n%s", name, r.procs[name].tail(40))
	}
	for _, s := range databases {
		t.Logf("--- last lines of %s's log:\n%s", dbName(s), r.pg[s].LogTail(20))
	}
}
