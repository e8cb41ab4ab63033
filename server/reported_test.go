package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/txcoord/txcoord/participant/remote"
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
	for _, name := range []string{"pay", "inv"} {
		if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: name, Address: "127.0.0.1:1", ReportKey: keyOf(name)}); err != nil {
			t.Fatal(err)
		}
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
		// A client cannot speak for a participant: it names a branch
		// the participant did not report, or one service reports in
		// another's name.
		{"no proof", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Proof = nil }, "no proof from participant pay"},
		{"a made-up proof", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) { b.Proof = make([]byte, 16) }, "no proof"},
		{"another participant's proof", func(b *txcoordv1.ReportedBranch, _ *txcoordv1.BeginResponse) {
			b.Proof = remote.ReportProof(keyOf("inv"), b.Gid)
		}, "no proof from participant pay"},
		{"the proof of another gid", func(b *txcoordv1.ReportedBranch, tx *txcoordv1.BeginResponse) {
			b.Proof = remote.ReportProof(keyOf("pay"), tx.Gtrid+".pay-2")
		}, "no proof"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx := begin(t, e)
			if tx.GetInstance().GetLogId() == "" {
				t.Fatalf("Begin answered no instance: %v", tx)
			}
			b := &txcoordv1.ReportedBranch{Participant: "pay", Gid: tx.Gtrid + ".pay-1", Instance: proto.Clone(tx.GetInstance()).(*txcoordv1.Instance)}
			c.mod(b, tx)
			if c.says != "no proof" && !strings.HasPrefix(c.says, "no proof from") {
				b.Proof = remote.ReportProof(keyOf(b.Participant), b.Gid)
			}
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
			// Asked again, it says why.
			_, err = e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: tx.Txid, Gtrid: tx.Gtrid})
			wantCode(t, err, codes.FailedPrecondition, "rolled back at its commit")
			if !strings.Contains(status.Convert(err).Message(), c.says) {
				t.Fatalf("the repeated commit does not say why: %v", err)
			}
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
	if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "pay", Address: "127.0.0.1:1", ReportKey: keyOf("pay")}); err != nil {
		t.Fatal(err)
	}
	tx := begin(t, e)
	two := []*txcoordv1.ReportedBranch{
		{Participant: "pay", Gid: tx.Gtrid + ".pay-1", Instance: tx.GetInstance(), Proof: remote.ReportProof(keyOf("pay"), tx.Gtrid+".pay-1")},
		{Participant: "pay", Gid: tx.Gtrid + ".pay-2", Instance: tx.GetInstance(), Proof: remote.ReportProof(keyOf("pay"), tx.Gtrid+".pay-2")},
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

// keyOf is a test participant's report key.
func keyOf(name string) []byte { return []byte(fmt.Sprintf("%-32s", "key of "+name)) }

// Report keys are checked where a participant gives them, and only the
// last few of a participant are kept: a proof under a key given before
// them no longer joins.
func TestReportKeysAreCheckedAndTheNewestKept(t *testing.T) {
	log, err := wal.OpenBolt(filepath.Join(t.TempDir(), "txcoord.wal"), wal.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	e := start(t, log, nil, server.Config{})
	ctx := context.Background()
	for _, k := range [][]byte{make([]byte, 8), make([]byte, 65)} {
		_, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "pay", Address: "127.0.0.1:1", ReportKey: k})
		wantCode(t, err, codes.InvalidArgument, "report key")
	}
	const keys = 65 // one more than the server keeps
	for i := range keys {
		if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "pay", Address: "127.0.0.1:1", ReportKey: keyOf(fmt.Sprint("pay", i))}); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range []txcoordv1.Outcome{txcoordv1.Outcome_OUTCOME_ABORTED, txcoordv1.Outcome_OUTCOME_COMMITTED} {
		// Key 0 was pushed out by the 64 after it; key 1 is kept.
		key := keyOf(fmt.Sprint("pay", i))
		tx := begin(t, e)
		gid := tx.Gtrid + ".pay-1"
		b := &txcoordv1.ReportedBranch{Participant: "pay", Gid: gid, Instance: tx.GetInstance(), Proof: remote.ReportProof(key, gid)}
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		resp, err := e.api.Commit(cctx, &txcoordv1.CommitRequest{Txid: tx.Txid, Gtrid: tx.Gtrid, Branches: []*txcoordv1.ReportedBranch{b}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// The joined branch's participant cannot be reached: committed,
		// phase two pending.
		if resp.GetOutcome() != want {
			t.Fatalf("key %d: want %v, got %v", i, want, resp)
		}
	}
}
