// Package failover kills a primary coordinator (txcoord serve on etcd)
// with SIGKILL while transactions are in doubt, and measures how long its
// standby takes to finish every one of them.
package failover

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	_ "github.com/lib/pq"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/proctest"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/wal"
	etcdwal "github.com/txcoord/txcoord/wal/etcd"
)

const (
	coordID = "fo-1"
	// inDoubt is how many transactions are in doubt when the primary
	// dies: half of them logged COMMIT, half never decided.
	inDoubt = 1000
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func build(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "txcoord")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/txcoord")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return bin
}

// The primary is killed with -9 while 1,000 transactions are in doubt at
// two PostgreSQL databases (500 with a COMMIT in the etcd log, 500 never
// decided): the standby becomes the primary once the lease ends and
// finishes every one, the logged ones committed at both databases and the
// others rolled back at both. The time from the kill to the last branch
// finished is the failover figure.
func TestStandbyFinishesWhatTheKilledPrimaryLeftInDoubt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds txcoord and starts etcd and PostgreSQL")
	}
	ctx := context.Background()
	var bin string
	var wg sync.WaitGroup
	wg.Go(func() { bin = build(t) })
	cluster, err := etcdtest.Start(3)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	servers := pgtest.StartManyT(t, 2, pgtest.Options{NoFsync: true, MaxPreparedTransactions: inDoubt + 100, MaxConnections: 200})
	names := []string{"a", "b"}
	dbs := map[string]*sql.DB{}
	dsns := map[string]string{}
	for i, n := range names {
		if err := servers[i].CreateDB(ctx, n); err != nil {
			t.Fatal(err)
		}
		dsns[n] = servers[i].DSN(n)
		db, err := sql.Open("postgres", dsns[n])
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(16)
		defer db.Close()
		if _, err := db.ExecContext(ctx, "CREATE TABLE done (txid text PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		dbs[n] = db
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	logDir := t.TempDir()
	start := func(name, listen string, extra ...string) *exec.Cmd {
		args := []string{"serve", "--id", coordID, "--listen", listen, "--metrics-listen", "off",
			"--etcd-endpoints", strings.Join(cluster.Endpoints, ","),
			"--resource", "a=" + dsns["a"], "--resource", "b=" + dsns["b"], "--log-format", "text"}
		cmd := exec.Command(bin, append(args, extra...)...)
		f, err := os.Create(filepath.Join(logDir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); f.Close() })
		return cmd
	}
	addrA, addrB := freeAddr(t), freeAddr(t)
	// The primary resolves nothing by itself: what it leaves is the
	// standby's to finish.
	primary := start("primary", addrA, "--startup-recovery=false", "--recovery-interval", "-1s")
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := proctest.WaitServing(wctx, addrA, nil); err != nil {
		t.Fatalf("the primary: %v\n%s", err, proctest.Tail(filepath.Join(logDir, "primary.log"), 20))
	}
	start("standby", addrB, "--standby", "--in-doubt-timeout", "1m")

	// In doubt: a branch prepared at each database, and for half of them
	// the COMMIT logged on etcd.
	type tx struct {
		id   ids.TxID
		gids map[string]ids.GID
	}
	txs := make([]tx, inDoubt)
	for i := range txs {
		id, err := ids.NewTxID()
		if err != nil {
			t.Fatal(err)
		}
		txs[i] = tx{id: id, gids: map[string]ids.GID{}}
		for _, n := range names {
			if txs[i].gids[n], err = ids.NewGID(ids.DefaultPrefix, coordID, id, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	var pw sync.WaitGroup
	errs := make(chan error, len(names)*8)
	for _, n := range names {
		for w := range 8 {
			pw.Go(func() {
				for i := w; i < len(txs); i += 8 {
					g := txs[i].gids[n]
					q := fmt.Sprintf("BEGIN; INSERT INTO done VALUES ('%s'); PREPARE TRANSACTION %s", txs[i].id, ids.QuoteLiteral(g.String()))
					if _, err := dbs[n].ExecContext(ctx, q); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	pw.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// The primary's own log, written here as the primary would have.
	l, err := etcdwal.Open(ctx, cli, etcdwal.Options{Prefix: "/txcoord/" + ids.DefaultPrefix + "." + coordID + "/log/"})
	if err != nil {
		t.Fatal(err)
	}
	var aw sync.WaitGroup
	for i := 0; i < len(txs); i += 2 {
		aw.Go(func() {
			r := wal.Record{Kind: wal.KindCommit, TxID: txs[i].id}
			for _, n := range names {
				r.Branches = append(r.Branches, wal.Branch{Resource: n, GID: txs[i].gids[n]})
			}
			if _, err := l.Append(ctx, r); err != nil {
				t.Error(err)
			}
		})
	}
	aw.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		return
	}

	killed := time.Now()
	if err := primary.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	prepared := func() int {
		n := 0
		for _, name := range names {
			var k int
			if err := dbs[name].QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'txc.fo-1.%'").Scan(&k); err != nil {
				t.Fatal(err)
			}
			n += k
		}
		return n
	}
	var served time.Duration
	servedCh := make(chan time.Duration, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if proctest.WaitServing(sctx, addrB, nil) == nil {
			servedCh <- time.Since(killed)
		}
		close(servedCh)
	}()
	deadline := killed.Add(2 * time.Minute)
	for prepared() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d branches still prepared 2 minutes after the primary was killed; standby log:\n%s", prepared(), proctest.Tail(filepath.Join(logDir, "standby.log"), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	finished := time.Since(killed)
	served = <-servedCh
	for _, name := range names {
		var k int
		if err := dbs[name].QueryRowContext(ctx, "SELECT count(*) FROM done").Scan(&k); err != nil {
			t.Fatal(err)
		}
		if k != inDoubt/2 {
			t.Fatalf("%s: %d transactions committed, want the %d logged", name, k, inDoubt/2)
		}
		for i := 0; i < len(txs); i += 2 {
			var got string
			if err := dbs[name].QueryRowContext(ctx, "SELECT txid FROM done WHERE txid = $1", txs[i].id.String()).Scan(&got); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					t.Fatalf("%s: logged commit %s was not committed", name, txs[i].id)
				}
				t.Fatal(err)
			}
		}
	}
	t.Logf("failover: primary killed with -9 while %d transactions were in doubt at 2 databases (etcd: 3 members, the default lease); "+
		"the standby served %v later and had finished all %d (%d committed at both, %d rolled back at both) %v after the kill",
		inDoubt, served.Round(time.Millisecond), inDoubt, inDoubt/2, inDoubt/2, finished.Round(time.Millisecond))
}

// A primary cut off from etcd while it runs (every etcd link a blackhole)
// cannot decide: a commit it is asked for then is answered without
// "committed", it stops serving once its lease ends, and the standby takes
// over and presumes that transaction aborted. Brought back, the old primary
// refuses to start as a second primary and waits with --standby.
func TestPartitionedPrimaryCannotDecide(t *testing.T) {
	if testing.Short() {
		t.Skip("builds txcoord and starts etcd")
	}
	ctx := context.Background()
	bin := build(t)
	cluster, err := etcdtest.Start(3)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	toxi := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	var proxies []*toxiproxy.Proxy
	var viaProxy []string
	for i, ep := range cluster.Endpoints {
		p := toxiproxy.NewProxy(toxi, fmt.Sprintf("etcd%d", i), "127.0.0.1:0", strings.TrimPrefix(ep, "http://"))
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		proxies = append(proxies, p)
		viaProxy = append(viaProxy, "http://"+p.Listen)
	}
	logDir := t.TempDir()
	start := func(name, listen string, endpoints []string, extra ...string) (*exec.Cmd, chan error) {
		args := []string{"serve", "--id", "part-1", "--listen", listen, "--metrics-listen", "off",
			"--etcd-endpoints", strings.Join(endpoints, ","), "--log-format", "text"}
		cmd := exec.Command(bin, append(args, extra...)...)
		f, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); f.Close() }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited; exited <- nil })
		return cmd, exited
	}
	addrA, addrB := freeAddr(t), freeAddr(t)
	_, exitedA := start("primary", addrA, viaProxy)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := proctest.WaitServing(wctx, addrA, nil); err != nil {
		t.Fatalf("the primary: %v\n%s", err, proctest.Tail(filepath.Join(logDir, "primary.log"), 20))
	}
	start("standby", addrB, cluster.Endpoints, "--standby")

	connA, err := grpc.NewClient(addrA, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer connA.Close()
	apiA := txcoordv1.NewCoordinatorClient(connA)
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	b, err := apiA.Begin(cctx, &txcoordv1.BeginRequest{LogDecision: true})
	if err != nil {
		t.Fatal(err)
	}
	// A participant's branch joins: its COMMIT needs a decision record.
	if _, err := apiA.RegisterBranch(cctx, &txcoordv1.RegisterBranchRequest{Txid: b.GetTxid(), Gid: b.GetGtrid() + ".pay-1", Participant: "pay", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	// The partition: every link from the primary to etcd a blackhole.
	for _, p := range proxies {
		for _, stream := range []string{"upstream", "downstream"} {
			js := fmt.Sprintf(`{"name":"hole-%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, stream, stream)
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cut := time.Now()
	resp, err := apiA.Commit(cctx, &txcoordv1.CommitRequest{Txid: b.GetTxid()})
	if err == nil && resp.GetOutcome() == txcoordv1.Outcome_OUTCOME_COMMITTED {
		t.Fatalf("a primary cut off from etcd answered committed: %v", resp)
	}
	t.Logf("the cut-off primary answered the commit with %v %v", resp.GetOutcome(), err)
	select {
	case err := <-exitedA:
		exitedA <- err
		if err == nil {
			t.Fatal("the cut-off primary exited cleanly; want an error exit")
		}
		t.Logf("the cut-off primary stopped %v after the cut: %v", time.Since(cut).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the cut-off primary still runs 30s after the cut:\n%s", proctest.Tail(filepath.Join(logDir, "primary.log"), 20))
	}
	if log := proctest.Tail(filepath.Join(logDir, "primary.log"), 50); !strings.Contains(log, "lost the primary's lease") {
		t.Fatalf("the primary's log does not say it lost its lease:\n%s", log)
	}
	if err := proctest.WaitServing(wctx, addrB, nil); err != nil {
		t.Fatalf("the standby: %v\n%s", err, proctest.Tail(filepath.Join(logDir, "standby.log"), 20))
	}
	connB, err := grpc.NewClient(addrB, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer connB.Close()
	out, err := txcoordv1.NewCoordinatorClient(connB).GetOutcome(cctx, &txcoordv1.GetOutcomeRequest{Txid: b.GetTxid()})
	if err != nil || out.GetState() != txcoordv1.TxState_TX_STATE_ABORTED {
		t.Fatalf("the new primary's outcome of the transaction the old one could not decide: %v %v, want aborted", out, err)
	}
	// The old primary comes back, links healed.
	for _, p := range proxies {
		p.Toxics.ResetToxics(ctx)
	}
	_, again := start("primary-again", freeAddr(t), viaProxy)
	select {
	case err := <-again:
		again <- err
		if log := proctest.Tail(filepath.Join(logDir, "primary-again.log"), 5); err == nil || !strings.Contains(log, "--standby") {
			t.Fatalf("a second primary for the id: %v\n%s", err, log)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old primary, back, neither refused nor served")
	}
}
