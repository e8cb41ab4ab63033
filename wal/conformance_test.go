package wal

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// logMakers builds each Log implementation for the conformance suite.
var logMakers = []struct {
	name string
	open func(t *testing.T) Log
}{
	{"mem", func(t *testing.T) Log {
		m := NewMem()
		t.Cleanup(func() { _ = m.Close() })
		return m
	}},
	{"bolt", func(t *testing.T) Log {
		return openBolt(t, filepath.Join(t.TempDir(), "wal.db"), BoltOptions{})
	}},
}

// conform runs fn against every implementation.
func conform(t *testing.T, fn func(t *testing.T, l Log)) {
	t.Helper()
	for _, m := range logMakers {
		t.Run(m.name, func(t *testing.T) { fn(t, m.open(t)) })
	}
}

func sameDecision(t *testing.T, got Decision, want Record) {
	t.Helper()
	if got.LSN != want.LSN || got.Kind != want.Kind || got.TxID != want.TxID || !got.Time.Equal(want.Time) ||
		!reflect.DeepEqual(got.Branches, want.Branches) || got.Heuristic != want.Heuristic || got.Who != want.Who || got.Why != want.Why {
		t.Fatalf("decision\n got %+v\nwant %+v", got.Record, want)
	}
}

func TestConformanceAppendThenLookupReturnsTheDecision(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		want := commitRec(t, testID(1))
		want.LSN = mustAppend(t, l, want)
		if want.LSN == 0 {
			t.Fatal("LSN 0")
		}
		d, err := l.Lookup(testID(1))
		if err != nil {
			t.Fatal(err)
		}
		sameDecision(t, d, want)
		if d.Epoch != l.Epoch() || d.Ended {
			t.Fatalf("epoch %d (log %d), ended %v", d.Epoch, l.Epoch(), d.Ended)
		}
		if _, err := l.Lookup(testID(2)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown tx: err %v, want ErrNotFound", err)
		}
	})
}

func TestConformanceHeuristicAbortIsLogged(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		want := commitRec(t, testID(1))
		want.Kind, want.Heuristic, want.Who, want.Why = KindAbort, true, "alice", "ticket 42"
		want.LSN = mustAppend(t, l, want)
		d, err := l.Lookup(testID(1))
		if err != nil {
			t.Fatal(err)
		}
		sameDecision(t, d, want)
	})
}

func TestConformancePendingListsUnendedInLogOrder(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		var lsns []uint64
		for i := uint64(1); i <= 4; i++ {
			lsns = append(lsns, mustAppend(t, l, commitRec(t, testID(i))))
		}
		if err := l.End(testID(2)); err != nil {
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
		d, _ := l.Lookup(testID(2))
		if !d.Ended || d.EndLSN <= d.LSN {
			t.Fatalf("ended decision: Ended %v, EndLSN %d, LSN %d", d.Ended, d.EndLSN, d.LSN)
		}
	})
}

func TestConformanceEndOfUnknownTxIsNoOp(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		if err := l.End(testID(9)); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Lookup(testID(9)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err %v, want ErrNotFound", err)
		}
		mustAppend(t, l, commitRec(t, testID(1)))
		for range 2 {
			if err := l.End(testID(1)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		ends := 0
		_ = l.Records(func(r Record) error {
			if r.Kind == KindEnd {
				ends++
			}
			return nil
		})
		if ends != 1 {
			t.Fatalf("%d END records after ending twice, want 1", ends)
		}
	})
}

func TestConformanceSameDecisionTwiceIsIdempotent(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		r := commitRec(t, testID(1))
		a := mustAppend(t, l, r)
		b := mustAppend(t, l, r)
		if a != b {
			t.Fatalf("second append LSN %d, first %d", b, a)
		}
		if s := l.Stats(); s.Appends != 1 {
			t.Fatalf("Appends %d, want 1", s.Appends)
		}
	})
}

func TestConformanceContradictingDecisionIsRefused(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		r := commitRec(t, testID(1))
		mustAppend(t, l, r)
		r.Kind, r.Heuristic, r.Who, r.Why = KindAbort, true, "bob", "force"
		if _, err := l.Append(context.Background(), r); !errors.Is(err, ErrConflict) {
			t.Fatalf("err %v, want ErrConflict (I3)", err)
		}
		d, _ := l.Lookup(testID(1))
		if d.Kind != KindCommit {
			t.Fatalf("decision became %v", d.Kind)
		}
	})
}

func TestConformanceInvalidRecordIsRefused(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		for _, r := range []Record{
			{Kind: KindEnd, TxID: testID(1)},
			{Kind: KindCommit, TxID: testID(1)},
			{Kind: KindCommit, Branches: commitRec(t, testID(1)).Branches},
			{Kind: KindCommit, TxID: testID(2), Branches: commitRec(t, testID(1)).Branches},
		} {
			if _, err := l.Append(context.Background(), r); !errors.Is(err, ErrBadRecord) {
				t.Fatalf("%+v: err %v, want ErrBadRecord", r, err)
			}
		}
	})
}

func TestConformanceCanceledContextWritesNothing(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.Append(ctx, commitRec(t, testID(1))); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
		if _, err := l.Lookup(testID(1)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Lookup err %v, want ErrNotFound", err)
		}
	})
}

func TestConformanceRecordsInLogOrder(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		a := mustAppend(t, l, commitRec(t, testID(1)))
		b := mustAppend(t, l, commitRec(t, testID(2)))
		if err := l.End(testID(1)); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		var got []Record
		if err := l.Records(func(r Record) error { got = append(got, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 {
			t.Fatalf("%d records, want 3", len(got))
		}
		if got[0].LSN != a || got[1].LSN != b || got[2].Kind != KindEnd || got[2].TxID != testID(1) || got[2].LSN <= b {
			t.Fatalf("records %+v", got)
		}
		stop := errors.New("stop")
		n := 0
		if err := l.Records(func(Record) error { n++; return stop }); err != stop || n != 1 {
			t.Fatalf("fn error: err %v after %d calls, want stop after 1", err, n)
		}
	})
}

func TestConformanceCompactRemovesOnlyEnded(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		for i := uint64(1); i <= 3; i++ {
			mustAppend(t, l, commitRec(t, testID(i)))
		}
		_ = l.End(testID(1))
		_ = l.End(testID(3))
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		// Kept while they ended after the cutoff: still answerable.
		if n, err := l.Compact(context.Background(), time.Now().Add(-time.Hour)); n != 0 || err != nil {
			t.Fatalf("Compact before an hour ago = %d, %v; want 0", n, err)
		}
		if d, err := l.Lookup(testID(1)); err != nil || !d.Ended || d.EndTime.IsZero() {
			t.Fatalf("an ended decision kept: %+v %v", d, err)
		}
		n, err := l.Compact(context.Background(), time.Now())
		if err != nil || n != 2 {
			t.Fatalf("Compact = %d, %v; want 2", n, err)
		}
		for _, i := range []uint64{1, 3} {
			if _, err := l.Lookup(testID(i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("compacted tx %d: err %v", i, err)
			}
		}
		if _, err := l.Lookup(testID(2)); err != nil {
			t.Fatal(err)
		}
		var kinds []Kind
		_ = l.Records(func(r Record) error { kinds = append(kinds, r.Kind); return nil })
		if !reflect.DeepEqual(kinds, []Kind{KindCommit}) {
			t.Fatalf("records after compaction: %v", kinds)
		}
		if s := l.Stats(); s.Compacted != 2 || s.Pending != 1 {
			t.Fatalf("stats %+v", s)
		}
		if n, err := l.Compact(context.Background(), time.Now()); n != 0 || err != nil {
			t.Fatalf("second Compact = %d, %v", n, err)
		}
	})
}

func TestConformanceNotedHolderDecisionIsEndedAndCompacted(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		rec := commitRec(t, testID(1), "pg-b")
		if err := l.Note(rec); !errors.Is(err, ErrBadRecord) {
			t.Fatalf("a note without a holder: %v", err)
		}
		rec.Holder = "pg-a"
		if err := l.Note(rec); err != nil {
			t.Fatal(err)
		}
		if err := l.Note(rec); err != nil {
			t.Fatalf("the same note twice: %v", err)
		}
		d, err := l.Lookup(testID(1))
		if err != nil || d.Kind != KindCommit || !d.Ended || d.Holder != "pg-a" || d.LSN == 0 {
			t.Fatalf("noted decision: %+v %v", d, err)
		}
		if p, _ := l.Pending(); len(p) != 0 {
			t.Fatalf("a noted decision is pending: %+v", p)
		}
		if err := l.End(testID(1)); err != nil {
			t.Fatalf("End after Note: %v", err)
		}
		if _, err := l.Append(context.Background(), Record{Kind: KindAbort, TxID: testID(1), Heuristic: true}); !errors.Is(err, ErrConflict) {
			t.Fatalf("an abort contradicting a noted commit: %v", err)
		}
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		var kinds []Kind
		_ = l.Records(func(r Record) error { kinds = append(kinds, r.Kind); return nil })
		if !reflect.DeepEqual(kinds, []Kind{KindCommit}) {
			t.Fatalf("records: %v, want one COMMIT and no END", kinds)
		}
		if n, err := l.Compact(context.Background(), time.Now().Add(time.Second)); n != 1 || err != nil {
			t.Fatalf("Compact = %d, %v; want 1", n, err)
		}
		if _, err := l.Lookup(testID(1)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after compaction: %v", err)
		}
	})
}

func TestConformanceFirstEpochIsOne(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		if l.Epoch() != 1 {
			t.Fatalf("epoch %d, want 1", l.Epoch())
		}
	})
}

func TestConformanceCloseTwiceThenRefuse(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		mustAppend(t, l, commitRec(t, testID(1)))
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := l.Append(context.Background(), commitRec(t, testID(2))); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close: %v", err)
		}
		if err := l.End(testID(1)); !errors.Is(err, ErrClosed) {
			t.Fatalf("End after Close: %v", err)
		}
		if _, err := l.Lookup(testID(1)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Lookup after Close: %v", err)
		}
	})
}

// Compacting a transaction whose END is still in memory removes it for
// good: the END is never written after it (which would leave an END with
// no decision for the next open).
func TestConformanceCompactBeforeEndIsWritten(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		mustAppend(t, l, commitRec(t, testID(1)))
		mustAppend(t, l, commitRec(t, testID(2)))
		_ = l.End(testID(1))
		if n, err := l.Compact(context.Background(), time.Now().Add(time.Second)); n != 1 || err != nil {
			t.Fatalf("Compact = %d, %v", n, err)
		}
		mustAppend(t, l, commitRec(t, testID(3)))
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		var kinds []Kind
		_ = l.Records(func(r Record) error { kinds = append(kinds, r.Kind); return nil })
		if !reflect.DeepEqual(kinds, []Kind{KindCommit, KindCommit}) {
			t.Fatalf("records: %v", kinds)
		}
	})
}

func TestConformanceCompactionMovesTheHorizon(t *testing.T) {
	conform(t, func(t *testing.T, l Log) {
		if !l.Horizon().IsZero() {
			t.Fatalf("a new log has horizon %v", l.Horizon())
		}
		mustAppend(t, l, commitRec(t, testID(1)))
		mustAppend(t, l, commitRec(t, testID(2)))
		_ = l.End(testID(1))
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Lookup(testID(1))
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
	})
}
