package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"github.com/txcoord/txcoord/server"
)

// F7 and F12: the registry, branches per transaction and live
// transactions per identity are capped; a caller past a cap hears
// RESOURCE_EXHAUSTED and nothing else is disturbed.
func TestLimitsRefuseJunk(t *testing.T) {
	e := start(t, nil, nil, server.Config{MaxParticipants: 2, MaxBranches: 2, MaxLivePerIdentity: 3})
	ctx := context.Background()
	for _, p := range []string{"p1", "p2"} {
		if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: p, Address: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "junk", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.ResourceExhausted, "remote participants are known")
	// A known name may still move.
	if _, err := e.api.Announce(ctx, &txcoordv1.AnnounceRequest{Participant: "p1", Address: "127.0.0.1:2"}); err != nil {
		t.Fatalf("a known participant moving: %v", err)
	}

	var txs []*txcoordv1.BeginResponse
	for i := 0; i < 3; i++ {
		txs = append(txs, begin(t, e))
	}
	_, err = e.api.Begin(ctx, &txcoordv1.BeginRequest{})
	wantCode(t, err, codes.ResourceExhausted, "live transactions")

	b := txs[0]
	for _, br := range []struct{ name, gid string }{{"p1", ".p1-1"}, {"p2", ".p2-1"}} {
		if _, err := e.api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + br.gid, Participant: br.name, Address: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e.api.RegisterBranch(ctx, &txcoordv1.RegisterBranchRequest{Txid: b.Txid, Gid: b.Gtrid + ".p1-2", Participant: "p1", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.ResourceExhausted, "branches")

	// Finishing one frees a place, at once.
	if _, err := e.api.Rollback(ctx, &txcoordv1.RollbackRequest{Txid: txs[1].Txid}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := e.api.Begin(ctx, &txcoordv1.BeginRequest{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a Begin after one of three finished: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// F12: ListTransactions answers in pages, oldest first, each transaction
// once.
func TestListTransactionsInPages(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	ctx := context.Background()
	want := map[string]bool{}
	for i := 0; i < 7; i++ {
		want[begin(t, e).Txid] = true
	}
	seen := map[string]bool{}
	req := &txcoordv1.ListTransactionsRequest{PageSize: 3}
	var sizes []int
	for {
		resp, err := e.api.ListTransactions(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(resp.GetTransactions()))
		for _, tx := range resp.GetTransactions() {
			if seen[tx.GetTxid()] {
				t.Fatalf("%s listed twice", tx.GetTxid())
			}
			seen[tx.GetTxid()] = true
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if len(seen) != len(want) || len(sizes) != 3 || sizes[0] != 3 || sizes[2] != 1 {
		t.Fatalf("pages %v, %d of %d transactions", sizes, len(seen), len(want))
	}
	_, err := e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{PageToken: "%%%"})
	wantCode(t, err, codes.InvalidArgument, "page_token")
	_, err = e.api.ListTransactions(ctx, &txcoordv1.ListTransactionsRequest{PageSize: -1})
	wantCode(t, err, codes.InvalidArgument, "page_size")
}

// A participant that calls in while the server closes is told to try
// again (UNAVAILABLE), and no connection to it outlives Close (the
// package's goroutine check would find its channel's goroutines).
func TestParticipantCallingInAfterCloseIsRefused(t *testing.T) {
	e := start(t, nil, nil, server.Config{})
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := e.api.Announce(context.Background(), &txcoordv1.AnnounceRequest{Participant: "late", Address: "127.0.0.1:1"})
	wantCode(t, err, codes.Unavailable, "server closed")
}
