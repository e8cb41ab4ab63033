package coordinator

import (
	"sort"

	"github.com/txcoord/txcoord/ids"
)

// A heuristic hazard is a committed transaction with a branch that its
// resource neither holds prepared nor can prove committed (see
// ErrHeuristicHazard). The registry below holds those found this run, by
// the transaction's own phase two or by recovery, until an operator ends
// them; recovery finds them again after a restart.

// hazard records that transaction id is a heuristic hazard (the first
// time, it is counted and logged as an error).
func (c *Coordinator) hazard(id ids.TxID, cause error) {
	c.hazardMu.Lock()
	if c.hazards == nil {
		c.hazards = map[ids.TxID]error{}
	}
	_, seen := c.hazards[id]
	c.hazards[id] = cause
	c.hazardMu.Unlock()
	if !seen {
		c.stats.hazards.Add(1)
		c.logger.Error("heuristic hazard: a branch of a committed transaction was not prepared and nothing proves it committed; it may be only partly applied. Check that branch's database, then end it with txctl resolve --commit --accept-hazard",
			"txid", id, "err", cause)
	}
}

// Hazard returns why transaction id is a heuristic hazard, or nil if it
// is not known as one.
func (c *Coordinator) Hazard(id ids.TxID) error {
	c.hazardMu.Lock()
	defer c.hazardMu.Unlock()
	return c.hazards[id]
}

// HazardList returns the heuristic hazards found this run that no
// operator has ended, sorted.
func (c *Coordinator) HazardList() []ids.TxID {
	c.hazardMu.Lock()
	defer c.hazardMu.Unlock()
	out := make([]ids.TxID, 0, len(c.hazards))
	for id := range c.hazards {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// openHazards counts the hazards no operator has ended.
func (c *Coordinator) openHazards() int {
	c.hazardMu.Lock()
	defer c.hazardMu.Unlock()
	return len(c.hazards)
}

// hazardEnded forgets hazard id: an operator accepted and ended it.
func (c *Coordinator) hazardEnded(id ids.TxID) {
	c.hazardMu.Lock()
	delete(c.hazards, id)
	c.hazardMu.Unlock()
}
