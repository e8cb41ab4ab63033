package sdk_test

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	"github.com/txcoord/txcoord/sdk"
)

// The client interceptor carries the transaction in metadata; the SDK's
// server interceptor puts it in the handler's context; a call outside a
// transaction carries none; a forged one is refused.
func TestTransactionTravelsInMetadata(t *testing.T) {
	var got []remote.Tx
	capture := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		tx, ok := remote.FromContext(ctx)
		if ok {
			got = append(got, tx)
		}
		return h(ctx, req)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(sdk.UnaryServerInterceptor(), capture))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), insecureDial, grpc.WithUnaryInterceptor(client.UnaryClientInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	id, _ := ids.NewTxID()
	want := remote.Tx{Prefix: "txc", Coordinator: "c1", ID: id}
	ctx := context.Background()
	if _, err := hc.Check(remote.NewContext(ctx, want), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("handler saw %v, want exactly %v", got, want)
	}
	for _, forged := range []string{"txc.c1.not-a-uuid", "txc.c1", "txc.c'1." + id.String(), ""} {
		_, err := hc.Check(metadata.AppendToOutgoingContext(ctx, remote.MetadataKey, forged), &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("gtrid %q: want InvalidArgument, got %v", forged, err)
		}
	}
	// Branch outside a transaction says so.
	p, err := sdk.New(sdk.Config{Name: "x", Address: "127.0.0.1:1", Coordinator: conn, Resource: nil, InsecureAnyCaller: true})
	if err == nil || p != nil {
		t.Fatal("a participant without a database was accepted")
	}
}
