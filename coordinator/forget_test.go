package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/participant/fake"
	"github.com/txcoord/txcoord/wal"
)

// provingFake is a fake resource that keeps proofs (markers) of its
// commits, and records which the forgetter deleted.
type provingFake struct {
	*fake.Resource
	mu        sync.Mutex
	forgotten []ids.GID
}

func (p *provingFake) ForgetProofs(_ context.Context, gids []ids.GID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forgotten = append(p.forgotten, gids...)
	return nil
}

func (p *provingFake) Proofs(context.Context, string) ([]ids.GID, error) { return nil, nil }

func (p *provingFake) deleted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.forgotten)
}

// Markers of a transaction whose driver ends after Close has told the
// drivers to stop are deleted by the forgetter's last batch: the forgetter
// stops only once the drivers are done.
func TestMarkersQueuedWhileClosingAreForgotten(t *testing.T) {
	a := &provingFake{Resource: fake.New("a")}
	c, err := New(context.Background(), Config{ID: "forget", Log: wal.NewMem(), Resources: []participant.Resource{a}, RecoveryInterval: -1, ForgetInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ids.NewTxID()
	if err != nil {
		t.Fatal(err)
	}
	gid, err := ids.NewGID(c.Prefix(), c.ID(), id, "0")
	if err != nil {
		t.Fatal(err)
	}
	c.cancel()                        // Close's first step: the drivers are told to stop
	time.Sleep(50 * time.Millisecond) // a forgetter that stopped here would have made its last batch
	// A driver finishing its phase two meanwhile writes END and queues
	// the branch's marker.
	c.forgetter.add(nil, id, []participant.Resource{a}, []ids.GID{gid})
	c.Close()
	if a.deleted() != 1 || c.forgetter.pending() != 0 {
		t.Fatalf("%d markers deleted, %d still queued after Close; want the one deleted", a.deleted(), c.forgetter.pending())
	}
}
