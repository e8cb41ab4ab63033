package server_test

import (
	"context"
	"net"
	"testing"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/internal/testpki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// serveWith serves a coordinator with the admin policy and transport
// credentials given, and returns a dialer for it.
func serveWith(t *testing.T, p server.AdminPolicy, creds credentials.TransportCredentials) string {
	t.Helper()
	c, err := coordinator.New(context.Background(), coordinator.Config{ID: "c1", Log: wal.NewMem(), RecoveryInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Coordinator: c})
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(p.UnaryInterceptor())}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	gs := grpc.NewServer(opts...)
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); c.Close(); srv.Close() })
	return lis.Addr().String()
}

func call(t *testing.T, addr string, creds credentials.TransportCredentials, token string) (admin, plain error) {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := txcoordv1.NewCoordinatorClient(conn)
	ctx := context.Background()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	_, admin = api.Recover(ctx, &txcoordv1.RecoverRequest{})
	_, plain = api.Begin(ctx, &txcoordv1.BeginRequest{})
	return admin, plain
}

func TestAdminCallsNeedAnAuthorisedIdentity(t *testing.T) {
	const token = "0123456789abcdef-admin"
	addr := serveWith(t, server.AdminPolicy{Tokens: []string{token}}, nil)
	admin, plain := call(t, addr, nil, "")
	if status.Code(admin) != codes.Unauthenticated || plain != nil {
		t.Fatalf("no token: admin %v, begin %v", admin, plain)
	}
	if admin, _ := call(t, addr, nil, "0123456789abcdef-guess"); status.Code(admin) != codes.PermissionDenied {
		t.Fatalf("wrong token: %v", admin)
	}
	if admin, _ := call(t, addr, nil, token); admin != nil {
		t.Fatalf("admin token refused: %v", admin)
	}

	// Nothing configured and no loopback exception: nobody.
	closed := serveWith(t, server.AdminPolicy{}, nil)
	if admin, _ := call(t, closed, nil, ""); status.Code(admin) != codes.Unauthenticated {
		t.Fatalf("no policy: %v", admin)
	}
	// Nothing configured, loopback allowed: a local operator.
	local := serveWith(t, server.AdminPolicy{AllowLoopback: true}, nil)
	if admin, _ := call(t, local, nil, ""); admin != nil {
		t.Fatalf("loopback operator refused: %v", admin)
	}
}

func TestAdminByClientCertificate(t *testing.T) {
	ca := testpki.New(t)
	sc, sk := ca.Server("server")
	ac, ak := ca.Client("ops-alice")
	uc, uk := ca.Client("orders-service")
	addr := serveWith(t, server.AdminPolicy{CommonNames: []string{"ops-alice"}, AllowLoopback: true}, credentials.NewTLS(ca.ServerConfig(sc, sk, true)))
	if admin, plain := call(t, addr, credentials.NewTLS(ca.ClientConfig(ac, ak)), ""); admin != nil || plain != nil {
		t.Fatalf("admin certificate: %v %v", admin, plain)
	}
	admin, plain := call(t, addr, credentials.NewTLS(ca.ClientConfig(uc, uk)), "")
	if status.Code(admin) != codes.PermissionDenied || plain != nil {
		t.Fatalf("a service's certificate making an admin call: %v (begin %v)", admin, plain)
	}
}
