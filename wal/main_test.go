package wal

import (
	"context"
	"encoding/binary"
	"os"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/txcoord/txcoord/ids"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperModeEnv); mode != "" {
		os.Exit(crashHelper(mode, os.Getenv(helperPathEnv)))
	}
	goleak.VerifyTestMain(m)
}

// testID returns a fixed, valid transaction id for n. Ids of neighbouring
// n share their first 15 bytes.
func testID(n uint64) ids.TxID {
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

// commitRec is a COMMIT decision for id with one branch per resource.
func commitRec(t testing.TB, id ids.TxID, resources ...string) Record {
	t.Helper()
	if len(resources) == 0 {
		resources = []string{"pg-a", "pg-b"}
	}
	r := Record{Kind: KindCommit, TxID: id, Time: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
	for i, res := range resources {
		r.Branches = append(r.Branches, Branch{Resource: res, GID: testGID(t, id, string(rune('a'+i)))})
	}
	return r
}

func openBolt(t testing.TB, path string, opts BoltOptions) *Bolt {
	t.Helper()
	l, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func mustAppend(t testing.TB, l Log, r Record) uint64 {
	t.Helper()
	lsn, err := l.Append(context.Background(), r)
	if err != nil {
		t.Fatalf("Append %s: %v", r.TxID, err)
	}
	return lsn
}

// setWriteHook installs fn inside every later write transaction of b.
func setWriteHook(b *Bolt, fn func() error) {
	b.mu.Lock()
	b.writeHook = fn
	b.mu.Unlock()
}

func sameDecision(t *testing.T, got Decision, want Record) {
	t.Helper()
	if got.LSN != want.LSN || got.Kind != want.Kind || got.TxID != want.TxID || !got.Time.Equal(want.Time) ||
		!reflect.DeepEqual(got.Branches, want.Branches) || got.Heuristic != want.Heuristic || got.Who != want.Who || got.Why != want.Why {
		t.Fatalf("decision\n got %+v\nwant %+v", got.Record, want)
	}
}
