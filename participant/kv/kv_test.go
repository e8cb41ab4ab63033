package kv

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

func TestPrepareThenCommitAppliesWriteSet(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	set(t, s, "a", "1", "b", "2")

	g := newGID(t, "kv1")
	b := begin(t, s, g)
	if err := b.Put(ctx, "a", []byte("10")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "c", []byte("")); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := b.Get(ctx, "a"); !ok || string(v) != "10" {
		t.Fatalf("branch reads its own write: got %q %v", v, ok)
	}
	if _, ok, _ := b.Get(ctx, "b"); ok {
		t.Fatal("branch reads its own delete: key still there")
	}
	mustPrepare(t, b, participant.VoteYes)

	ps, err := s.Prepared(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Raw != g.String() || ps[0].GID != g || !ps[0].Since.Equal(fixedNow) {
		t.Fatalf("Prepared = %+v; want %s since %v", ps, g, fixedNow)
	}
	if got, want := committed(t, s), map[string]string{"a": "1", "b": "2"}; !maps.Equal(got, want) {
		t.Fatalf("prepared work is visible before commit: %v", got)
	}

	if err := s.Commit(ctx, g); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if got, want := committed(t, s), map[string]string{"a": "10", "c": ""}; !maps.Equal(got, want) {
		t.Fatalf("after commit data = %v; want %v", got, want)
	}
	if got := preparedGIDs(t, s); len(got) != 0 {
		t.Fatalf("after commit still prepared: %v", got)
	}
}

func TestRollbackDiscardsWriteSetAndReleasesLocks(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	set(t, s, "a", "1")

	g := newGID(t, "kv1")
	b := begin(t, s, g)
	if err := b.Put(ctx, "a", []byte("2")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := s.Rollback(ctx, g); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if got := committed(t, s); got["a"] != "1" {
		t.Fatalf("rolled back write applied: %v", got)
	}
	if got := preparedGIDs(t, s); len(got) != 0 {
		t.Fatalf("after rollback still prepared: %v", got)
	}
	b2 := begin(t, s, newGID(t, "kv1"))
	if err := b2.Put(ctx, "a", []byte("3")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b2, participant.VoteYes)
}

func TestIdempotence_SecondCommitIsProvenSecondRollbackIsUnknownBranch(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	for _, tc := range []struct {
		name   string
		finish func(context.Context, ids.GID) error
	}{
		{"commit", s.Commit},
		{"rollback", s.Rollback},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGID(t, "kv1")
			b := begin(t, s, g)
			if err := b.Put(ctx, "k-"+tc.name, []byte("v")); err != nil {
				t.Fatal(err)
			}
			mustPrepare(t, b, participant.VoteYes)
			if err := tc.finish(ctx, g); err != nil {
				t.Fatalf("first %s: %v", tc.name, err)
			}
			before := committed(t, s)
			err := tc.finish(ctx, g)
			if tc.name == "commit" {
				// The tombstone proves the first commit.
				if err != nil {
					t.Fatalf("second commit = %v; want nil (proven)", err)
				}
			} else if !errors.Is(err, participant.ErrUnknownBranch) {
				t.Fatalf("second %s = %v; want ErrUnknownBranch", tc.name, err)
			}
			if after := committed(t, s); !maps.Equal(before, after) {
				t.Fatalf("second %s changed data: %v -> %v", tc.name, before, after)
			}
			// A second Prepare of the same branch gives the same answer and
			// writes nothing.
			if v, err := b.Prepare(ctx); v != participant.VoteYes || err != nil {
				t.Fatalf("second Prepare = %v, %v", v, err)
			}
			if got := preparedGIDs(t, s); len(got) != 0 {
				t.Fatalf("second Prepare wrote an entry: %v", got)
			}
		})
	}
	if err := s.Commit(ctx, newGID(t, "kv1")); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("Commit of a never prepared gid = %v; want ErrUnknownBranch", err)
	}
}

func TestConflictingBranches_OnePrepareVotesNo(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	set(t, s, "balance", "100")

	incr := func(b *Branch) {
		t.Helper()
		n, _, err := b.GetInt64(ctx, "balance")
		if err != nil {
			t.Fatal(err)
		}
		if err := b.PutInt64(ctx, "balance", n+1); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("both prepare", func(t *testing.T) {
		g1, g2 := newGID(t, "kv1"), newGID(t, "kv1")
		b1, b2 := begin(t, s, g1), begin(t, s, g2)
		incr(b1)
		incr(b2)
		mustPrepare(t, b1, participant.VoteYes)
		mustConflict(t, b2)
		if err := b2.Abort(ctx); err != nil {
			t.Fatalf("Abort after no vote: %v", err)
		}
		if err := s.Commit(ctx, g1); err != nil {
			t.Fatal(err)
		}
		if got := committed(t, s)["balance"]; got != "101" {
			t.Fatalf("balance = %s; want 101 (one increment)", got)
		}
	})

	t.Run("first commits before second prepares", func(t *testing.T) {
		b1, b2 := begin(t, s, newGID(t, "kv1")), begin(t, s, newGID(t, "kv1"))
		incr(b1)
		incr(b2)
		if err := b1.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
		mustConflict(t, b2)
		if got := committed(t, s)["balance"]; got != "102" {
			t.Fatalf("balance = %s; want 102", got)
		}
	})

	t.Run("one-phase commit after a changed read", func(t *testing.T) {
		b1, b2 := begin(t, s, newGID(t, "kv1")), begin(t, s, newGID(t, "kv1"))
		incr(b1)
		incr(b2)
		if err := b1.CommitOnePhase(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b2.CommitOnePhase(ctx); !errors.Is(err, ErrConflict) {
			t.Fatalf("second CommitOnePhase = %v; want ErrConflict", err)
		}
		if got := committed(t, s)["balance"]; got != "103" {
			t.Fatalf("balance = %s; want 103", got)
		}
	})
}

func TestPreparedBranchBlocksConflictingPrepareUntilCommitted(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	set(t, s, "w", "0", "r", "0")

	// A reads r and writes w, and is prepared.
	gA := newGID(t, "kv1")
	a := begin(t, s, gA)
	if _, _, err := a.Get(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if err := a.Put(ctx, "w", []byte("A")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, a, participant.VoteYes)

	// Branches begun after A prepared see the committed versions A saw, so
	// only A's locks can stop them.
	writesW := begin(t, s, newGID(t, "kv1"))
	if err := writesW.Put(ctx, "w", []byte("B")); err != nil {
		t.Fatal(err)
	}
	mustConflict(t, writesW)

	readsW := begin(t, s, newGID(t, "kv1"))
	if _, _, err := readsW.Get(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	mustConflict(t, readsW)

	writesR := begin(t, s, newGID(t, "kv1"))
	if err := writesR.Put(ctx, "r", []byte("B")); err != nil {
		t.Fatal(err)
	}
	if err := writesR.CommitOnePhase(ctx); !errors.Is(err, ErrConflict) {
		t.Fatalf("one-phase write of a key a prepared branch read = %v; want ErrConflict", err)
	}

	// A key only read by A is shared with other readers.
	readsR := begin(t, s, newGID(t, "kv1"))
	if _, _, err := readsR.Get(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	if err := readsR.Put(ctx, "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, readsR, participant.VoteYes)
	if err := s.Commit(ctx, readsR.GID()); err != nil {
		t.Fatal(err)
	}

	if err := s.Commit(ctx, gA); err != nil {
		t.Fatal(err)
	}
	after := begin(t, s, newGID(t, "kv1"))
	if v, _, err := after.Get(ctx, "w"); err != nil || string(v) != "A" {
		t.Fatalf("Get(w) after commit = %q, %v; want A", v, err)
	}
	if err := after.Put(ctx, "w", []byte("C")); err != nil {
		t.Fatal(err)
	}
	if err := after.Put(ctx, "r", []byte("C")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, after, participant.VoteYes)
	if err := s.Commit(ctx, after.GID()); err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyBranchVotesReadOnlyWithoutWriting(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	set(t, s, "a", "1")
	txID := func() int {
		var id int
		if err := s.db.View(func(tx *bolt.Tx) error { id = int(tx.ID()); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}

	before := txID()
	b := begin(t, s, newGID(t, "kv1"))
	if v, ok, err := b.Get(ctx, "a"); err != nil || !ok || string(v) != "1" {
		t.Fatalf("Get = %q %v %v", v, ok, err)
	}
	if _, ok, err := b.Get(ctx, "missing"); err != nil || ok {
		t.Fatalf("Get(missing) = %v %v", ok, err)
	}
	mustPrepare(t, b, participant.VoteReadOnly)
	if after := txID(); after != before {
		t.Fatalf("read-only prepare wrote to disk: transaction id %d -> %d", before, after)
	}
	if got := preparedGIDs(t, s); len(got) != 0 {
		t.Fatalf("read-only branch listed as prepared: %v", got)
	}
	if err := b.Abort(ctx); err != nil {
		t.Fatalf("Abort after read-only vote: %v", err)
	}

	// A read-only branch whose read changed votes no.
	stale := begin(t, s, newGID(t, "kv1"))
	if _, _, err := stale.Get(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	set(t, s, "a", "2")
	mustConflict(t, stale)
}

func TestBranchLifecycle(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))

	t.Run("gid in use", func(t *testing.T) {
		g := newGID(t, "kv1")
		b := begin(t, s, g)
		if _, err := s.Begin(ctx, g); !errors.Is(err, ErrGIDInUse) {
			t.Fatalf("Begin of a live gid = %v; want ErrGIDInUse", err)
		}
		if err := b.Put(ctx, "x", []byte("1")); err != nil {
			t.Fatal(err)
		}
		mustPrepare(t, b, participant.VoteYes)
		if _, err := s.Begin(ctx, g); !errors.Is(err, ErrGIDInUse) {
			t.Fatalf("Begin of a prepared gid = %v; want ErrGIDInUse", err)
		}
		if err := b.Abort(ctx); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Abort of a prepared branch = %v; want ErrBranchDone", err)
		}
		if err := s.Rollback(ctx, g); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("abort drops work", func(t *testing.T) {
		b := begin(t, s, newGID(t, "kv1"))
		if err := b.Put(ctx, "aborted", []byte("1")); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := b.Abort(ctx); err != nil {
				t.Fatalf("Abort: %v", err)
			}
		}
		if err := b.Put(ctx, "aborted", []byte("1")); !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Put after Abort = %v; want ErrBranchDone", err)
		}
		if v, err := b.Prepare(ctx); v != participant.VoteNo || !errors.Is(err, participant.ErrBranchDone) {
			t.Fatalf("Prepare after Abort = %v, %v; want no, ErrBranchDone", v, err)
		}
		if _, ok := committed(t, s)["aborted"]; ok {
			t.Fatal("aborted write applied")
		}
	})

	t.Run("one-phase commit twice", func(t *testing.T) {
		b := begin(t, s, newGID(t, "kv1"))
		if err := b.PutInt64(ctx, "n", -42); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := b.CommitOnePhase(ctx); err != nil {
				t.Fatalf("CommitOnePhase: %v", err)
			}
		}
		r := begin(t, s, newGID(t, "kv1"))
		if n, ok, err := r.GetInt64(ctx, "n"); n != -42 || !ok || err != nil {
			t.Fatalf("GetInt64 = %d %v %v", n, ok, err)
		}
	})

	t.Run("invalid keys", func(t *testing.T) {
		b := begin(t, s, newGID(t, "kv1"))
		if err := b.Put(ctx, "", nil); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("Put empty key = %v", err)
		}
		if err := b.Put(ctx, strings.Repeat("k", bolt.MaxKeySize+1), nil); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("Put oversized key = %v", err)
		}
		set(t, s, "text", "abc")
		if _, _, err := b.GetInt64(ctx, "text"); !errors.Is(err, ErrNotInt64) {
			t.Fatalf("GetInt64 of text = %v; want ErrNotInt64", err)
		}
	})

	t.Run("bad gid", func(t *testing.T) {
		if _, err := s.Begin(ctx, ids.GID{}); !errors.Is(err, ids.ErrBadGID) {
			t.Fatalf("Begin zero gid = %v; want ErrBadGID", err)
		}
	})
}

func TestReopenKeepsPreparedBranchesAndTheirLocks(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	s := openStore(t, path)
	set(t, s, "a", "1")
	g := newGID(t, "kv1")
	b := begin(t, s, g)
	if err := b.Put(ctx, "a", []byte("2")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Begin(ctx, newGID(t, "kv1")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Begin after Close = %v; want ErrClosed", err)
	}

	s2 := openStore(t, path)
	if got := preparedGIDs(t, s2); !slices.Equal(got, []string{g.String()}) {
		t.Fatalf("after reopen prepared = %v; want [%s]", got, g)
	}
	blocked := begin(t, s2, newGID(t, "kv1"))
	if err := blocked.Put(ctx, "a", []byte("3")); err != nil {
		t.Fatal(err)
	}
	mustConflict(t, blocked)

	if err := s2.Commit(ctx, g); err != nil {
		t.Fatalf("Commit after reopen: %v", err)
	}
	if got := committed(t, s2)["a"]; got != "2" {
		t.Fatalf("a = %q after commit; want 2", got)
	}
	free := begin(t, s2, newGID(t, "kv1"))
	if err := free.Put(ctx, "a", []byte("3")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, free, participant.VoteYes)
	if err := s2.Rollback(ctx, free.GID()); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptPreparedEntryFailsOpenNamingTheGID(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	s := openStore(t, path)
	g := newGID(t, "kv1")
	b := begin(t, s, g)
	if err := b.Put(ctx, "a", []byte("value")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bucketPrepared)
		v := append([]byte{}, pb.Get([]byte(g.String()))...)
		v[len(v)-1] ^= 0x01
		return pb.Put([]byte(g.String()), v)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	_, err = Open(path, "kv1", Options{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), g.String()) {
		t.Fatalf("Open with a corrupt prepared entry = %v; want ErrCorrupt naming %s", err, g)
	}
	// The failed Open released the file.
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("file still locked after failed Open: %v", err)
	}
	_ = db.Close()
}

func TestOpenFailsClearlyWhenFileIsLocked(t *testing.T) {
	path := tempPath(t)
	openStore(t, path)
	_, err := Open(path, "kv1", Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open = %v; want ErrLocked naming %s", err, path)
	}
}

func TestOpenValidatesName(t *testing.T) {
	_, err := Open(tempPath(t), "bad name", Options{})
	if !errors.Is(err, ids.ErrBadGID) {
		t.Fatalf("Open with a bad name = %v; want ErrBadGID", err)
	}
}

func TestEnlistReturnsTypedBranch(t *testing.T) {
	s := openStore(t, tempPath(t))
	tx := enlisterFunc(func(ctx context.Context, r participant.Resource) (participant.Branch, error) {
		return r.Begin(ctx, newGID(t, "kv1"))
	})
	b, err := s.Enlist(context.Background(), tx)
	if err != nil || b == nil || b.Resource() != participant.Resource(s) {
		t.Fatalf("Enlist = %v, %v", b, err)
	}
	bad := enlisterFunc(func(context.Context, participant.Resource) (participant.Branch, error) {
		return nil, fmt.Errorf("refused")
	})
	if _, err := s.Enlist(context.Background(), bad); err == nil {
		t.Fatal("Enlist hid the transaction's error")
	}
}

type enlisterFunc func(context.Context, participant.Resource) (participant.Branch, error)

func (f enlisterFunc) Enlist(ctx context.Context, r participant.Resource) (participant.Branch, error) {
	return f(ctx, r)
}

// A commit is proven by its tombstone until the coordinator forgets it; a
// rolled-back or never-prepared gid has none.
func TestTombstonesProveCommitsUntilForgotten(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, tempPath(t))
	g := newGID(t, "kv1")
	b := begin(t, s, g)
	if err := b.Put(ctx, "tomb", []byte("v")); err != nil {
		t.Fatal(err)
	}
	mustPrepare(t, b, participant.VoteYes)
	if err := s.Commit(ctx, g); err != nil {
		t.Fatal(err)
	}
	owner := g.Prefix + "." + g.Coordinator
	got, err := s.Proofs(ctx, owner)
	if err != nil || len(got) != 1 || got[0] != g {
		t.Fatalf("Proofs = %v, %v; want [%s]", got, err, g)
	}
	if other, _ := s.Proofs(ctx, owner+"x"); len(other) != 0 {
		t.Fatalf("tombstones of another owner: %v", other)
	}
	never := newGID(t, "kv2")
	if err := s.Commit(ctx, never); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit of a never-prepared gid = %v", err)
	}
	if err := s.ForgetProofs(ctx, []ids.GID{g}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, g); !errors.Is(err, participant.ErrUnknownBranch) {
		t.Fatalf("commit after its tombstone was forgotten = %v", err)
	}
}
