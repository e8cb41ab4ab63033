package shop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/txcoord/txcoord/internal/pgtest"
	"github.com/txcoord/txcoord/internal/proctest"
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

func quietConfig(t *testing.T, dsn string) ServiceConfig {
	return ServiceConfig{
		Kind: Payment, Name: "payment", Listen: freeAddr(t), DSN: dsn,
		Coordinator: freeAddr(t), // nothing there: the service does not need it to start
		StopTimeout: time.Second, DBWait: time.Minute,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// A service started while its database server is down waits for the server
// and serves once it is up.
func TestServiceWaitsForItsDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	srv := pgtest.StartT(t, pgtest.Options{NoFsync: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.CreateDB(ctx, "payment"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	cfg := quietConfig(t, srv.DSN("payment"))
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- Serve(sctx, cfg) }()

	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-served:
		t.Fatalf("Serve returned while its database was down: %v", err)
	default:
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := proctest.WaitServing(wctx, cfg.Listen, nil); err != nil {
		stop()
		t.Fatalf("service not serving after its database came up: %v (Serve: %v)", err, <-served)
	}
	stop()
	if err := <-served; err != nil {
		t.Fatalf("Serve after a graceful stop: %v", err)
	}
}

// The wait is bounded, and an error that waiting cannot cure fails at once.
func TestServiceDatabaseErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfg := quietConfig(t, "postgres://postgres@"+freeAddr(t)+"/payment?sslmode=disable&connect_timeout=2")
	cfg.DBWait = 300 * time.Millisecond
	began := time.Now()
	err := Serve(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "--db-wait") {
		t.Fatalf("Serve with no server = %v, want an error naming --db-wait", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("Serve waited %v for a --db-wait of %v", d, cfg.DBWait)
	}

	srv := pgtest.StartT(t, pgtest.Options{NoFsync: true})
	cfg = quietConfig(t, srv.DSN("no_such_database"))
	began = time.Now()
	err = Serve(ctx, cfg)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Serve on a missing database = %v, want its error", err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("a missing database was waited for (%v): it cannot appear by waiting", d)
	}
	if !strings.Contains(err.Error(), "no_such_database") {
		t.Errorf("the error does not name the database: %v", err)
	}
}
