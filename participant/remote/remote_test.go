package remote_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stub answers every call with err, and ListPrepared with raws.
type stub struct {
	txcoordv1.UnimplementedParticipantServer
	err  error
	raws []string
}

func (s *stub) Commit(context.Context, *txcoordv1.CommitBranchRequest) (*txcoordv1.CommitBranchResponse, error) {
	return &txcoordv1.CommitBranchResponse{}, s.err
}

func (s *stub) Rollback(context.Context, *txcoordv1.RollbackBranchRequest) (*txcoordv1.RollbackBranchResponse, error) {
	return &txcoordv1.RollbackBranchResponse{}, s.err
}

func (s *stub) ListPrepared(context.Context, *txcoordv1.ListPreparedRequest) (*txcoordv1.ListPreparedResponse, error) {
	resp := &txcoordv1.ListPreparedResponse{}
	for _, r := range s.raws {
		resp.Branches = append(resp.Branches, &txcoordv1.PreparedBranch{Raw: r})
	}
	return resp, s.err
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func serve(t *testing.T, s *stub) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	txcoordv1.RegisterParticipantServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func TestStatusesMapToParticipantErrors(t *testing.T) {
	s := &stub{}
	r, err := remote.New("pay", serve(t, s), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id, _ := ids.NewTxID()
	g, _ := ids.NewGID("txc", "c1", id, "pay-1")
	ctx := context.Background()
	cases := []struct {
		code    codes.Code
		want    error // nil: must not be any of the sentinels below
		unknown bool
	}{
		{codes.OK, nil, false},
		{codes.NotFound, participant.ErrUnknownBranch, false},
		{codes.Aborted, participant.ErrBusy, false},
		{codes.InvalidArgument, ids.ErrBadGID, false},
		{codes.Unavailable, nil, false},
		{codes.DeadlineExceeded, participant.ErrOutcomeUnknown, true},
		{codes.Unknown, participant.ErrOutcomeUnknown, true},
		{codes.Internal, participant.ErrOutcomeUnknown, true},
	}
	for _, c := range cases {
		s.err = nil
		if c.code != codes.OK {
			s.err = status.Error(c.code, "from the stub")
		}
		err := r.Commit(ctx, g)
		if c.code == codes.OK {
			if err != nil {
				t.Fatalf("OK: %v", err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("%v: no error", c.code)
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%v: %v is not %v", c.code, err, c.want)
		}
		if got := errors.Is(err, participant.ErrOutcomeUnknown); got != c.unknown {
			t.Errorf("%v: outcome unknown = %v, want %v", c.code, got, c.unknown)
		}
	}
}

// A participant that answers with identifiers that are not gids: they are
// listed as foreign (zero GID), never parsed into something of ours.
func TestGarbageFromParticipantIsForeign(t *testing.T) {
	id, _ := ids.NewTxID()
	good := "txc.c1." + id.String() + ".pay-1"
	s := &stub{raws: []string{"junk", "txc.c1.zz.b", "txc.c1." + id.String() + ".pay'1", "", good}}
	r, err := remote.New("pay", serve(t, s), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	list, err := r.Prepared(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ours := 0
	for _, p := range list {
		if !p.GID.IsZero() {
			ours++
			if p.Raw != good {
				t.Fatalf("%q parsed as ours", p.Raw)
			}
		}
	}
	if ours != 1 || len(list) != len(s.raws) {
		t.Fatalf("got %+v", list)
	}
	if _, err := r.Begin(context.Background(), ids.GID{}); !errors.Is(err, remote.ErrNoBegin) {
		t.Fatalf("begin: %v", err)
	}
	for _, bad := range []string{"", "noport", "a b:1", "http://x:1"} {
		if err := r.SetAddress(bad); err == nil {
			t.Errorf("address %q accepted", bad)
		}
	}
	if _, err := remote.New("bad name", "127.0.0.1:1"); err == nil {
		t.Error("a bad participant name was accepted")
	}
	if _, err := remote.ParseGTRID("txc.c1." + id.String()); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"txc.c1", "txc.c1." + id.String() + ".b", "txc..x", "t'x.c1." + id.String()} {
		if _, err := remote.ParseGTRID(bad); !errors.Is(err, ids.ErrBadGID) {
			t.Errorf("gtrid %q: %v", bad, err)
		}
	}
}

func TestInstanceMetadataRoundTripsAndRefusesGarbage(t *testing.T) {
	owner, logID, epoch, err := remote.ParseInstance(remote.FormatInstance("txc.c1", "3f2a", 7))
	if err != nil || owner != "txc.c1" || logID != "3f2a" || epoch != 7 {
		t.Fatalf("round trip: %q %q %d %v", owner, logID, epoch, err)
	}
	for _, bad := range []string{"", "txc.c1 3f2a", "txc.c1 3f2a 7 8", "txc.c1 3f2a x", "txc.c1 3f2a -1", "txc.c1 3f2a 12abc"} {
		if _, _, _, err := remote.ParseInstance(bad); err == nil {
			t.Errorf("ParseInstance(%q) accepted", bad)
		}
	}
}
