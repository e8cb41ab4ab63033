package coordinator

import (
	"sync"

	"github.com/txcoord/txcoord/ids"
)

// abortedKept is how many aborted transactions a coordinator remembers for
// recovery (about 40 bytes each): enough for the aborts of a busy minute.
// Older ones fall back to the InDoubtTimeout rule.
const abortedKept = 16384

// abortedSet remembers the transactions this run aborted, the newest
// abortedKept of them. A recovery pass rolls back a prepared branch of
// one at once: a prepare whose answer was lost can complete on the server
// after the rollback found nothing there, and no COMMIT can come for it.
type abortedSet struct {
	mu   sync.Mutex
	ids  map[ids.TxID]struct{}
	ring []ids.TxID
	next int
}

func (s *abortedSet) add(id ids.TxID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = make(map[ids.TxID]struct{})
	}
	if _, ok := s.ids[id]; ok {
		return
	}
	if len(s.ring) < abortedKept {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % abortedKept
	}
	s.ids[id] = struct{}{}
}

func (s *abortedSet) has(id ids.TxID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[id]
	return ok
}
