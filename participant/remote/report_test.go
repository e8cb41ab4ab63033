package remote_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// answering is an invoker that records the call's outgoing metadata and
// answers with trailer, if the call asks for its trailer.
func answering(trailer metadata.MD, sent *metadata.MD, asked *bool) grpc.UnaryInvoker {
	return func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		*sent, _ = metadata.FromOutgoingContext(ctx)
		for _, o := range opts {
			if t, ok := o.(grpc.TrailerCallOption); ok {
				*asked = true
				*t.TrailerAddr = trailer
			}
		}
		return nil
	}
}

func reportedTx(t *testing.T) remote.Tx {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	tx, err := remote.ParseGTRID("tx.c1." + id.String())
	if err != nil {
		t.Fatal(err)
	}
	tx.Report = remote.FormatInstance("tx.c1", "log1", 3)
	return tx
}

func trailerOf(t *testing.T, bs ...*txcoordv1.ReportedBranch) metadata.MD {
	t.Helper()
	md := metadata.MD{}
	for _, b := range bs {
		one, err := remote.ReportBranch(b)
		if err != nil {
			t.Fatal(err)
		}
		md = metadata.Join(md, one)
	}
	return md
}

// Only the client that began a transaction, which has its Reports, asks
// for reported branches: a service passing the transaction on (it has the
// instance, from its caller, but no Reports) leaves the next service to
// register its branch.
func TestOnlyTheCollectingClientAsksForReports(t *testing.T) {
	tx := reportedTx(t)
	icpt := remote.UnaryClientInterceptor()
	var sent metadata.MD
	var asked bool
	if err := icpt(remote.NewContext(context.Background(), tx), "/m", nil, nil, nil, answering(nil, &sent, &asked)); err != nil {
		t.Fatal(err)
	}
	if asked || len(sent.Get(remote.ReportMetadataKey)) != 0 || len(sent.Get(remote.MetadataKey)) != 1 {
		t.Fatalf("a transaction passed on asked for reports (%v, %v)", asked, sent)
	}

	tx.Reports = &remote.Reports{}
	gid, _ := tx.GID("pay-1")
	b := &txcoordv1.ReportedBranch{Participant: "pay", Gid: gid.String(), Instance: &txcoordv1.Instance{Owner: "tx.c1", LogId: "log1", Epoch: 3}}
	if err := icpt(remote.NewContext(context.Background(), tx), "/m", nil, nil, nil, answering(trailerOf(t, b), &sent, &asked)); err != nil {
		t.Fatal(err)
	}
	if !asked || len(sent.Get(remote.ReportMetadataKey)) != 1 || sent.Get(remote.ReportMetadataKey)[0] != tx.Report+" /m" {
		t.Fatalf("the client did not ask for reports of its call (%v, %v)", asked, sent)
	}

	// A service reading the call finds the instance, the method and no
	// Reports.
	in := metadata.NewIncomingContext(context.Background(), sent)
	got, ok, err := remote.FromIncoming(in)
	if err != nil || !ok || got.Report != tx.Report || got.ReportMethod != "/m" || got.Reports != nil {
		t.Fatalf("the service read %+v %v %v", got, ok, err)
	}
	for _, junk := range []string{"junk", tx.Report, tx.Report + " m", "a b /m", "a b c /m"} {
		bad := metadata.NewIncomingContext(context.Background(), metadata.Pairs(remote.MetadataKey, tx.GTRID(), remote.ReportMetadataKey, junk))
		if _, _, err := remote.FromIncoming(bad); err == nil {
			t.Fatalf("a malformed report request %q was accepted", junk)
		}
	}

	// Commit seals the collection: what a call reports later fails it,
	// and later calls do not ask.
	if got := tx.Reports.Seal(); len(got) != 1 || got[0].GetGid() != gid.String() {
		t.Fatalf("collected %v", got)
	}
	late, _ := tx.GID("pay-2")
	lb := &txcoordv1.ReportedBranch{Participant: "pay", Gid: late.String()}
	asked = false
	if err := icpt(remote.NewContext(context.Background(), tx), "/m", nil, nil, nil, answering(trailerOf(t, lb), &sent, &asked)); err != nil || asked || len(sent.Get(remote.ReportMetadataKey)) != 0 {
		t.Fatalf("a call after the seal asked for reports: %v %v %v", err, asked, sent)
	}
	if got := tx.Reports.Seal(); len(got) != 1 {
		t.Fatalf("a branch joined after the seal: %v", got)
	}
}

// A call whose report arrives after Commit was sent fails: its branch is
// not the transaction's.
func TestReportAfterTheSealFailsTheCall(t *testing.T) {
	tx := reportedTx(t)
	tx.Reports = &remote.Reports{}
	gid, _ := tx.GID("pay-1")
	b := &txcoordv1.ReportedBranch{Participant: "pay", Gid: gid.String()}
	sealing := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, opts ...grpc.CallOption) error {
		tx.Reports.Seal() // Commit is sent while the call runs
		for _, o := range opts {
			if tr, ok := o.(grpc.TrailerCallOption); ok {
				*tr.TrailerAddr = trailerOf(t, b)
			}
		}
		return nil
	}
	err := remote.UnaryClientInterceptor()(remote.NewContext(context.Background(), tx), "/m", nil, nil, nil, sealing)
	if !errors.Is(err, remote.ErrReportedLate) {
		t.Fatalf("a report after the seal: %v", err)
	}
	if got := tx.Reports.Seal(); len(got) != 0 {
		t.Fatalf("kept %v", got)
	}
}

// A reply reporting something that is not a branch of the transaction
// fails the call, and none of what it reported is kept.
func TestMalformedReportFailsTheCall(t *testing.T) {
	tx := reportedTx(t)
	tx.Reports = &remote.Reports{}
	gid, _ := tx.GID("pay-1")
	other := reportedTx(t)
	ogid, _ := other.GID("pay-2")
	good := &txcoordv1.ReportedBranch{Participant: "pay", Gid: gid.String()}
	for _, c := range []struct {
		name    string
		trailer metadata.MD
		says    string
	}{
		{"not a message", metadata.Pairs(remote.BranchTrailerKey, "\xff\xff\xff"), "reported branch"},
		{"another transaction's", trailerOf(t, good, &txcoordv1.ReportedBranch{Participant: "pay", Gid: ogid.String()}), "not a branch of transaction"},
		{"no participant", trailerOf(t, &txcoordv1.ReportedBranch{Gid: gid.String()}), "participant name"},
		{"malformed gid", trailerOf(t, &txcoordv1.ReportedBranch{Participant: "pay", Gid: tx.GTRID() + ".bad gid"}), "reported branch"},
	} {
		var sent metadata.MD
		var asked bool
		err := remote.UnaryClientInterceptor()(remote.NewContext(context.Background(), tx), "/m", nil, nil, nil, answering(c.trailer, &sent, &asked))
		if err == nil || !strings.Contains(err.Error(), "malformed reported branch") || !strings.Contains(err.Error(), c.says) {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	if got := tx.Reports.Seal(); len(got) != 0 {
		t.Fatalf("kept %v from replies that failed their calls", got)
	}
}
