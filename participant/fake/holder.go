package fake

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

var _ participant.DecisionHolder = (*Holder)(nil)

// HolderHooks inject faults into a Holder. Each may be nil.
type HolderHooks struct {
	// CommitDecision runs before a holder commit. It returns the error the
	// commit reports and whether the commit still happens (a lost reply:
	// an error wrapping participant.ErrOutcomeUnknown with apply true).
	CommitDecision func(ctx context.Context, d participant.Decision) (err error, apply bool)
	// Fence runs before a fence; an error fails it (the holder cannot be
	// reached).
	Fence func(ctx context.Context, txids []ids.TxID) error
	// Forget runs before rows are deleted; an error keeps them.
	Forget func(ctx context.Context, txids []ids.TxID) error
}

// Holder is a fake resource that can hold decisions: the rows live in
// memory, keyed by transaction id as a table's primary key would be.
type Holder struct {
	*Resource

	hmu    sync.Mutex
	hhooks HolderHooks
	rows   map[ids.TxID]participant.Decision
	open   map[ids.TxID]*HolderBranch // holder branches not yet finished
}

// NewHolder returns an empty fake decision holder.
func NewHolder(name string) *Holder {
	return &Holder{Resource: New(name), rows: map[ids.TxID]participant.Decision{}, open: map[ids.TxID]*HolderBranch{}}
}

// SetHolderHooks replaces the holder's fault hooks.
func (h *Holder) SetHolderHooks(hk HolderHooks) {
	h.hmu.Lock()
	h.hhooks = hk
	h.hmu.Unlock()
}

// HolderReady implements participant.DecisionHolder.
func (h *Holder) HolderReady(context.Context) error { return nil }

// BeginHolder implements participant.DecisionHolder.
func (h *Holder) BeginHolder(ctx context.Context, gid ids.GID) (participant.HolderBranch, error) {
	if err := gid.Validate(); err != nil {
		return nil, err
	}
	h.log("begin-holder", gid, nil)
	b := &HolderBranch{Branch: Branch{r: h.Resource, gid: gid}, h: h}
	h.hmu.Lock()
	h.open[gid.TxID] = b
	h.hmu.Unlock()
	return b, nil
}

// Fence implements participant.DecisionHolder: an open holder branch of
// one of txids is ended (its commit will fail), and an abort is recorded
// where there is no row.
func (h *Holder) Fence(ctx context.Context, owner string, txids []ids.TxID) (map[ids.TxID]participant.Decision, error) {
	h.hmu.Lock()
	hook := h.hhooks.Fence
	h.hmu.Unlock()
	if hook != nil {
		if err := hook(ctx, txids); err != nil {
			return nil, err
		}
	}
	h.hmu.Lock()
	defer h.hmu.Unlock()
	out := map[ids.TxID]participant.Decision{}
	for _, id := range txids {
		if b, ok := h.open[id]; ok {
			b.fenced = true
			delete(h.open, id)
		}
		d, ok := h.rows[id]
		if !ok {
			d = participant.Decision{TxID: id, Owner: owner, Outcome: participant.OutcomeAbort, Time: time.Now()}
			h.rows[id] = d
		}
		out[id] = d
	}
	return out, nil
}

// HeldDecision implements participant.DecisionHolder.
func (h *Holder) HeldDecision(ctx context.Context, txid ids.TxID) (participant.Decision, error) {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	d, ok := h.rows[txid]
	if !ok {
		return participant.Decision{}, fmt.Errorf("%w: %s", participant.ErrNoDecision, txid)
	}
	return d, nil
}

// Decisions implements participant.DecisionHolder.
func (h *Holder) Decisions(ctx context.Context, owner string) ([]participant.Decision, error) {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	var out []participant.Decision
	for _, d := range h.rows {
		if d.Owner == owner {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TxID.String() < out[j].TxID.String() })
	return out, nil
}

// Forget implements participant.DecisionHolder.
func (h *Holder) Forget(ctx context.Context, txids []ids.TxID) error {
	h.hmu.Lock()
	hook := h.hhooks.Forget
	h.hmu.Unlock()
	if hook != nil {
		if err := hook(ctx, txids); err != nil {
			return err
		}
	}
	h.hmu.Lock()
	defer h.hmu.Unlock()
	for _, id := range txids {
		delete(h.rows, id)
	}
	return nil
}

// Row returns the decision row of txid, if there is one.
func (h *Holder) Row(txid ids.TxID) (participant.Decision, bool) {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	d, ok := h.rows[txid]
	return d, ok
}

// Rows counts the decision rows.
func (h *Holder) Rows() int {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	return len(h.rows)
}

// PutRow plants a decision row, as if left by an earlier run.
func (h *Holder) PutRow(d participant.Decision) {
	h.hmu.Lock()
	h.rows[d.TxID] = d
	h.hmu.Unlock()
}

// HolderBranch is a fake holder branch.
type HolderBranch struct {
	Branch
	h      *Holder
	fenced bool // guarded by h.hmu
}

// CommitDecision implements participant.HolderBranch.
func (b *HolderBranch) CommitDecision(ctx context.Context, d participant.Decision) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return participant.ErrBranchDone
	}
	b.done = true
	h := b.h
	h.hmu.Lock()
	hook := h.hhooks.CommitDecision
	h.hmu.Unlock()
	apply, err := true, error(nil)
	if hook != nil {
		err, apply = hook(ctx, d)
	}
	h.hmu.Lock()
	defer h.hmu.Unlock()
	delete(h.open, b.gid.TxID)
	switch _, taken := h.rows[d.TxID]; {
	case b.fenced:
		if err == nil {
			err = fmt.Errorf("fake %s: holder session of %s was ended: %w", h.name, d.TxID, participant.ErrOutcomeUnknown)
		}
	case !apply:
	case taken:
		if err == nil {
			err = fmt.Errorf("%w: fake %s: %s already decided", participant.ErrDecisionRefused, h.name, d.TxID)
		}
	default:
		d.Time = time.Now()
		h.rows[d.TxID] = d
		h.Resource.mu.Lock()
		h.committed[b.gid.String()] = true
		h.Resource.mu.Unlock()
	}
	h.log("commit-decision", b.gid, err)
	return err
}
