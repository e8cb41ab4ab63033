package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/txcoord/txcoord/authz"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/ids"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

// FuzzRequestValidation sends arbitrary fields to the calls that take
// identifiers from outside: nothing panics, a refusal has a defined code,
// and a branch is registered only under a valid gid of the live
// transaction.
func FuzzRequestValidation(f *testing.F) {
	c, err := coordinator.New(context.Background(), coordinator.Config{ID: "c1", Log: wal.NewMem(), RecoveryInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	srv, err := server.New(server.Config{Coordinator: c, Authorizer: authz.Insecure()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	ctx := context.Background()
	b, err := srv.Begin(ctx, &txcoordv1.BeginRequest{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b.Txid, b.Gtrid+".pay-1", "pay", "127.0.0.1:1")
	f.Add(b.Txid, b.Gtrid+".x'; DROP TABLE t; --", "pay", "127.0.0.1:1")
	f.Add("not-a-txid", "txc.c1.zz.b", "p a y", "nowhere")
	f.Add(b.Txid, "txc.c2."+b.Txid+".b", "pay", "[::1]:9")
	f.Add("", "", "", "")
	allowed := map[codes.Code]bool{codes.OK: true, codes.InvalidArgument: true, codes.NotFound: true, codes.AlreadyExists: true, codes.FailedPrecondition: true}
	f.Fuzz(func(t *testing.T, txid, gid, name, addr string) {
		_, err := srv.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: txid, Gid: gid, Participant: name, Address: addr})
		if !allowed[status.Code(err)] {
			t.Fatalf("RegisterBranch(%q, %q, %q, %q): %v", txid, gid, name, addr, err)
		}
		if err == nil {
			g, perr := ids.ParseGID(gid)
			if perr != nil || g.TxID.String() != b.Txid || strings.ContainsAny(gid, "'\"\\; ") {
				t.Fatalf("registered an invalid gid %q", gid)
			}
		}
		_, err = srv.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: txid, Gid: gid, Participant: name, Address: addr})
		if c := status.Code(err); c != codes.OK && c != codes.InvalidArgument && c != codes.FailedPrecondition {
			t.Fatalf("GetOutcome(%q, %q): %v", txid, gid, err)
		}
		_, err = srv.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: txid, Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: name})
		if c := status.Code(err); c == codes.Unknown || c == codes.Internal {
			t.Fatalf("Resolve(%q): %v", txid, err)
		}
	})
}
