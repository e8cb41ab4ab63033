package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/etcdtest"
	"github.com/txcoord/txcoord/wal"
	etcdwal "github.com/txcoord/txcoord/wal/etcd"
	"github.com/txcoord/txcoord/wal/waltest"
)

// cli is a client of the etcd cluster TestMain starts (three real
// members in this process, with their fsync on).
var cli *clientv3.Client

// cluster is that cluster.
var cluster *etcdtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(func() int {
		c, err := etcdtest.Start(3)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		cluster = c
		cli, err = clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cli.Close()
		return m.Run()
	}())
}

var prefixes atomic.Int64

// newPrefix is a key prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("/txcoord-test/%d/", prefixes.Add(1)) }

func open(t *testing.T, opts etcdwal.Options) *etcdwal.Log {
	t.Helper()
	l, err := etcdwal.Open(context.Background(), cli, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestConformance(t *testing.T) {
	waltest.Run(t, func(t *testing.T) wal.Log { return open(t, etcdwal.Options{Prefix: newPrefix()}) })
}

// What one process wrote, the next reads: decisions, ENDs, notes, the
// horizon; and the epoch grows by one per open.
func TestReopenReadsWhatEtcdHolds(t *testing.T) {
	p := newPrefix()
	ctx := context.Background()
	l, err := etcdwal.Open(ctx, cli, etcdwal.Options{Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	a := waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(1)))
	waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(2)))
	note := waltest.CommitRec(t, waltest.TestID(3))
	note.Holder = "pg-a"
	if err := l.Note(note); err != nil {
		t.Fatal(err)
	}
	if err := l.End(waltest.TestID(2)); err != nil {
		t.Fatal(err)
	}
	id, created := l.LogID(), l.Created()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := open(t, etcdwal.Options{Prefix: p})
	if r.Epoch() != 2 || r.LogID() != id || !r.Created().Equal(created) {
		t.Fatalf("reopened: epoch %d, id %s (was %s), created %v (was %v)", r.Epoch(), r.LogID(), id, r.Created(), created)
	}
	pend, err := r.Pending()
	if err != nil || len(pend) != 1 || pend[0].LSN != a {
		t.Fatalf("pending after reopen: %+v %v", pend, err)
	}
	for _, n := range []uint64{2, 3} {
		if d, err := r.Lookup(waltest.TestID(n)); err != nil || !d.Ended {
			t.Fatalf("tx %d after reopen: %+v %v", n, d, err)
		}
	}
	if lsn := waltest.MustAppend(t, r, waltest.CommitRec(t, waltest.TestID(4))); lsn <= a {
		t.Fatalf("an LSN after reopen (%d) is not past the old ones (%d)", lsn, a)
	}
}

// Concurrent decisions share etcd transactions: 64 writers at once need
// far fewer than 64.
func TestGroupCommitSharesTransactions(t *testing.T) {
	l := open(t, etcdwal.Options{Prefix: newPrefix()})
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() { waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(uint64(i+1)))) })
	}
	wg.Wait()
	s := l.Stats()
	if s.Appends != 64 || s.Syncs >= 64 || s.MaxBatch < 2 {
		t.Fatalf("stats %+v: want 64 appends in fewer transactions", s)
	}
	t.Logf("64 concurrent decisions in %d etcd transactions (largest %d)", s.Syncs, s.MaxBatch)
}

// A write whose fence fails (another process took the log) is refused, and
// the log writes nothing more: a deposed primary cannot decide.
func TestFencedWriterDecidesNothing(t *testing.T) {
	ctx := context.Background()
	p := newPrefix()
	owner := p + "owner"
	put, err := cli.Put(ctx, owner, "me")
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision
	fence := func() []clientv3.Cmp {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(owner), "=", rev)}
	}
	l := open(t, etcdwal.Options{Prefix: p, Fence: fence})
	waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(1)))
	// Another process takes over: the key is made again.
	if _, err := cli.Delete(ctx, owner); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, owner, "them"); err != nil {
		t.Fatal(err)
	}
	_, err = l.Append(ctx, waltest.CommitRec(t, waltest.TestID(2)))
	if !errors.Is(err, etcdwal.ErrFenced) || !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("a decision after losing the fence: %v, want ErrFenced", err)
	}
	if _, err := l.Append(ctx, waltest.CommitRec(t, waltest.TestID(3))); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("a later decision: %v, want the log failed", err)
	}
	resp, err := cli.Get(ctx, p+"rec/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Fatalf("records in etcd: %d %v, want the one written before the fence moved", resp.Count, err)
	}
	if _, err := etcdwal.Open(ctx, cli, etcdwal.Options{Prefix: p, Fence: fence}); !errors.Is(err, etcdwal.ErrFenced) {
		t.Fatalf("opening behind a failed fence: %v, want ErrFenced", err)
	}
}

// Compact deletes ended transactions and, once per HistoryInterval, drops
// etcd's history up to the revision its previous pass saw: a deleted
// record's old revisions go too, so the keyspace and its history stay
// bounded. KeepHistory leaves the history alone.
func TestCompactDropsEtcdHistory(t *testing.T) {
	ctx := context.Background()
	p := newPrefix()
	l := open(t, etcdwal.Options{Prefix: p, HistoryInterval: time.Nanosecond})
	ended := func(n uint64) {
		waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(n)))
		if err := l.End(waltest.TestID(n)); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ended(1)
	before, err := cli.Get(ctx, p+"rec/", clientv3.WithPrefix())
	if err != nil || len(before.Kvs) != 2 {
		t.Fatalf("records before compaction: %v %v, want a decision and its END", before.Kvs, err)
	}
	old := before.Header.Revision
	if n, err := l.Compact(ctx, time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("first compaction: %d %v, want 1 transaction", n, err)
	}
	if got := l.HistoryCompactedTo(); got != 0 {
		t.Fatalf("the first pass compacted history to %d; it only notes the revision", got)
	}
	// The deleted records are still in the history, for watchers.
	if resp, err := cli.Get(ctx, p+"rec/", clientv3.WithPrefix(), clientv3.WithRev(old)); err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("history at revision %d after one pass: %v %v, want the two records", old, resp, err)
	}
	ended(2)
	if n, err := l.Compact(ctx, time.Now().Add(time.Second)); n != 1 || err != nil {
		t.Fatalf("second compaction: %d %v", n, err)
	}
	to := l.HistoryCompactedTo()
	if to <= old {
		t.Fatalf("history compacted to %d, want past %d", to, old)
	}
	if _, err := cli.Get(ctx, p+"rec/", clientv3.WithPrefix(), clientv3.WithRev(old)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("history at revision %d after two passes: %v, want it compacted", old, err)
	}
	if resp, err := cli.Get(ctx, p+"rec/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("records left: %v %v", resp, err)
	}

	keep := open(t, etcdwal.Options{Prefix: newPrefix(), HistoryInterval: time.Nanosecond, KeepHistory: true})
	for range 2 {
		if _, err := keep.Compact(ctx, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if got := keep.HistoryCompactedTo(); got != 0 {
		t.Fatalf("KeepHistory: history compacted to %d", got)
	}
}

// Flush returns nil only once the notes and ENDs handed over before it are
// in etcd, even when the writer has taken them already and is writing
// them: a holder's row is deleted on Flush's word, and a note that is then
// lost (its write fenced: a standby took over) would turn a committed
// transaction into a presumed abort.
func TestFlushWaitsForTheNoteBeingWritten(t *testing.T) {
	ctx := context.Background()
	var hold atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	owner := newPrefix() + "owner"
	fence := func() []clientv3.Cmp {
		if hold.Load() {
			once.Do(func() { close(entered) })
			<-release
			// Deposed meanwhile: the compare fails.
			return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(owner), "=", 12345)}
		}
		return nil
	}
	l := open(t, etcdwal.Options{Prefix: newPrefix(), Fence: fence, EndFlushDelay: time.Millisecond})
	var released sync.Once
	unblock := func() { released.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the log's Close, which waits for the writer
	waltest.MustAppend(t, l, waltest.CommitRec(t, waltest.TestID(1)))
	hold.Store(true)
	note := waltest.CommitRec(t, waltest.TestID(2))
	note.Holder = "pg-a"
	if err := l.Note(note); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered: // the writer took the note and is writing it
	case <-time.After(10 * time.Second):
		t.Fatal("the note was not written")
	}
	flushed := make(chan error, 1)
	go func() { flushed <- l.Flush(ctx) }()
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned %v while the note's write was still in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	unblock()
	select {
	case err := <-flushed:
		if !errors.Is(err, etcdwal.ErrFenced) {
			t.Fatalf("Flush after the note's write was fenced: %v, want ErrFenced", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Flush did not return")
	}
}

// A record etcd holds that does not decode stops Open with a CorruptError.
func TestCorruptRecordIsReported(t *testing.T) {
	p := newPrefix()
	if _, err := cli.Put(context.Background(), p+"rec/00000000000000000001", "garbage"); err != nil {
		t.Fatal(err)
	}
	_, err := etcdwal.Open(context.Background(), cli, etcdwal.Options{Prefix: p})
	var ce *wal.CorruptError
	if !errors.As(err, &ce) || ce.Key != 1 {
		t.Fatalf("err %v, want a CorruptError at LSN 1", err)
	}
	if _, err := etcdwal.Open(context.Background(), cli, etcdwal.Options{Prefix: "no-slash"}); err == nil {
		t.Fatal("a prefix without a trailing slash was accepted")
	}
}

// Decisions per second on etcd (three members in this process, fsync on)
// at 1, 8 and 64 writers, beside the bbolt log on this machine's disk in
// the same run.
func BenchmarkAppend(b *testing.B) {
	logs := []struct {
		name string
		open func(b *testing.B) wal.Log
	}{
		{"etcd", func(b *testing.B) wal.Log {
			l, err := etcdwal.Open(context.Background(), cli, etcdwal.Options{Prefix: newPrefix()})
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
		{"bbolt", func(b *testing.B) wal.Log {
			l, err := wal.OpenBolt(filepath.Join(b.TempDir(), "wal.db"), wal.BoltOptions{})
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
	}
	for _, lg := range logs {
		for _, writers := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%s/writers-%d", lg.name, writers), func(b *testing.B) {
				l := lg.open(b)
				defer l.Close()
				var n atomic.Uint64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range writers {
					wg.Go(func() {
						for {
							i := n.Add(1)
							if i > uint64(b.N) {
								return
							}
							waltest.MustAppend(b, l, waltest.CommitRec(b, waltest.TestID(i)))
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
			})
		}
	}
}

// The leader of three members killed under load loses nothing: writes
// wait out the election, and every decision the log acknowledged is read
// back by a new open.
func TestOneMemberDownLosesNothing(t *testing.T) {
	c, err := etcdtest.Start(3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	p := newPrefix()
	l, err := etcdwal.Open(context.Background(), cl, etcdwal.Options{Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Uint64
	var acked sync.Map
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := waltest.TestID(n.Add(1))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := l.Append(ctx, waltest.CommitRec(t, id))
				cancel()
				if err != nil {
					t.Errorf("append while a member is down: %v", err)
					return
				}
				acked.Store(id, true)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	// The Raft leader goes: writes wait for an election, and are tried
	// again meanwhile.
	leader := -1
	for i, ep := range c.Endpoints {
		st, err := cl.Status(context.Background(), ep)
		if err == nil && st.Leader == st.Header.MemberId {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no member says it leads")
	}
	c.Stop(leader)
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := etcdwal.Open(context.Background(), cl, etcdwal.Options{Prefix: p})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	count := 0
	acked.Range(func(k, _ any) bool {
		count++
		if _, err := r.Lookup(k.(ids.TxID)); err != nil {
			t.Errorf("acknowledged decision %v lost: %v", k, err)
		}
		return true
	})
	t.Logf("%d decisions acknowledged with a member killed among them, all read back", count)
	if count == 0 {
		t.Fatal("nothing was appended")
	}
}
