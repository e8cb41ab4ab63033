// Package waltest is the conformance suite every wal.Log passes: the
// in-memory and bbolt logs, and the log on etcd.
package waltest

import (
	"context"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/wal"
)

// Run runs the suite against logs made by open (each case gets a new,
// empty log at its first epoch).
func Run(t *testing.T, open func(t *testing.T) wal.Log) {
	for _, c := range []struct {
		name string
		fn   func(t *testing.T, l wal.Log)
	}{
		{"AppendThenLookupReturnsTheDecision", conformanceAppendThenLookupReturnsTheDecision},
		{"HeuristicAbortIsLogged", conformanceHeuristicAbortIsLogged},
		{"PendingListsUnendedInLogOrder", conformancePendingListsUnendedInLogOrder},
		{"EndOfUnknownTxIsNoOp", conformanceEndOfUnknownTxIsNoOp},
		{"SameDecisionTwiceIsIdempotent", conformanceSameDecisionTwiceIsIdempotent},
		{"ContradictingDecisionIsRefused", conformanceContradictingDecisionIsRefused},
		{"InvalidRecordIsRefused", conformanceInvalidRecordIsRefused},
		{"CanceledContextWritesNothing", conformanceCanceledContextWritesNothing},
		{"RecordsInLogOrder", conformanceRecordsInLogOrder},
		{"CompactRemovesOnlyEnded", conformanceCompactRemovesOnlyEnded},
		{"NotedHolderDecisionIsEndedAndCompacted", conformanceNotedHolderDecisionIsEndedAndCompacted},
		{"FirstEpochIsOne", conformanceFirstEpochIsOne},
		{"CloseTwiceThenRefuse", conformanceCloseTwiceThenRefuse},
		{"CompactBeforeEndIsWritten", conformanceCompactBeforeEndIsWritten},
		{"CompactionMovesTheHorizon", conformanceCompactionMovesTheHorizon},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

// TestID is the transaction id numbered n (time-ordered, valid).
func TestID(n uint64) ids.TxID {
	var id ids.TxID
	id[0], id[6] = 0x01, 0x70
	binary.BigEndian.PutUint64(id[8:], 0x8000000000000000|n)
	return id
}

func testGID(t testing.TB, id ids.TxID, branch string) ids.GID {
	t.Helper()
	g, err := ids.NewGID("txc", "coord1", id, branch)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// CommitRec is a COMMIT decision for id with a branch at each resource
// (pg-a and pg-b if none are named).
func CommitRec(t testing.TB, id ids.TxID, resources ...string) wal.Record {
	t.Helper()
	if len(resources) == 0 {
		resources = []string{"pg-a", "pg-b"}
	}
	r := wal.Record{Kind: wal.KindCommit, TxID: id, Time: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
	for i, res := range resources {
		r.Branches = append(r.Branches, wal.Branch{Resource: res, GID: testGID(t, id, string(rune('a'+i)))})
	}
	return r
}

// MustAppend appends r or fails t.
func MustAppend(t testing.TB, l wal.Log, r wal.Record) uint64 {
	t.Helper()
	lsn, err := l.Append(context.Background(), r)
	if err != nil {
		t.Fatalf("Append %s: %v", r.TxID, err)
	}
	return lsn
}

func sameDecision(t *testing.T, got wal.Decision, want wal.Record) {
	t.Helper()
	if got.LSN != want.LSN || got.Kind != want.Kind || got.TxID != want.TxID || !got.Time.Equal(want.Time) ||
		!reflect.DeepEqual(got.Branches, want.Branches) || got.Heuristic != want.Heuristic || got.Who != want.Who || got.Why != want.Why {
		t.Fatalf("decision\n got %+v\nwant %+v", got.Record, want)
	}
}

func conformanceAppendThenLookupReturnsTheDecision(t *testing.T, l wal.Log) {
	want := CommitRec(t, TestID(1))
	want.LSN = MustAppend(t, l, want)
	if want.LSN == 0 {
		t.Fatal("LSN 0")
	}
	d, err := l.Lookup(TestID(1))
	if err != nil {
		t.Fatal(err)
	}
	sameDecision(t, d, want)
	if d.Epoch != l.Epoch() || d.Ended {
		t.Fatalf("epoch %d (log %d), ended %v", d.Epoch, l.Epoch(), d.Ended)
	}
	if _, err := l.Lookup(TestID(2)); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("unknown tx: err %v, want ErrNotFound", err)
	}
}

func conformanceHeuristicAbortIsLogged(t *testing.T, l wal.Log) {
	want := CommitRec(t, TestID(1))
	want.Kind, want.Heuristic, want.Who, want.Why = wal.KindAbort, true, "alice", "ticket 42"
	want.LSN = MustAppend(t, l, want)
	d, err := l.Lookup(TestID(1))
	if err != nil {
		t.Fatal(err)
	}
	sameDecision(t, d, want)
}

func conformancePendingListsUnendedInLogOrder(t *testing.T, l wal.Log) {
	var lsns []uint64
	for i := uint64(1); i <= 4; i++ {
		lsns = append(lsns, MustAppend(t, l, CommitRec(t, TestID(i))))
	}
	if err := l.End(TestID(2)); err != nil {
		t.Fatal(err)
	}
	p, err := l.Pending()
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, d := range p {
		got = append(got, d.LSN)
	}
	if want := []uint64{lsns[0], lsns[2], lsns[3]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pending LSNs %v, want %v", got, want)
	}
	if s := l.Stats(); s.Pending != 3 || s.Appends != 4 {
		t.Fatalf("stats %+v, want Pending 3, Appends 4", s)
	}
	d, _ := l.Lookup(TestID(2))
	if !d.Ended || d.EndLSN <= d.LSN {
		t.Fatalf("ended decision: Ended %v, EndLSN %d, LSN %d", d.Ended, d.EndLSN, d.LSN)
	}
}

func conformanceEndOfUnknownTxIsNoOp(t *testing.T, l wal.Log) {
	if err := l.End(TestID(9)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lookup(TestID(9)); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("err %v, want ErrNotFound", err)
	}
	MustAppend(t, l, CommitRec(t, TestID(1)))
	for range 2 {
		if err := l.End(TestID(1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	ends := 0
	_ = l.Records(func(r wal.Record) error {
		if r.Kind == wal.KindEnd {
			ends++
		}
		return nil
	})
	if ends != 1 {
		t.Fatalf("%d END records after ending twice, want 1", ends)
	}
}

func conformanceSameDecisionTwiceIsIdempotent(t *testing.T, l wal.Log) {
	r := CommitRec(t, TestID(1))
	a := MustAppend(t, l, r)
	b := MustAppend(t, l, r)
	if a != b {
		t.Fatalf("second append LSN %d, first %d", b, a)
	}
	if s := l.Stats(); s.Appends != 1 {
		t.Fatalf("Appends %d, want 1", s.Appends)
	}
}

func conformanceContradictingDecisionIsRefused(t *testing.T, l wal.Log) {
	r := CommitRec(t, TestID(1))
	MustAppend(t, l, r)
	r.Kind, r.Heuristic, r.Who, r.Why = wal.KindAbort, true, "bob", "force"
	if _, err := l.Append(context.Background(), r); !errors.Is(err, wal.ErrConflict) {
		t.Fatalf("err %v, want wal.ErrConflict (I3)", err)
	}
	d, _ := l.Lookup(TestID(1))
	if d.Kind != wal.KindCommit {
		t.Fatalf("decision became %v", d.Kind)
	}
}

func conformanceInvalidRecordIsRefused(t *testing.T, l wal.Log) {
	for _, r := range []wal.Record{
		{Kind: wal.KindEnd, TxID: TestID(1)},
		{Kind: wal.KindCommit, TxID: TestID(1)},
		{Kind: wal.KindCommit, Branches: CommitRec(t, TestID(1)).Branches},
		{Kind: wal.KindCommit, TxID: TestID(2), Branches: CommitRec(t, TestID(1)).Branches},
	} {
		if _, err := l.Append(context.Background(), r); !errors.Is(err, wal.ErrBadRecord) {
			t.Fatalf("%+v: err %v, want ErrBadRecord", r, err)
		}
	}
}

func conformanceCanceledContextWritesNothing(t *testing.T, l wal.Log) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, CommitRec(t, TestID(1))); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if _, err := l.Lookup(TestID(1)); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("Lookup err %v, want ErrNotFound", err)
	}
}

func conformanceRecordsInLogOrder(t *testing.T, l wal.Log) {
	a := MustAppend(t, l, CommitRec(t, TestID(1)))
	b := MustAppend(t, l, CommitRec(t, TestID(2)))
	if err := l.End(TestID(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []wal.Record
	if err := l.Records(func(r wal.Record) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d records, want 3", len(got))
	}
	if got[0].LSN != a || got[1].LSN != b || got[2].Kind != wal.KindEnd || got[2].TxID != TestID(1) || got[2].LSN <= b {
		t.Fatalf("records %+v", got)
	}
	stop := errors.New("stop")
	n := 0
	if err := l.Records(func(wal.Record) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("fn error: err %v after %d calls, want stop after 1", err, n)
	}
}

func conformanceCompactRemovesOnlyEnded(t *testing.T, l wal.Log) {
	for i := uint64(1); i <= 3; i++ {
		MustAppend(t, l, CommitRec(t, TestID(i)))
	}
	_ = l.End(TestID(1))
	_ = l.End(TestID(3))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Kept while they ended after the cutoff: still answerable.
	if n, err := l.Compact(context.Background(), time.Now().Add(-time.Hour)); n != 0 || err != nil {
		t.Fatalf("Compact before an hour ago = %d, %v; want 0", n, err)
	}
	if d, err := l.Lookup(TestID(1)); err != nil || !d.Ended || d.EndTime.IsZero() {
		t.Fatalf("an ended decision kept: %+v %v", d, err)
	}
	n, err := l.Compact(context.Background(), time.Now())
	if err != nil || n != 2 {
		t.Fatalf("Compact = %d, %v; want 2", n, err)
	}
	for _, i := range []uint64{1, 3} {
		if _, err := l.Lookup(TestID(i)); !errors.Is(err, wal.ErrNotFound) {
			t.Fatalf("compacted tx %d: err %v", i, err)
		}
	}
	if _, err := l.Lookup(TestID(2)); err != nil {
		t.Fatal(err)
	}
	var kinds []wal.Kind
	_ = l.Records(func(r wal.Record) error { kinds = append(kinds, r.Kind); return nil })
	if !reflect.DeepEqual(kinds, []wal.Kind{wal.KindCommit}) {
		t.Fatalf("records after compaction: %v", kinds)
	}
	if s := l.Stats(); s.Compacted != 2 || s.Pending != 1 {
		t.Fatalf("stats %+v", s)
	}
	if n, err := l.Compact(context.Background(), time.Now()); n != 0 || err != nil {
		t.Fatalf("second Compact = %d, %v", n, err)
	}
}

func conformanceNotedHolderDecisionIsEndedAndCompacted(t *testing.T, l wal.Log) {
	rec := CommitRec(t, TestID(1), "pg-b")
	if err := l.Note(rec); !errors.Is(err, wal.ErrBadRecord) {
		t.Fatalf("a note without a holder: %v", err)
	}
	rec.Holder = "pg-a"
	if err := l.Note(rec); err != nil {
		t.Fatal(err)
	}
	if err := l.Note(rec); err != nil {
		t.Fatalf("the same note twice: %v", err)
	}
	d, err := l.Lookup(TestID(1))
	if err != nil || d.Kind != wal.KindCommit || !d.Ended || d.Holder != "pg-a" || d.LSN == 0 {
		t.Fatalf("noted decision: %+v %v", d, err)
	}
	if p, _ := l.Pending(); len(p) != 0 {
		t.Fatalf("a noted decision is pending: %+v", p)
	}
	if err := l.End(TestID(1)); err != nil {
		t.Fatalf("End after Note: %v", err)
	}
	if _, err := l.Append(context.Background(), wal.Record{Kind: wal.KindAbort, TxID: TestID(1), Heuristic: true}); !errors.Is(err, wal.ErrConflict) {
		t.Fatalf("an abort contradicting a noted commit: %v", err)
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var kinds []wal.Kind
	_ = l.Records(func(r wal.Record) error { kinds = append(kinds, r.Kind); return nil })
	if !reflect.DeepEqual(kinds, []wal.Kind{wal.KindCommit}) {
		t.Fatalf("records: %v, want one COMMIT and no END", kinds)
	}
	if n, err := l.Compact(context.Background(), time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("Compact = %d, %v; want 1", n, err)
	}
	if _, err := l.Lookup(TestID(1)); !errors.Is(err, wal.ErrNotFound) {
		t.Fatalf("after compaction: %v", err)
	}
}

func conformanceFirstEpochIsOne(t *testing.T, l wal.Log) {
	if l.Epoch() != 1 {
		t.Fatalf("epoch %d, want 1", l.Epoch())
	}
}

func conformanceCloseTwiceThenRefuse(t *testing.T, l wal.Log) {
	MustAppend(t, l, CommitRec(t, TestID(1)))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(context.Background(), CommitRec(t, TestID(2))); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := l.End(TestID(1)); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("End after Close: %v", err)
	}
	if _, err := l.Lookup(TestID(1)); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("Lookup after Close: %v", err)
	}
}

// Compacting a transaction whose END is still in memory removes it for
// good: the END is never written after it (which would leave an END with
// no decision for the next open).
func conformanceCompactBeforeEndIsWritten(t *testing.T, l wal.Log) {
	MustAppend(t, l, CommitRec(t, TestID(1)))
	MustAppend(t, l, CommitRec(t, TestID(2)))
	_ = l.End(TestID(1))
	if n, err := l.Compact(context.Background(), time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("Compact = %d, %v", n, err)
	}
	MustAppend(t, l, CommitRec(t, TestID(3)))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var kinds []wal.Kind
	_ = l.Records(func(r wal.Record) error { kinds = append(kinds, r.Kind); return nil })
	if !reflect.DeepEqual(kinds, []wal.Kind{wal.KindCommit, wal.KindCommit}) {
		t.Fatalf("records: %v", kinds)
	}
}

func conformanceCompactionMovesTheHorizon(t *testing.T, l wal.Log) {
	if !l.Horizon().IsZero() {
		t.Fatalf("a new log has horizon %v", l.Horizon())
	}
	MustAppend(t, l, CommitRec(t, TestID(1)))
	MustAppend(t, l, CommitRec(t, TestID(2)))
	_ = l.End(TestID(1))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Lookup(TestID(1))
	if n, err := l.Compact(context.Background(), time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("Compact = %d, %v", n, err)
	}
	if h := l.Horizon(); !h.Equal(d.EndTime) {
		t.Fatalf("horizon %v, want the removed END's time %v", h, d.EndTime)
	}
	// A compaction that removes nothing keeps it.
	if _, err := l.Compact(context.Background(), time.Now().Add(time.Second)); err != nil || !l.Horizon().Equal(d.EndTime) {
		t.Fatalf("horizon %v after an empty compaction (%v)", l.Horizon(), err)
	}
}
