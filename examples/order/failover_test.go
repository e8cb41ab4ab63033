package order_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/txcoord/txcoord/examples/order/internal/shop"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/failpoint"
)

// Two txcoord processes for one coordinator id on etcd, a primary and a
// standby, in front of the example's services (which are given both
// addresses). In each phase the primary is killed with -9 at a crash
// point (all voted yes and COMMIT not yet logged; COMMIT logged and
// phase two not begun; between two COMMIT PREPAREDs) while orders run;
// the standby takes over, and every order ends in all three databases or
// in none, as its client was told, with nothing left prepared.
func TestStandbyTakesOverAtEachCrashPoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts two txcoords, three services, etcd and three PostgreSQL servers")
	}
	r := &rig{
		seed: uint64(time.Now().UnixNano()), binDir: t.TempDir(), logDir: t.TempDir(),
		db: map[shop.Kind]*sql.DB{}, dsn: map[shop.Kind]string{}, addr: map[shop.Kind]string{},
		svc: map[shop.Kind]*proc{},
	}
	var wg sync.WaitGroup
	var buildErr error
	wg.Go(func() { buildErr = r.build() })
	// One member: the peers of a cluster leave HTTP connections in this
	// process after they stop (etcd's own), which the leak check would
	// count; three-member clusters are tested in wal/etcd and
	// internal/failover.
	cluster, err := etcdtest.Start(1)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	servers := r.startPostgres(t)
	wg.Wait()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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
	addrA, addrB := ports[0], ports[1]
	r.coordAddr = addrA + "," + addrB
	for i, k := range kinds {
		r.addr[k] = ports[2+i]
	}
	r.issue(t)
	t.Cleanup(func() {
		if t.Failed() {
			r.dumpLogs(t)
		}
	})
	ct := r.tlsOf("txcoord")
	coordinator := func(name, listen string, extra ...string) *proc {
		args := []string{"serve", "--listen", listen, "--metrics-listen", "off", "--id", coordinatorID,
			"--etcd-endpoints", strings.Join(cluster.Endpoints, ","),
			"--tls-cert", ct.Cert, "--tls-key", ct.Key, "--tls-client-ca", ct.CA,
			"--participant-tls-cert", ct.Cert, "--participant-tls-key", ct.Key, "--participant-tls-ca", ct.CA,
			"--policy", filepath.Join(r.pki, "policy.yaml"),
			"--tx-timeout", "30s", "--in-doubt-timeout", "3s", "--recovery-interval", "2s",
			"--shutdown-timeout", "10s", "--log-format", "text"}
		for _, k := range kinds {
			args = append(args, "--participant", k.String()+"="+r.addr[k])
		}
		p := r.newProc(t, "txcoord", append(args, extra...)...)
		p.name, p.logPath = name, filepath.Join(r.logDir, name+".log")
		return p
	}
	primary := coordinator("txcoord-a", addrA)
	standby := coordinator("txcoord-b", addrB, "--standby")
	r.coord = primary
	for _, k := range kinds {
		st := r.tlsOf(k.String())
		r.svc[k] = r.newProc(t, k.String(), "--listen", r.addr[k], "--dsn", r.dsn[k],
			"--coordinator", r.coordAddr, "--in-doubt-timeout", "2s", "--check-interval", "500ms",
			"--tls-cert", st.Cert, "--tls-key", st.Key, "--tls-ca", st.CA, "--coordinator-id", spiffeOf("txcoord"))
	}

	for i, spec := range []string{failpoint.CoordBeforeDecision + ":5", failpoint.CoordAfterDecision + ":5", failpoint.CoordBetweenCommits + ":5"} {
		prefix := fmt.Sprintf("ha%d-", i)
		if err := primary.start(failpoint.EnvVar + "=" + spec); err != nil {
			t.Fatal(err)
		}
		if err := primary.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
		if err := standby.start(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
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
		}
		began := time.Now()
		rep, err := shop.PlaceOrders(ctx, r.clientConfig(prefix, 40, 4, 0.2))
		if err != nil {
			t.Fatal(err)
		}
		logReport(t, rep)
		select {
		case <-primary.exited():
		case <-time.After(30 * time.Second):
			t.Fatalf("the primary was not killed at %s", spec)
		}
		if !primary.killed() {
			t.Fatalf("the primary exited without SIGKILL (%v); log:\n%s", primary.exitState(), primary.tail(30))
		}
		if err := standby.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
		if rep.Unknown != 0 {
			t.Errorf("%s: %d orders' outcome still unknown after the standby took over", spec, rep.Unknown)
		}
		r.settle(t, prefix, rep.Results, -1)
		t.Logf("%s: primary killed, the standby took over, every order whole or absent as told (%v)", spec, time.Since(began).Round(time.Millisecond))
		// The next phase starts from a clean slate: the standby stops,
		// and the armed process becomes the primary again.
		if err := standby.stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range r.services() {
		if err := p.stop(15 * time.Second); err != nil {
			t.Error(err)
		}
	}
}
