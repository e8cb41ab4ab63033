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

	_ "github.com/lib/pq"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/proctest"
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
