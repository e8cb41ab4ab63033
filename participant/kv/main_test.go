package kv

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

func TestMain(m *testing.M) {
	if mode := helperMode(); mode != "" {
		runHelper(mode)
		return
	}
	goleak.VerifyTestMain(m)
}

// fixedNow is the clock of stores opened by tests.
var fixedNow = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, "kv1", Options{Now: func() time.Time { return fixedNow }})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func tempPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "kv.db")
}

func newGID(t testing.TB, branch string) ids.GID {
	t.Helper()
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ids.NewGID("txc", "test", id, branch)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func begin(t testing.TB, s *Store, gid ids.GID) *Branch {
	t.Helper()
	b, err := s.begin(context.Background(), gid)
	if err != nil {
		t.Fatalf("Begin(%s): %v", gid, err)
	}
	return b
}

// set commits key=value in one phase.
func set(t *testing.T, s *Store, kvs ...string) {
	t.Helper()
	ctx := context.Background()
	b := begin(t, s, newGID(t, "setup"))
	for i := 0; i+1 < len(kvs); i += 2 {
		if err := b.Put(ctx, kvs[i], []byte(kvs[i+1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatalf("CommitOnePhase: %v", err)
	}
}

// committed returns the committed data as key=value pairs.
func committed(t *testing.T, s *Store) map[string]string {
	t.Helper()
	m, err := s.Scan(context.Background(), "")
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

func preparedGIDs(t *testing.T, s *Store) []string {
	t.Helper()
	ps, err := s.Prepared(context.Background())
	if err != nil {
		t.Fatalf("Prepared: %v", err)
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.Raw)
	}
	return out
}

func mustPrepare(t *testing.T, b *Branch, want participant.Vote) {
	t.Helper()
	v, err := b.Prepare(context.Background())
	if v != want {
		t.Fatalf("Prepare(%s) = %v, %v; want %v", b.GID(), v, err, want)
	}
	if want != participant.VoteNo && err != nil {
		t.Fatalf("Prepare(%s) = %v with error %v", b.GID(), v, err)
	}
}

func mustConflict(t *testing.T, b *Branch) {
	t.Helper()
	v, err := b.Prepare(context.Background())
	if v != participant.VoteNo || !errors.Is(err, ErrConflict) {
		t.Fatalf("Prepare(%s) = %v, %v; want no vote with ErrConflict", b.GID(), v, err)
	}
}
