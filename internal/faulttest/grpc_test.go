package faulttest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/authz"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/participant/postgres"
	"github.com/txcoord/txcoord/sdk"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

// The reply to the client's Commit is cut on its way back: the client is
// told the outcome is unknown, never aborted, and asking again says
// committed, which both databases agree with.
func TestDecisionReplyLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx := context.Background()
	dial := grpc.WithTransportCredentials(insecure.NewCredentials())
	pg := pgtest.StartT(t, pgtest.Options{})
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	c, err := coordinator.New(ctx, coordinator.Config{ID: "reply", Log: log, RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := server.New(server.Config{Coordinator: c, DialOptions: []grpc.DialOption{dial}, Authorizer: authz.Insecure()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Fixed flow-control windows turn off gRPC's bandwidth probes (PINGs
	// answered on the connection): the cut below must meet the Commit's
	// reply, not a PING answer that would close the connection before the
	// Commit is even sent.
	window := []grpc.ServerOption{grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20)}
	gs := grpc.NewServer(window...)
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	toxi := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	proxy := toxiproxy.NewProxy(toxi, "client-coord", "127.0.0.1:0", lis.Addr().String())
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	defer proxy.Stop()

	coordConn, err := grpc.NewClient(lis.Addr().String(), dial)
	if err != nil {
		t.Fatal(err)
	}
	defer coordConn.Close()
	var parts []*sdk.Participant
	var dbs []*sql.DB
	for _, name := range []string{"bank_a", "bank_b"} {
		if err := pg.CreateDB(ctx, name); err != nil {
			t.Fatal(err)
		}
		res, err := postgres.Open(ctx, name, "postgres", pg.DSN(name), postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer res.Close()
		if _, err := res.DB().Exec(`CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); INSERT INTO accounts VALUES (1, 1000)`); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p, err := sdk.New(sdk.Config{Name: name, Address: l.Addr().String(), Coordinator: coordConn, Resource: res, InsecureAnyCaller: true})
		if err != nil {
			t.Fatal(err)
		}
		ps := grpc.NewServer()
		p.Register(ps)
		go func() { _ = ps.Serve(l) }()
		defer ps.Stop()
		parts, dbs = append(parts, p), append(dbs, res.DB())
	}

	clientConn, err := grpc.NewClient(proxy.Listen, dial, grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer clientConn.Close()
	cl := client.New(clientConn)
	tx, err := cl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, delta := range []int{-10, 10} {
		err := parts[i].Branch(tx.Context(ctx), func(ctx context.Context, b *postgres.Branch) error {
			_, err := b.ExecContext(ctx, "UPDATE accounts SET balance = balance + $1 WHERE id = 1", delta)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"cut","type":"limit_data","stream":"downstream","attributes":{"bytes":0}}`)); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = tx.Commit(cctx)
	cancel()
	if o := client.OutcomeOf(err); o != client.Unknown {
		t.Fatalf("the reply was cut, yet the client was told %v (%v)", o, err)
	}
	proxy.Toxics.ResetToxics(ctx)
	var outcome client.Outcome
	deadline := time.Now().Add(30 * time.Second)
	for {
		outcome, err = cl.Outcome(ctx, tx.ID())
		if err == nil && outcome != client.Unknown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no outcome 30s later: %v %v", outcome, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if outcome != client.Committed {
		t.Fatalf("asked again: %v", outcome)
	}
	// Committed means decided: phase two may still be finishing.
	deadline = time.Now().Add(30 * time.Second)
	for i, want := range []int{990, 1010} {
		for {
			var b int
			err := dbs[i].QueryRow("SELECT balance FROM accounts WHERE id = 1").Scan(&b)
			if err == nil && b == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: balance %d (%v), want %d", fmt.Sprint(i), b, err, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
