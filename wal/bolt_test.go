package wal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
)

func tempPath(t testing.TB) string { return filepath.Join(t.TempDir(), "wal.db") }

// reopen closes l and opens its file again.
func reopen(t *testing.T, l *Bolt, opts BoltOptions) *Bolt {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openBolt(t, l.Path(), opts)
}

func TestReopenKeepsPendingAndEndedDecisions(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	want := map[uint64]Record{}
	for i := uint64(1); i <= 3; i++ {
		r := commitRec(t, testID(i))
		r.LSN = mustAppend(t, l, r)
		want[i] = r
	}
	if err := l.End(testID(2)); err != nil {
		t.Fatal(err)
	}
	l = reopen(t, l, BoltOptions{})
	for i, r := range want {
		d, err := l.Lookup(testID(i))
		if err != nil {
			t.Fatal(err)
		}
		sameDecision(t, d, r)
		if d.Ended != (i == 2) {
			t.Fatalf("tx %d: Ended %v", i, d.Ended)
		}
	}
	p, _ := l.Pending()
	if len(p) != 2 || p[0].TxID != testID(1) || p[1].TxID != testID(3) {
		t.Fatalf("pending %+v", p)
	}
}

func TestReopenKeepsNotedHolderDecisionsEnded(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	r := commitRec(t, testID(1), "pg-b")
	r.Holder = "pg-a"
	if err := l.Note(r); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.Syncs != 0 || s.Notes != 1 {
		t.Fatalf("a note waited for disk: %+v", s)
	}
	l = reopen(t, l, BoltOptions{})
	d, err := l.Lookup(testID(1))
	if err != nil || !d.Ended || d.Holder != "pg-a" || d.EndLSN != d.LSN {
		t.Fatalf("noted decision after reopen: %+v %v", d, err)
	}
	if p, _ := l.Pending(); len(p) != 0 {
		t.Fatalf("pending after reopen: %+v", p)
	}
}

func TestReopenKeepsTheCompactionHorizon(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	if _, err := l.Compact(context.Background(), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	h := l.Horizon()
	if h.IsZero() {
		t.Fatal("no horizon after compaction")
	}
	l = reopen(t, l, BoltOptions{})
	if !l.Horizon().Equal(h) {
		t.Fatalf("horizon %v after reopen, want %v", l.Horizon(), h)
	}
}

func TestTheLogKnowsItsIDAndCreationTime(t *testing.T) {
	before := time.Now()
	l := openBolt(t, tempPath(t), BoltOptions{})
	id, created := l.LogID(), l.Created()
	if !l.Fresh() || id == "" || created.Before(before.Add(-time.Second)) || created.After(time.Now()) {
		t.Fatalf("new log: fresh %v, id %q, created %v", l.Fresh(), id, created)
	}
	l = reopen(t, l, BoltOptions{})
	if l.Fresh() || l.LogID() != id || !l.Created().Equal(created) {
		t.Fatalf("reopened: fresh %v, id %q (was %q), created %v (was %v)", l.Fresh(), l.LogID(), id, l.Created(), created)
	}
}

func TestReopenEpochGrowsByOnePerOpen(t *testing.T) {
	path := tempPath(t)
	for want := uint64(1); want <= 4; want++ {
		l, err := OpenBolt(path, BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Epoch() != want {
			t.Fatalf("epoch %d, want %d", l.Epoch(), want)
		}
		lsn := mustAppend(t, l, commitRec(t, testID(want)))
		d, _ := l.Lookup(testID(want))
		if d.Epoch != want || d.LSN != lsn {
			t.Fatalf("record epoch %d, want %d", d.Epoch, want)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReopenEndThenCloseIsDurable(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{EndFlushDelay: time.Hour})
	mustAppend(t, l, commitRec(t, testID(1)))
	if err := l.End(testID(1)); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.Ends != 0 {
		t.Fatalf("END written before any sync: Ends %d", s.Ends)
	}
	l = reopen(t, l, BoltOptions{})
	if d, err := l.Lookup(testID(1)); err != nil || !d.Ended {
		t.Fatalf("after Close and reopen: %+v, %v; want ended", d, err)
	}
}

func TestReopenLSNsAreNotReusedAfterCompaction(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Lookup(testID(1))
	if n, err := l.Compact(context.Background(), time.Now()); n != 1 || err != nil {
		t.Fatalf("Compact = %d, %v", n, err)
	}
	l = reopen(t, l, BoltOptions{})
	if lsn := mustAppend(t, l, commitRec(t, testID(2))); lsn <= d.EndLSN {
		t.Fatalf("LSN %d reused (END of compacted tx was %d)", lsn, d.EndLSN)
	}
}

func TestDecisionsGoToTheJournalThenToTheFileWithTheirEnds(t *testing.T) {
	path := tempPath(t)
	l := openBolt(t, path, BoltOptions{EndFlushDelay: time.Hour})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	mustAppend(t, l, commitRec(t, testID(2)))
	s := l.Stats()
	if s.Syncs != 2 || s.Ends != 0 {
		t.Fatalf("stats %+v: want one journal write per decision and the END still waiting", s)
	}
	if recs := journalRecords(t, path); len(recs) != 2 {
		t.Fatalf("journal holds %d decisions, want 2", len(recs))
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = l.Stats()
	if s.Syncs != 3 || s.Ends != 1 || s.MaxBatch < 1 {
		t.Fatalf("stats %+v: want one file commit carrying the END and both decisions", s)
	}
	var kinds []Kind
	_ = l.Records(func(r Record) error { kinds = append(kinds, r.Kind); return nil })
	if !reflect.DeepEqual(kinds, []Kind{KindCommit, KindEnd, KindCommit}) {
		t.Fatalf("file holds %v", kinds)
	}
	// The journal starts again: the next decision's block is its first.
	mustAppend(t, l, commitRec(t, testID(3)))
	if recs := journalRecords(t, path); len(recs) != 1 || recs[0].lsn != 4 {
		t.Fatalf("journal after the move: %+v, want the one decision at LSN 4", recs)
	}
}

// journalRecords reads the journal of the log at path as an open would,
// newer than the file's LSNs it has seen none of.
func journalRecords(t *testing.T, path string) []jrec {
	t.Helper()
	data, err := os.ReadFile(JournalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := scanJournal(path, data, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Blocks of earlier runs of the journal carry lower LSNs and end the
	// scan; what it returns is the current run.
	return recs
}

func TestEndIsWrittenAfterEndFlushDelay(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{EndFlushDelay: 5 * time.Millisecond})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Ends != 1 {
		if time.Now().After(deadline) {
			t.Fatal("END not written after EndFlushDelay")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFlushWritesQueuedEnds(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{EndFlushDelay: time.Hour})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.Ends != 1 {
		t.Fatalf("Ends %d after Flush", s.Ends)
	}
}

func TestCompactDropsQueuedEndsAndReopensCleanly(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{EndFlushDelay: time.Hour})
	mustAppend(t, l, commitRec(t, testID(1)))
	mustAppend(t, l, commitRec(t, testID(2)))
	_ = l.End(testID(1))
	if n, err := l.Compact(context.Background(), time.Now()); n != 1 || err != nil {
		t.Fatalf("Compact = %d, %v", n, err)
	}
	l = reopen(t, l, BoltOptions{})
	if _, err := l.Lookup(testID(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("compacted tx: %v", err)
	}
	if _, err := l.Lookup(testID(2)); err != nil {
		t.Fatal(err)
	}
	path := l.Path()
	_ = l.Close()
	withBolt(t, path, func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bucketLog).Stats().KeyN; n != 1 {
			t.Errorf("log bucket has %d keys, want 1", n)
		}
		return nil
	})
}

// Keys are fixed-width and exact: a peer's log matched tx-1 to tx-10 by
// key prefix and lost branches.
func TestTxKeysAreExactNeverPrefixMatched(t *testing.T) {
	a, b := testID(0x1), testID(0x10)
	if !bytes.Equal(a[:15], b[:15]) || !strings.HasPrefix(a.String(), b.String()[:34]) {
		t.Fatal("test ids should share a prefix")
	}
	l := openBolt(t, tempPath(t), BoltOptions{})
	mustAppend(t, l, commitRec(t, a, "pg-a"))
	if _, err := l.Lookup(b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(%s) found %s's decision: %v", b, a, err)
	}
	_ = l.End(b)
	if d, _ := l.Lookup(a); d.Ended {
		t.Fatalf("End(%s) ended %s", b, a)
	}
	mustAppend(t, l, commitRec(t, b, "pg-b", "pg-c"))
	_ = l.End(a)
	l = reopen(t, l, BoltOptions{})
	da, _ := l.Lookup(a)
	db, _ := l.Lookup(b)
	if !da.Ended || db.Ended || len(db.Branches) != 2 || db.Branches[0].Resource != "pg-b" || len(da.Branches) != 1 {
		t.Fatalf("after reopen:\n%s %+v\n%s %+v", a, da, b, db)
	}
	path := l.Path()
	_ = l.Close()
	withBolt(t, path, func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketTx) != nil {
			t.Errorf("file has an index bucket %q", BucketTx)
		}
		c := tx.Bucket(bucketLog).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) != 8 {
				t.Errorf("log key %x is %d bytes, want 8", k, len(k))
			}
		}
		return nil
	})
	// A version-1 file kept an on-disk index keyed by the whole id.
	toFormat1(t, path)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketTx).Cursor()
		if k, _ := c.Seek(a[:15]); !bytes.Equal(k, a[:]) {
			t.Errorf("seek by prefix landed on %x", k)
		}
		return nil
	})
	l = openBolt(t, path, BoltOptions{})
	if da, _ := l.Lookup(a); !da.Ended || len(da.Branches) != 1 {
		t.Fatalf("after upgrade: %s %+v", a, da)
	}
	if db, _ := l.Lookup(b); db.Ended || len(db.Branches) != 2 {
		t.Fatalf("after upgrade: %s %+v", b, db)
	}
}

func TestGroupCommitSharesSyncsBetween64Writers(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	const writers, each = 64, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r := commitRec(t, testID(uint64(w*each+i+1)))
				if _, err := l.Append(context.Background(), r); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s := l.Stats()
	t.Logf("%d appends in %d syncs (%.1f per sync), largest batch %d", s.Appends, s.Syncs, float64(s.Appends)/float64(s.Syncs), s.MaxBatch)
	if s.Appends != writers*each || s.Syncs >= s.Appends {
		t.Fatalf("stats %+v: want %d appends in fewer syncs", s, writers*each)
	}
	l = reopen(t, l, BoltOptions{})
	for n := uint64(1); n <= writers*each; n++ {
		if _, err := l.Lookup(testID(n)); err != nil {
			t.Fatal(err)
		}
	}
	if s := l.Stats(); s.Pending != writers*each {
		t.Fatalf("pending %d after reopen", s.Pending)
	}
}

func TestNoGroupCommitSyncsEachDecision(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{NoGroupCommit: true})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 5 {
				if _, err := l.Append(context.Background(), commitRec(t, testID(uint64(w*5+i+1)))); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if s := l.Stats(); s.Syncs != s.Appends || s.MaxBatch != 1 {
		t.Fatalf("stats %+v: want one sync per decision", s)
	}
}

func TestConcurrentSameDecisionGetsOneLSN(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	r := commitRec(t, testID(1))
	lsns := make([]uint64, 16)
	var wg sync.WaitGroup
	for i := range lsns {
		wg.Go(func() { lsns[i] = mustAppend(t, l, r) })
	}
	wg.Wait()
	for _, lsn := range lsns {
		if lsn != lsns[0] {
			t.Fatalf("LSNs %v", lsns)
		}
	}
	if s := l.Stats(); s.Appends != 1 {
		t.Fatalf("Appends %d", s.Appends)
	}
}

// blockWriter makes the writer stop inside its next write transaction
// until release is closed; entered is closed when it got there.
func blockWriter(l *Bolt) (entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	setWriteHook(l, func() error {
		once.Do(func() { close(entered); <-release })
		return nil
	})
	return entered, release
}

func TestAppendContextEndingWhileQueuedWithdrawsTheRecord(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	entered, release := blockWriter(l)
	first := make(chan error, 1)
	go func() { _, err := l.Append(context.Background(), commitRec(t, testID(1))); first <- err }()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Append(ctx, commitRec(t, testID(2))); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued append: err %v, want DeadlineExceeded", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l = reopen(t, l, BoltOptions{})
	if _, err := l.Lookup(testID(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("withdrawn record was written: %v", err)
	}
}

func TestAppendContextEndingInFlightReportsTheRealOutcome(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	entered, release := blockWriter(l)
	ctx, cancel := context.WithCancel(context.Background())
	type res struct {
		lsn uint64
		err error
	}
	done := make(chan res, 1)
	go func() { lsn, err := l.Append(ctx, commitRec(t, testID(1))); done <- res{lsn, err} }()
	<-entered
	cancel()
	close(release)
	r := <-done
	if r.err != nil || r.lsn == 0 {
		t.Fatalf("in-flight append: %d, %v; want its durable LSN", r.lsn, r.err)
	}
}

func TestDiskFailureFailsTheAppendAndEveryLaterWrite(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	mustAppend(t, l, commitRec(t, testID(1)))
	diskErr := errors.New("injected: input/output error")
	setWriteHook(l, func() error { return diskErr })
	_, err := l.Append(context.Background(), commitRec(t, testID(2)))
	if !errors.Is(err, ErrFailed) || !errors.Is(err, diskErr) {
		t.Fatalf("append on failing disk: err %v, want ErrFailed and the cause", err)
	}
	if _, err := l.Lookup(testID(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed record is visible: %v", err)
	}
	setWriteHook(l, nil)
	if _, err := l.Append(context.Background(), commitRec(t, testID(3))); !errors.Is(err, ErrFailed) {
		t.Fatalf("later append: %v, want ErrFailed", err)
	}
	if err := l.End(testID(1)); !errors.Is(err, ErrFailed) {
		t.Fatalf("End: %v", err)
	}
	if err := l.Flush(context.Background()); !errors.Is(err, ErrFailed) {
		t.Fatalf("Flush: %v", err)
	}
	if _, err := l.Compact(context.Background(), time.Now()); !errors.Is(err, ErrFailed) {
		t.Fatalf("Compact: %v", err)
	}
	if err := l.Close(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Close: %v, want the failure reported", err)
	}
	l = openBolt(t, l.Path(), BoltOptions{})
	if _, err := l.Lookup(testID(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Lookup(testID(2)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("record of the failed write: %v", err)
	}
}

func TestDiskFailureDuringCompactionFailsTheLog(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	mustAppend(t, l, commitRec(t, testID(1)))
	_ = l.End(testID(1))
	_ = l.Flush(context.Background())
	setWriteHook(l, func() error { return errors.New("injected") })
	if _, err := l.Compact(context.Background(), time.Now()); !errors.Is(err, ErrFailed) {
		t.Fatalf("Compact: %v", err)
	}
	if _, err := l.Append(context.Background(), commitRec(t, testID(2))); !errors.Is(err, ErrFailed) {
		t.Fatalf("Append after failed compaction: %v", err)
	}
}

func TestLockSecondOpenFailsQuickly(t *testing.T) {
	path := tempPath(t)
	l := openBolt(t, path, BoltOptions{})
	start := time.Now()
	_, err := OpenBolt(path, BoltOptions{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second open: %v; want ErrLocked naming %s", err, path)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("second open took %v", el)
	}
	_ = l.Close()
	l2 := openBolt(t, path, BoltOptions{LockTimeout: 100 * time.Millisecond})
	if l2.Epoch() != 2 {
		t.Fatalf("epoch %d", l2.Epoch())
	}
}

// withBolt runs fn in a write transaction on the closed log file at path.
func withBolt(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// closedLog writes three decisions and one END to a new file and returns
// its path and the decisions' LSNs.
func closedLog(t *testing.T) (string, []uint64) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	var lsns []uint64
	for i := uint64(1); i <= 3; i++ {
		lsns = append(lsns, mustAppend(t, l, commitRec(t, testID(i))))
	}
	_ = l.End(testID(1))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return l.Path(), lsns
}

func wantCorrupt(t *testing.T, path, bucket string, key uint64, reason string) {
	t.Helper()
	_, err := OpenBolt(path, BoltOptions{})
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) {
		t.Fatalf("open: %v; want *CorruptError", err)
	}
	if ce.Path != path || ce.Bucket != bucket || ce.Key != key || !strings.Contains(ce.Reason, reason) {
		t.Fatalf("got %v; want %s bucket %q key %d reason containing %q", ce, path, bucket, key, reason)
	}
}

func TestCorruptFlippedByteFailsOpenNamingTheKey(t *testing.T) {
	path, lsns := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		lb := tx.Bucket(bucketLog)
		v := bytes.Clone(lb.Get(u64(lsns[1])))
		v[len(v)/2] ^= 0x01
		return lb.Put(u64(lsns[1]), v)
	})
	wantCorrupt(t, path, BucketLog, lsns[1], "checksum")
}

func TestCorruptTruncatedRecordFailsOpen(t *testing.T) {
	path, lsns := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		lb := tx.Bucket(bucketLog)
		v := bytes.Clone(lb.Get(u64(lsns[2])))
		return lb.Put(u64(lsns[2]), v[:len(v)-7])
	})
	wantCorrupt(t, path, BucketLog, lsns[2], "checksum")
}

func TestCorruptUnknownRecordVersionFailsOpen(t *testing.T) {
	path, lsns := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		lb := tx.Bucket(bucketLog)
		v := bytes.Clone(lb.Get(u64(lsns[0])))
		v[0] = 9
		return lb.Put(u64(lsns[0]), reseal(v))
	})
	wantCorrupt(t, path, BucketLog, lsns[0], "version 9")
}

func TestCorruptEndWithoutDecisionFailsOpen(t *testing.T) {
	path, _ := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		v, _ := EncodeRecord(Record{Kind: KindEnd, TxID: testID(77)})
		return tx.Bucket(bucketLog).Put(u64(1000), v)
	})
	wantCorrupt(t, path, BucketLog, 1000, "without its decision")
}

func TestCorruptSecondDecisionForOneTxFailsOpen(t *testing.T) {
	path, _ := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		r := commitRec(t, testID(2))
		r.Kind = KindAbort
		v, _ := EncodeRecord(r)
		return tx.Bucket(bucketLog).Put(u64(1000), v)
	})
	wantCorrupt(t, path, BucketLog, 1000, "second decision")
}

// toFormat1 turns the closed log file at path into a version-1 file: it
// adds the tx index that version kept beside the log.
func toFormat1(t *testing.T, path string) {
	t.Helper()
	withBolt(t, path, func(tx *bbolt.Tx) error {
		xb, err := tx.CreateBucket(bucketTx)
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketLog).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			rec, err := DecodeRecord(v)
			if err != nil {
				return err
			}
			if rec.Kind != KindEnd {
				if err := xb.Put(rec.TxID[:], k); err != nil {
					return err
				}
			}
		}
		return tx.Bucket(bucketMeta).Put(keyVersion, u64(fileFormat1))
	})
}

func TestFormat1FileIsCheckedAndUpgraded(t *testing.T) {
	path, lsns := closedLog(t)
	toFormat1(t, path)
	l := openBolt(t, path, BoltOptions{})
	for i, lsn := range lsns {
		d, err := l.Lookup(testID(uint64(i + 1)))
		if err != nil || d.LSN != lsn || d.Ended != (i == 0) {
			t.Fatalf("tx %d: %+v, %v; want LSN %d", i+1, d, err, lsn)
		}
	}
	mustAppend(t, l, commitRec(t, testID(4)))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	withBolt(t, path, func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyVersion); binary.BigEndian.Uint64(v) != fileFormat {
			t.Errorf("format version %x after upgrade, want %d", v, fileFormat)
		}
		if tx.Bucket(bucketTx) != nil {
			t.Errorf("index bucket %q kept after upgrade", BucketTx)
		}
		return nil
	})
	l = openBolt(t, path, BoltOptions{})
	if s := l.Stats(); s.Pending != 3 {
		t.Fatalf("pending %d after upgrade and reopen, want 3", s.Pending)
	}
}

func TestCorruptMissingTxIndexEntryInFormat1FailsOpen(t *testing.T) {
	path, lsns := closedLog(t)
	toFormat1(t, path)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		id := testID(3)
		return tx.Bucket(bucketTx).Delete(id[:])
	})
	wantCorrupt(t, path, BucketTx, lsns[2], "no matching entry")
}

func TestCorruptStrayTxIndexEntryInFormat1FailsOpen(t *testing.T) {
	path, _ := closedLog(t)
	toFormat1(t, path)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		id := testID(0x10)
		return tx.Bucket(bucketTx).Put(id[:], u64(2))
	})
	wantCorrupt(t, path, BucketTx, 2, "holds no decision")
}

func TestBadFileGarbageFailsOpen(t *testing.T) {
	path := tempPath(t)
	garbage := bytes.Repeat([]byte("not a bbolt file "), 4096)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenBolt(path, BoltOptions{})
	if !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), path) {
		t.Fatalf("open garbage: %v; want ErrBadFile naming the path", err)
	}
	t.Log(err)
}

func TestBadFileTruncatedFailsOpen(t *testing.T) {
	for _, keep := range []func(size int64) int64{
		func(size int64) int64 { return size / 2 },
		func(int64) int64 { return 100 },
		func(int64) int64 { return 4096 + 100 },
	} {
		l := openBolt(t, tempPath(t), BoltOptions{})
		var wg sync.WaitGroup
		for w := range 20 {
			wg.Go(func() {
				for i := range 15 {
					r := commitRec(t, testID(uint64(w*15+i+1)), "pg-a", "pg-b", "pg-c", "pg-d")
					r.Who, r.Why = strings.Repeat("w", 200), strings.Repeat("y", 400)
					r.Kind, r.Heuristic = KindAbort, true
					mustAppend(t, l, r)
				}
			})
		}
		wg.Wait()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(l.Path())
		n := keep(fi.Size())
		if err := os.Truncate(l.Path(), n); err != nil {
			t.Fatal(err)
		}
		_, err := OpenBolt(l.Path(), BoltOptions{})
		if !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), l.Path()) {
			t.Fatalf("open file truncated from %d to %d bytes: %v; want ErrBadFile", fi.Size(), n, err)
		}
		t.Log(err)
	}
}

func TestBadFileUnknownFormatVersionFailsOpen(t *testing.T) {
	path, _ := closedLog(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyVersion, binary.BigEndian.AppendUint64(nil, 99))
	})
	_, err := OpenBolt(path, BoltOptions{})
	if !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), "format version 99") {
		t.Fatalf("open: %v; want ErrBadFile naming version 99", err)
	}
}

func TestBadFileOtherBboltFileFailsOpen(t *testing.T) {
	path := tempPath(t)
	withBolt(t, path, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("users"))
		return err
	})
	if _, err := OpenBolt(path, BoltOptions{}); !errors.Is(err, ErrBadFile) {
		t.Fatalf("open: %v; want ErrBadFile", err)
	}
}

func TestRecordsWalksMoreThanOneChunk(t *testing.T) {
	l := openBolt(t, tempPath(t), BoltOptions{})
	const n = recordsChunk*2 + 3
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				mustAppend(t, l, commitRec(t, testID(uint64(i+1))))
			}
		})
	}
	wg.Wait()
	var last uint64
	count := 0
	err := l.Records(func(r Record) error {
		if r.LSN <= last {
			t.Fatalf("LSN %d after %d", r.LSN, last)
		}
		last = r.LSN
		count++
		// fn runs outside a bbolt transaction, so it may write.
		if count == 1 {
			_ = l.End(r.TxID)
			return l.Flush(context.Background())
		}
		return nil
	})
	if err != nil || count < n {
		t.Fatalf("Records: %d records, %v; want at least %d", count, err, n)
	}
}

func TestReadOnlyOpenWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ro.wal")
	if _, err := OpenBolt(path, BoltOptions{ReadOnly: true}); err == nil {
		t.Fatal("a missing log opened read-only")
	}
	b, err := OpenBolt(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ids.NewTxID()
	g, _ := ids.NewGID("txc", "c1", id, "0")
	if _, err := b.Append(context.Background(), Record{Kind: KindCommit, TxID: id, Branches: []Branch{{Resource: "db", GID: g}}}); err != nil {
		t.Fatal(err)
	}
	epoch := b.Epoch()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := OpenBolt(path, BoltOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if ro.Epoch() != epoch {
		t.Fatalf("read-only epoch %d, want the last run's %d", ro.Epoch(), epoch)
	}
	if d, err := ro.Lookup(id); err != nil || d.Kind != KindCommit {
		t.Fatalf("lookup: %v %v", d, err)
	}
	if _, err := ro.Append(context.Background(), Record{Kind: KindCommit, TxID: id, Branches: []Branch{{Resource: "db", GID: g}}}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("append: %v", err)
	}
	if err := ro.End(id); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("end: %v", err)
	}
	if _, err := ro.Compact(context.Background(), time.Now()); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("compact: %v", err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a read-only open changed the file")
	}
}

// Once its END is written, an ended decision leaves memory but not the
// log: Lookup reads it whole from the file, a second decision for it is
// answered or refused as before, and compaction removes it.
func TestEndedDecisionIsReadFromTheFile(t *testing.T) {
	ctx := context.Background()
	l := openBolt(t, tempPath(t), BoltOptions{})
	r := commitRec(t, testID(1))
	r.LSN = mustAppend(t, l, r)
	if err := l.End(testID(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	_, inMemory := l.byTx[testID(1)]
	ref, onDisk := l.onDisk[testID(1)]
	l.mu.Unlock()
	if inMemory || !onDisk || ref.lsn != r.LSN {
		t.Fatalf("after its END was written: in memory %v, on disk %v (%+v)", inMemory, onDisk, ref)
	}
	d, err := l.Lookup(testID(1))
	if err != nil {
		t.Fatal(err)
	}
	sameDecision(t, d, r)
	if !d.Ended || d.EndLSN != ref.endLSN || d.EndTime.IsZero() {
		t.Fatalf("decision read from the file: %+v", d)
	}
	if lsn, err := l.Append(ctx, r); err != nil || lsn != r.LSN {
		t.Fatalf("the same decision again: %d %v, want LSN %d", lsn, err, r.LSN)
	}
	abort := r
	abort.Kind = KindAbort
	if _, err := l.Append(ctx, abort); !errors.Is(err, ErrConflict) {
		t.Fatalf("a contradicting decision: %v, want ErrConflict", err)
	}
	note := r
	note.Holder = "pg-a"
	if err := l.Note(note); err != nil {
		t.Fatalf("noting the same decision: %v", err)
	}
	if n, err := l.Compact(ctx, time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("Compact: %d %v", n, err)
	}
	if _, err := l.Lookup(testID(1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup after compaction: %v, want ErrNotFound", err)
	}
	if s := l.Stats(); s.Appends != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFullJournalSendsTheDecisionToTheFile(t *testing.T) {
	path := tempPath(t)
	l := openBolt(t, path, BoltOptions{EndFlushDelay: time.Hour})
	const n = 250 // about 5 KiB each: more than the journal holds
	for i := uint64(1); i <= n; i++ {
		r := commitRec(t, testID(i))
		r.Heuristic, r.Who, r.Why = true, strings.Repeat("w", 1024), strings.Repeat("y", 4096)
		mustAppend(t, l, r)
	}
	in := journalRecords(t, path)
	if len(in) == 0 || len(in) >= n || in[len(in)-1].lsn != n {
		t.Fatalf("journal holds %d decisions (last %+v): want the ones after it last filled", len(in), in[len(in)-1:])
	}
	l = reopen(t, l, BoltOptions{})
	if p, _ := l.Pending(); len(p) != n {
		t.Fatalf("%d decisions pending after reopening, want %d", len(p), n)
	}
}
