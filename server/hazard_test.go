package server_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

// F2 through the API: a committed transaction with a branch its resource
// neither holds prepared nor can prove committed shows as a hazard in
// GetTransaction and ListTransactions, is answered as one to the
// application (a participant asking for its branch is told to commit), and
// is ended only by a Resolve that accepts it.
func TestAHazardIsShownAnsweredAndEndedOnlyWhenAccepted(t *testing.T) {
	a, b := fake.New("a"), fake.New("b")
	log := wal.NewMem()
	e := start(t, log, []participant.Resource{a, b}, server.Config{})
	ctx := context.Background()
	id, _ := ids.NewTxID()
	ga, _ := ids.NewGID("txc", "c1", id, "0")
	gb, _ := ids.NewGID("txc", "c1", id, "1")
	b.AddPrepared(gb.String()) // a's branch was lost
	if _, err := log.Append(ctx, wal.Record{Kind: wal.KindCommit, TxID: id, Branches: []wal.Branch{{Resource: "a", GID: ga}, {Resource: "b", GID: gb}}}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.Recover(ctx)
	if err != nil || len(rep.Hazards) != 1 {
		t.Fatalf("recovery: %+v, %v", rep, err)
	}
	got, err := e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String()})
	if err != nil || got.GetState() != txcoordv1.TxState_TX_STATE_HAZARD || got.GetHazard() == "" {
		t.Fatalf("GetTransaction: %v, %v", got, err)
	}
	list, err := e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{States: []txcoordv1.TxState{txcoordv1.TxState_TX_STATE_HAZARD}})
	if err != nil || len(list.GetTransactions()) != 1 || list.GetTransactions()[0].GetTxid() != id.String() {
		t.Fatalf("ListTransactions --state hazard: %v, %v", list, err)
	}
	out, err := e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Txid: id.String()})
	if err != nil || out.GetState() != txcoordv1.TxState_TX_STATE_HAZARD {
		t.Fatalf("GetOutcome by the application: %v, %v", out, err)
	}
	out, err = e.api.GetOutcome(ctx, &txcoordv1.GetOutcomeRequest{Gid: gb.String()})
	if err != nil || out.GetState() != txcoordv1.TxState_TX_STATE_COMMITTED {
		t.Fatalf("GetOutcome for a branch: %v, %v", out, err)
	}
	cr, err := e.api.Commit(ctx, &txcoordv1.CommitRequest{Txid: id.String(), Gtrid: ga.GTRID()})
	if err != nil || cr.GetOutcome() != txcoordv1.Outcome_OUTCOME_COMMITTED || !cr.GetHeuristicHazard() {
		t.Fatalf("Commit asked again: %v, %v", cr, err)
	}

	_, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "x", AcceptHazard: true})
	wantCode(t, err, codes.InvalidArgument, "accept_hazard goes with COMMIT")
	res, err := e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "checked"})
	if err != nil {
		t.Fatal(err)
	}
	for _, br := range res.GetBranches() {
		if br.GetGid() == ga.String() && br.GetOk() {
			t.Fatalf("the hazard branch counted as done without acceptance: %v", res)
		}
	}
	if d, _ := log.Lookup(id); d.Ended {
		t.Fatal("ended without acceptance")
	}
	res, err = e.api.Resolve(ctx, &txcoordv1.ResolveRequest{Txid: id.String(), Decision: txcoordv1.Decision_DECISION_COMMIT, Reason: "row re-entered by hand", AcceptHazard: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, br := range res.GetBranches() {
		if !br.GetOk() {
			t.Fatalf("accepting the hazard: %v", res)
		}
	}
	if d, _ := log.Lookup(id); !d.Ended {
		t.Fatal("not ended after the hazard was accepted")
	}
	got, err = e.api.GetTransaction(ctx, &txcoordv1.GetTransactionRequest{Txid: id.String()})
	if err != nil || got.GetState() != txcoordv1.TxState_TX_STATE_COMMITTED {
		t.Fatalf("after acceptance: %v, %v", got, err)
	}
}
