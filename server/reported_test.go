package server_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

// A Commit carrying a reported branch the coordinator cannot take rolls
// the transaction back and says why: committing without that branch would
// commit part of what the client did.
func TestCommitWithABranchItCannotTakeRollsBack(t *testing.T) {
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	e := start(t, log, nil, server.Config{})
	ctx := context.Background()
	if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "pay", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	other := begin(t, e)
	for _, c := range []struct {
		name string
		mod  func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse)
		says string
	}{
		{"malformed gid", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Gid = "not a gid" }, "malformed gid"},
		{"another transaction's", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Gid = other.Gtrid + ".pay-1" }, "belongs to transaction"},
		{"another coordinator's", func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse) {
			b.Gid = strings.Replace(tx.Gtrid, ".c1.", ".c2.", 1) + ".pay-1"
		}, "not issued by this coordinator"},
		{"not named for its participant", func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse) { b.Gid = tx.Gtrid + ".inv-1" }, "not named for participant pay"},
		{"unknown participant", func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse) {
			b.Participant, b.Gid = "ghost", tx.Gtrid+".ghost-1"
		}, "not a remote participant known"},
		{"bad participant name", func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse) {
			b.Participant, b.Gid = "a b", tx.Gtrid+".a b-1"
		}, "reported branch"},
		{"another run of the coordinator", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Instance.Epoch++ }, "not this one"},
		{"no instance", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Instance = nil }, "not this one"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := begin(t, e)
			if tx.GetInstance().GetLogId() == "" {
				t.Fatalf("Begin answered no instance: %v", tx)
			}
			b := &txcoordv1.ReportedBranch{Participant: "pay", Gid: tx.Gtrid + ".pay-1", Instance: proto.Clone(tx.GetInstance()).(*txcoordv1.Instance)}
			c.mod(b, tx)
			resp, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: tx.Txid, Gtrid: tx.Gtrid, Branches: []*txcoordv1.ReportedBranch{b}})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED || !strings.Contains(resp.GetReason(), c.says) {
				t.Fatalf("want ABORTED saying %q, got %v", c.says, resp)
			}
			out, err := e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: tx.Txid})
			if err != nil || out.GetState() != txcoordv1.TxState_TX_STATE_ABORTED {
				t.Fatalf("outcome after the refused commit: %v %v", out, err)
			}
			_, err = e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: tx.Txid, Gtrid: tx.Gtrid})
			wantCode(t, err, codes.FailedPrecondition, "rolled back")
		})
	}
}

// Reported branches count against the branch quota.
func TestReportedBranchesCountAgainstTheQuota(t *testing.T) {
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	e := start(t, log, nil, server.Config{MaxBranches: 1})
	ctx := context.Background()
	if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "pay", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	tx := begin(t, e)
	two := []*txcoordv1.ReportedBranch{
		{Participant: "pay", Gid: tx.Gtrid + ".pay-1", Instance: tx.GetInstance()},
		{Participant: "pay", Gid: tx.Gtrid + ".pay-2", Instance: tx.GetInstance()},
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.api.Commit(cctx, &txcoordv1.CommitRequest{Txid: tx.Txid, Gtrid: tx.Gtrid, Branches: two})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetOutcome() != txcoordv1.Outcome_OUTCOME_ABORTED || !strings.Contains(resp.GetReason(), "the most one may have") {
		t.Fatalf("want ABORTED past the quota, got %v", resp)
	}
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: tx.Txid})
	if err != nil {
		t.Fatal(err)
	}
	// The first joined, to be rolled back with the transaction.
	if n := len(got.GetBranches()); n != 1 || got.GetBranches()[0].GetGid() != two[0].Gid {
		t.Fatalf("want the first reported branch joined, got %v", got.GetBranches())
	}
}
