package order_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/examples/order/internal/shop"
	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/proctest"
	"github.com/txcoord/txcoord/internal/shopdb"
	"github.com/txcoord/txcoord/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const coordinatorID = "shop-e2e"

// kinds are the services, in the order the client calls them.
var kinds = []shop.Kind{shop.Orders, shop.Payment, shop.Inventory}

// TestE2E runs the example as a user would: txcoord and the three
// services as separate processes, each service with its own PostgreSQL
// server, and the client placing concurrent orders, some failing on
// purpose. It kills the payment service right after a PREPARE and txcoord
// right after a COMMIT decision, restarts them, and checks after each step
// that every order is in all three databases or in none, as its client was
// told, that money and stock are conserved, and that nothing stays
// prepared. Every process talks mutual TLS under a policy, with
// certificates made by txctl certs (the README's worked example).
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts txcoord, three services and three PostgreSQL servers")
	}
	start := time.Now()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ORDER_E2E_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("ORDER_E2E_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay the orders with ORDER_E2E_SEED=%d)", seed, seed)
	r := newRig(t, seed)
	t.Logf("set up in %v", time.Since(start).Round(time.Millisecond))

	steps := []struct {
		name string
		run  func(*testing.T)
	}{
		{"orders commit everywhere or nowhere", r.testOrders},
		{"payment killed with its prepared branch reported, before its reply", r.testServiceCrash},
		{"txcoord killed after the commit decision", r.testCoordinatorCrash},
		{"client command", r.testClientCommand},
	}
	for _, s := range steps {
		begin := time.Now()
		if !t.Run(s.name, s.run) {
			t.FailNow()
		}
		t.Logf("%s: %v", s.name, time.Since(begin).Round(time.Millisecond))
	}
	r.stopAll(t)
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// rig is the running example.
type rig struct {
	seed   uint64
	binDir string
	logDir string

	db  map[shop.Kind]*sql.DB
	dsn map[shop.Kind]string

	coordAddr, metricsAddr string
	addr                   map[shop.Kind]string

	coord *proc
	svc   map[shop.Kind]*proc

	// pki holds the certificates made with txctl certs (the README's
	// worked example): every process talks mutual TLS.
	pki  string
	dial []grpc.DialOption // the client's credentials, for health checks
}

const trustDomain = "shop.example"

// spiffeOf is the identity of a process of the example.
func spiffeOf(name string) string {
	if name == "txcoord" {
		return "spiffe://" + trustDomain + "/txcoord/" + coordinatorID
	}
	return "spiffe://" + trustDomain + "/svc/" + name
}

// tlsOf are name's certificate files.
func (r *rig) tlsOf(name string) shop.TLSFiles {
	return shop.TLSFiles{Cert: filepath.Join(r.pki, name+".pem"), Key: filepath.Join(r.pki, name+"-key.pem"), CA: filepath.Join(r.pki, "ca.pem")}
}

// issue makes the CA, a certificate per process and the policy with txctl,
// as the README's worked example does.
func (r *rig) issue(t *testing.T) {
	r.pki = filepath.Join(t.TempDir(), "pki")
	txctl := func(args ...string) {
		t.Helper()
		out, err := exec.Command(filepath.Join(r.binDir, "txctl"), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("txctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	txctl("certs", "ca", "--dir", r.pki)
	for _, name := range []string{"txcoord", "orders", "payment", "inventory", "client"} {
		txctl("certs", "issue", "--dir", r.pki, "--name", name, "--id", spiffeOf(name))
	}
	pol := "trust_domain: " + trustDomain + "\nidentities:\n" +
		"  - {id: " + spiffeOf("txcoord") + ", roles: [coordinator]}\n" +
		"  - {id: " + spiffeOf("client") + ", roles: [client]}\n"
	for _, k := range kinds {
		pol += "  - {id: " + spiffeOf(k.String()) + ", roles: [participant], participant: " + k.String() + "}\n"
	}
	if err := os.WriteFile(filepath.Join(r.pki, "policy.yaml"), []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	f := r.tlsOf("client")
	rl, err := pki.NewReloader(pki.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.dial = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(rl.ClientConfig("", "")))}
}

func newRig(t *testing.T, seed uint64) *rig {
	r := &rig{
		seed: seed, binDir: t.TempDir(), logDir: t.TempDir(),
		db: map[shop.Kind]*sql.DB{}, dsn: map[shop.Kind]string{}, addr: map[shop.Kind]string{},
		svc: map[shop.Kind]*proc{},
	}
	dataDir := t.TempDir()
	var wg sync.WaitGroup
	var buildErr error
	wg.Go(func() { buildErr = r.build() })
	servers := r.startPostgres(t)
	wg.Wait()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, k := range kinds {
		if err := servers[k].CreateDB(ctx, k.String()); err != nil {
			t.Fatal(err)
		}
		r.dsn[k] = servers[k].DSN(k.String())
		db, err := sql.Open("postgres", r.dsn[k])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		r.db[k] = db
	}

	ports := freePorts(t, 5)
	r.coordAddr, r.metricsAddr = ports[0], ports[1]
	for i, k := range kinds {
		r.addr[k] = ports[2+i]
	}
	t.Cleanup(func() {
		if t.Failed() {
			r.dumpLogs(t)
		}
	})

	r.issue(t)
	ct := r.tlsOf("txcoord")
	args := []string{"serve", "--init-log", "--listen", r.coordAddr, "--metrics-listen", r.metricsAddr,
		"--data-dir", dataDir, "--id", coordinatorID,
		"--tls-cert", ct.Cert, "--tls-key", ct.Key, "--tls-client-ca", ct.CA,
		"--participant-tls-cert", ct.Cert, "--participant-tls-key", ct.Key, "--participant-tls-ca", ct.CA,
		"--policy", filepath.Join(r.pki, "policy.yaml"),
		"--tx-timeout", "30s", "--in-doubt-timeout", "3s", "--recovery-interval", "5s",
		"--shutdown-timeout", "10s", "--log-format", "text"}
	for _, k := range kinds {
		args = append(args, "--participant", k.String()+"="+r.addr[k])
	}
	r.coord = r.newProc(t, "txcoord", args...)
	for _, k := range kinds {
		st := r.tlsOf(k.String())
		r.svc[k] = r.newProc(t, k.String(), "--listen", r.addr[k], "--dsn", r.dsn[k],
			"--coordinator", r.coordAddr, "--in-doubt-timeout", "2s", "--check-interval", "500ms",
			"--tls-cert", st.Cert, "--tls-key", st.Key, "--tls-ca", st.CA, "--coordinator-id", spiffeOf("txcoord"))
	}
	if err := r.coord.start(); err != nil {
		t.Fatal(err)
	}
	if err := r.coord.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds {
		if err := r.svc[k].start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range r.services() {
		if err := p.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *rig) services() []*proc {
	out := make([]*proc, 0, len(kinds))
	for _, k := range kinds {
		out = append(out, r.svc[k])
	}
	return out
}

// build builds txcoord, the three services and the client into r.binDir,
// with the race detector if the test runs with it.
func (r *rig) build() error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	args := []string{"build", "-o", r.binDir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/txcoord", "./cmd/txctl", "./examples/order/orders", "./examples/order/payment",
		"./examples/order/inventory", "./examples/order/client")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startPostgres starts one PostgreSQL server per service, in parallel.
func (r *rig) startPostgres(t *testing.T) map[shop.Kind]*pgtest.Server {
	list := pgtest.StartManyT(t, len(kinds), pgtest.Options{NoFsync: true})
	servers := map[shop.Kind]*pgtest.Server{}
	for i, k := range kinds {
		servers[k] = list[i]
	}
	return servers
}

// freePorts returns n distinct free loopback addresses.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var lis []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis = append(lis, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range lis {
		l.Close()
	}
	return out
}

func (r *rig) clientConfig(prefix string, orders, workers int, failRate float64) shop.ClientConfig {
	return shop.ClientConfig{
		Coordinator: r.coordAddr, OrdersAddr: r.addr[shop.Orders], PaymentAddr: r.addr[shop.Payment],
		InventoryAddr: r.addr[shop.Inventory],
		TLS:           r.tlsOf("client"),
		Orders:        orders, Workers: workers, FailRate: failRate, Seed: r.seed, IDPrefix: prefix,
		OrderTimeout: 20 * time.Second, ResolveTimeout: 30 * time.Second,
	}
}

func (r *rig) testOrders(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Scrape the metrics while the orders run, until a scrape shows both
	// commits and aborts.
	scrapeCtx, stopScraping := context.WithCancel(ctx)
	defer stopScraping()
	var scraped map[string]float64
	scraperDone := make(chan struct{})
	go func() {
		defer close(scraperDone)
		for {
			if m, err := r.scrape(scrapeCtx); err == nil && m["committed"] > 0 && m["aborted"] > 0 {
				scraped = m
				return
			}
			select {
			case <-scrapeCtx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	rep, err := shop.PlaceOrders(ctx, r.clientConfig("a-", 60, 6, 0.3))
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	select {
	case <-scraperDone:
	case <-time.After(2 * time.Second):
	}
	stopScraping()
	<-scraperDone
	if scraped == nil {
		t.Errorf("no scrape of http://%s/metrics showed committed and aborted transactions", r.metricsAddr)
	}

	if rep.UnknownAtCommit != 0 {
		t.Errorf("%d orders' outcome was unknown at commit, with every process up", rep.UnknownAtCommit)
	}
	failures := map[shop.Failure]int{}
	for _, res := range rep.Results {
		failures[res.Meant]++
		want := client.Committed
		if res.Meant != shop.NoFailure {
			want = client.Aborted
		}
		if res.Outcome != want {
			t.Errorf("order %s (failure: %v) %v, want %v: %v", res.Order.ID, res.Meant, res.Outcome, want, res.Err)
		} else if res.Outcome == client.Aborted && res.Reason != res.Meant.String() {
			t.Errorf("order %s meant to fail with %v failed with %q: %v", res.Order.ID, res.Meant, res.Reason, res.Err)
		}
	}
	for _, f := range []shop.Failure{shop.FailFunds, shop.FailStock, shop.FailClient} {
		if failures[f] == 0 {
			t.Logf("no order was meant to fail with %v this time", f)
		}
	}
	r.settle(t, "a-", rep.Results, -1)

	m, err := r.scrape(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("metrics: txcoord_transactions_total committed %v, aborted %v, unknown %v", m["committed"], m["aborted"], m["unknown"])
	if int(m["committed"]) != rep.Committed {
		t.Errorf("txcoord_transactions_total{outcome=\"committed\"} is %v; the client saw %d commits", m["committed"], rep.Committed)
	}
	if m["aborted"] == 0 || m["unknown"] != 0 {
		t.Errorf("txcoord_transactions_total: aborted %v, unknown %v; want aborted > 0 and unknown 0", m["aborted"], m["unknown"])
	}
}

func (r *rig) testServiceCrash(t *testing.T) {
	pay := r.svc[shop.Payment]
	if err := pay.stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	r.crashRun(t, pay, failpoint.SDKAfterReport+":5", "b-", func(t *testing.T, rep *shop.Report) {
		if rep.Unknown != 0 {
			t.Errorf("%d orders' outcome still unknown with the coordinator up", rep.Unknown)
		}
	})
}

func (r *rig) testCoordinatorCrash(t *testing.T) {
	if err := r.coord.stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	r.crashRun(t, r.coord, failpoint.CoordAfterDecision+":10", "c-", func(t *testing.T, rep *shop.Report) {
		// The transaction whose COMMIT was logged when txcoord died: its
		// client heard "unknown", and the restarted txcoord said committed.
		learnt := 0
		for _, res := range rep.Results {
			if res.AtCommit == client.Unknown && res.Outcome == client.Committed {
				learnt++
			}
		}
		if learnt == 0 {
			t.Errorf("no order was unknown at commit and committed after the restart (unknown at commit: %d)", rep.UnknownAtCommit)
		}
		if rep.Unknown != 0 {
			t.Errorf("%d orders' outcome still unknown after the restart", rep.Unknown)
		}
	})
}

// crashRun restarts p with crash point spec armed, places orders while
// watching p die and restarting it without the crash point, and checks
// every order. Then a few more orders, none failing on purpose, must all
// commit.
func (r *rig) crashRun(t *testing.T, p *proc, spec, prefix string, check func(*testing.T, *shop.Report)) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.start(failpoint.EnvVar + "=" + spec); err != nil {
		t.Fatal(err)
	}
	if err := p.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := make(chan error, 1)
	quit := make(chan struct{})
	var watch sync.WaitGroup
	defer watch.Wait()
	defer close(quit)
	watch.Go(func() {
		select {
		case <-quit:
			restarted <- fmt.Errorf("%s was not killed at %s", p.name, spec)
			return
		case <-p.exited():
		}
		if !p.killed() {
			restarted <- fmt.Errorf("%s exited without SIGKILL (%v); log:\n%s", p.name, p.exitState(), p.tail(30))
			return
		}
		if err := p.start(); err != nil {
			restarted <- err
			return
		}
		restarted <- p.waitReady(ctx)
	})

	rep, err := shop.PlaceOrders(ctx, r.clientConfig(prefix, 60, 6, 0.2))
	if err != nil {
		t.Fatal(err)
	}
	logReport(t, rep)
	select {
	case err := <-restarted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s was not killed at %s and restarted", p.name, spec)
	}
	t.Logf("%s was killed at %s and restarted", p.name, spec)
	check(t, rep)
	r.settle(t, prefix, rep.Results, -1)

	after, err := shop.PlaceOrders(ctx, r.clientConfig(prefix+"after-", 12, 3, 0))
	if err != nil {
		t.Fatal(err)
	}
	if after.Committed != len(after.Results) {
		for _, res := range after.Results {
			if res.Outcome != client.Committed {
				t.Errorf("after the restart, order %s %v: %v", res.Order.ID, res.Outcome, res.Err)
			}
		}
	}
	r.settle(t, prefix+"after-", after.Results, -1)
}

// testClientCommand runs the client command and checks its summary against
// the databases.
func (r *rig) testClientCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(r.binDir, "client"),
		"--coordinator", r.coordAddr, "--orders-addr", r.addr[shop.Orders], "--payment-addr", r.addr[shop.Payment],
		"--inventory-addr", r.addr[shop.Inventory], "--orders", "20", "--workers", "4", "--fail-rate", "0.25",
		"--seed", strconv.FormatUint(r.seed, 10), "--id-prefix", "d-",
		"--tls-cert", r.tlsOf("client").Cert, "--tls-key", r.tlsOf("client").Key, "--tls-ca", r.tlsOf("client").CA)
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("client:\n%s", out)
	if err != nil {
		t.Fatalf("client: %v\n%s", err, stderr.Bytes())
	}
	counts := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^(committed|aborted|unknown):\s+(\d+)`).FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[2]))
		counts[string(m[1])] = n
	}
	if len(counts) != 3 || counts["committed"]+counts["aborted"] != 20 || counts["unknown"] != 0 {
		t.Fatalf("client summary: %v, want committed + aborted = 20 and unknown 0", counts)
	}
	r.settle(t, "d-", nil, counts["committed"])
}

// stopAll stops every process with SIGTERM; each must exit cleanly, and no
// process may have reported a data race.
func (r *rig) stopAll(t *testing.T) {
	for _, p := range append(r.services(), r.coord) {
		if err := p.stop(15 * time.Second); err != nil {
			t.Error(err)
		}
	}
	for _, p := range append(r.services(), r.coord) {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			t.Error(err)
			continue
		}
		if bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("%s reported a data race; see its log", p.name)
		}
	}
}

func logReport(t *testing.T, rep *shop.Report) {
	t.Helper()
	var b strings.Builder
	rep.Print(&b)
	t.Logf("client report:\n%s", b.String())
}

// read reads the three databases.
func (r *rig) read(ctx context.Context) (*shopdb.State, error) {
	return shopdb.Read(ctx, r.db[shop.Orders], r.db[shop.Payment], r.db[shop.Inventory])
}

// problems lists every way s breaks the example's rules: for the orders
// whose ids start with prefix, each is in all three databases with the
// same figures or in none, as its client was told (results), and their
// number is committed (if not negative) or the number of results that
// committed; for all the data, nothing is prepared and money and stock
// are conserved.
func problems(s *shopdb.State, prefix string, results []shop.Result, committed int) []string {
	var out []string
	for _, k := range kinds {
		if n := len(s.Prepared[k.String()]); n > 0 {
			out = append(out, fmt.Sprintf("%d transactions prepared in the %v database: %v", n, k, s.Prepared[k.String()]))
		}
	}
	if want := int64(shop.NumCustomers * shop.InitialBalance); s.Balances+s.Paid != want {
		out = append(out, fmt.Sprintf("money not conserved: balances %d + payments %d = %d, want %d", s.Balances, s.Paid, s.Balances+s.Paid, want))
	}
	if want := int64(shop.NumItems * shop.InitialStock); s.Stock+s.Reserved != want {
		out = append(out, fmt.Sprintf("stock not conserved: stock %d + reserved %d = %d, want %d", s.Stock, s.Reserved, s.Stock+s.Reserved, want))
	}
	present := 0
	for _, id := range s.IDs() {
		inOrders, inPayments, inReservations := s.Where(id)
		switch {
		case !s.Whole(id):
			out = append(out, fmt.Sprintf("atomicity: order %s is in orders %v, payments %v, reservations %v", id, inOrders, inPayments, inReservations))
		case !s.Agree(id):
			out = append(out, fmt.Sprintf("order %s: order %+v, payment %+v, reservation %+v disagree", id, s.Orders[id], s.Payments[id], s.Reservations[id]))
		}
		if strings.HasPrefix(id, prefix) && inOrders {
			present++
		}
	}
	if results != nil {
		committed = 0
		for _, res := range results {
			_, in := s.Orders[res.Order.ID]
			switch res.Outcome {
			case client.Committed:
				committed++
				if !in {
					out = append(out, fmt.Sprintf("order %s committed (tx %s) but is not in the orders database", res.Order.ID, res.TxID))
				}
			case client.Aborted:
				if in {
					out = append(out, fmt.Sprintf("order %s aborted (tx %s: %v) but is in the orders database", res.Order.ID, res.TxID, res.Err))
				}
			default:
				out = append(out, fmt.Sprintf("order %s (tx %s): outcome %v: %v", res.Order.ID, res.TxID, res.Outcome, res.Err))
			}
		}
	}
	if committed >= 0 && present != committed {
		out = append(out, fmt.Sprintf("%d orders %s* committed, %d are in the databases", committed, prefix, present))
	}
	return out
}

// settle waits until the databases obey the rules (branches in doubt are
// being resolved meanwhile), then checks that they still do a moment
// later.
func (r *rig) settle(t *testing.T, prefix string, results []shop.Result, committed int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	begin := time.Now()
	var last []string
	clean := 0
	for clean < 2 {
		s, err := r.read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = problems(s, prefix, results, committed)
		if len(last) == 0 {
			clean++
		} else {
			clean = 0
		}
		select {
		case <-ctx.Done():
			if len(last) > 10 {
				last = append(last[:10], fmt.Sprintf("... and %d more", len(last)-10))
			}
			t.Fatalf("after %v the databases still break the rules:\n%s", time.Since(begin).Round(time.Millisecond), strings.Join(last, "\n"))
		case <-time.After(250 * time.Millisecond):
		}
	}
	t.Logf("orders %s*: settled in %v", prefix, time.Since(begin).Round(time.Millisecond))
}

// scrape reads txcoord_transactions_total by outcome.
func (r *rig) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// No idle connection (and its goroutines) outlives the scrape.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	re := regexp.MustCompile(`^txcoord_transactions_total\{outcome="(\w+)"\} (\S+)$`)
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			v, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				return nil, fmt.Errorf("metrics line %q: %v", sc.Text(), err)
			}
			out[m[1]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no txcoord_transactions_total in /metrics")
	}
	return out, nil
}

func (r *rig) dumpLogs(t *testing.T) {
	for _, p := range append([]*proc{r.coord}, r.services()...) {
		if p != nil {
			t.Logf("--- last lines of %s's log:\n%s", p.name, p.tail(40))
		}
	}
}

// proc is a child process, started again after each exit with the same
// arguments. It dies with the test: SIGKILL when the test process dies,
// and at the test's cleanup.
type proc struct {
	name    string
	path    string
	args    []string
	addr    string // gRPC address, for readiness
	dial    []grpc.DialOption
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (r *rig) newProc(t *testing.T, name string, args ...string) *proc {
	p := &proc{name: name, path: filepath.Join(r.binDir, name), args: args, dial: r.dial,
		logPath: filepath.Join(r.logDir, name+".log")}
	for i, a := range args {
		if a == "--listen" && i+1 < len(args) {
			p.addr = args[i+1]
		}
	}
	t.Cleanup(p.kill)
	return p
}

// start starts the process with env added to the test's environment.
func (p *proc) start(env ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is running already", p.name)
		}
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== %s: start %s %s\n", time.Now().Format(time.StampMilli), strings.Join(env, " "), strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		fmt.Fprintf(f, "=== %s: %v\n", time.Now().Format(time.StampMilli), cmd.ProcessState)
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

func (p *proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// exited is closed when the current run of the process has exited.
func (p *proc) exited() <-chan struct{} {
	_, done := p.current()
	return done
}

// exitState describes how the last run ended; call it after exited.
func (p *proc) exitState() *os.ProcessState {
	cmd, _ := p.current()
	return cmd.ProcessState
}

// killed reports whether the last run ended by SIGKILL; call it after
// exited.
func (p *proc) killed() bool {
	ws, ok := p.exitState().Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(timeout time.Duration) error {
	cmd, done := p.current()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return fmt.Errorf("%s was not running: %v", p.name, cmd.ProcessState)
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not stop within %v of SIGTERM; log:\n%s", p.name, timeout, p.tail(30))
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("%s ended with %v after SIGTERM; log:\n%s", p.name, cmd.ProcessState, p.tail(30))
	}
	return nil
}

func (p *proc) kill() {
	cmd, done := p.current()
	if done == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// waitReady waits until the process's gRPC health service says SERVING.
func (p *proc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch err := proctest.WaitServing(ctx, p.addr, p.exited(), p.dial...); {
	case errors.Is(err, proctest.ErrExited):
		return fmt.Errorf("%s exited before it was ready (%v); log:\n%s", p.name, p.exitState(), p.tail(30))
	case err != nil:
		return fmt.Errorf("%s not ready at %s: %v; log:\n%s", p.name, p.addr, err, p.tail(30))
	}
	return nil
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string { return proctest.Tail(p.logPath, n) }
