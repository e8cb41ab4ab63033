package wal

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/ids"
)

var _ Log = (*Mem)(nil)

// Mem is an in-memory Log for protocol tests. Everything appended is
// "durable" at once. SetFail makes appends fail, to test what the
// coordinator does when its disk fails.
type Mem struct {
	mu      sync.Mutex
	closed  bool
	failErr error
	next    uint64
	epoch   uint64
	recs    map[uint64]Record
	byTx    map[ids.TxID]*Decision
	horizon time.Time
	created time.Time
	stats   Stats
}

// NewMem returns an empty in-memory log at epoch 1.
func NewMem() *Mem {
	return &Mem{next: 1, epoch: 1, recs: map[uint64]Record{}, byTx: map[ids.TxID]*Decision{}, created: time.Now().UTC()}
}

// Created returns when the log was made (NewMem).
func (m *Mem) Created() time.Time { return m.created }

// Restart returns a log with the same records and the next epoch, as a
// process restart on the same file would; END records not flushed are kept
// (Mem has no lazy writes).
func (m *Mem) Restart() *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := &Mem{next: m.next, epoch: m.epoch + 1, recs: map[uint64]Record{}, byTx: map[ids.TxID]*Decision{}, horizon: m.horizon, created: m.created}
	for k, v := range m.recs {
		n.recs[k] = v
	}
	for k, v := range m.byTx {
		d := *v
		n.byTx[k] = &d
	}
	return n
}

// SetFail makes every later write fail with err (nil restores).
func (m *Mem) SetFail(err error) {
	m.mu.Lock()
	m.failErr = err
	m.mu.Unlock()
}

// Append implements Log.
func (m *Mem) Append(ctx context.Context, rec Record) (uint64, error) {
	if err := rec.Validate(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return m.add(rec, false)
}

// Note implements Log.
func (m *Mem) Note(rec Record) error {
	if rec.Holder == "" {
		return fmt.Errorf("%w: a noted decision names its holder", ErrBadRecord)
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	_, err := m.add(rec, true)
	return err
}

// add stores a decision, forced (Append) or noted as ended (Note).
func (m *Mem) add(rec Record, noted bool) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if d, ok := m.byTx[rec.TxID]; ok {
		if d.Kind != rec.Kind {
			return 0, fmt.Errorf("%w: %s has %v at LSN %d, refused %v", ErrConflict, rec.TxID, d.Kind, d.LSN, rec.Kind)
		}
		return d.LSN, nil
	}
	if m.failErr != nil {
		return 0, fmt.Errorf("%w: %v", ErrFailed, m.failErr)
	}
	rec.LSN = m.next
	m.next++
	if rec.Time.IsZero() {
		rec.Time = time.Now().UTC()
	}
	if rec.Epoch == 0 {
		rec.Epoch = m.epoch
	}
	rec.Branches = append([]Branch(nil), rec.Branches...)
	m.recs[rec.LSN] = rec
	d := &Decision{Record: rec}
	if noted {
		d.Ended, d.EndLSN, d.EndTime = true, rec.LSN, rec.Time
		m.stats.Notes++
	} else {
		m.stats.Appends++
		m.stats.Syncs++
		m.stats.MaxBatch = max(m.stats.MaxBatch, 1)
	}
	m.byTx[rec.TxID] = d
	return rec.LSN, nil
}

// End implements Log.
func (m *Mem) End(txid ids.TxID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if m.failErr != nil {
		return fmt.Errorf("%w: %v", ErrFailed, m.failErr)
	}
	d, ok := m.byTx[txid]
	if !ok || d.Ended {
		return nil
	}
	lsn := m.next
	m.next++
	now := time.Now().UTC()
	m.recs[lsn] = Record{LSN: lsn, Kind: KindEnd, TxID: txid, Time: now, Epoch: m.epoch}
	d.Ended, d.EndLSN, d.EndTime = true, lsn, now
	m.stats.Ends++
	return nil
}

// Flush implements Log.
func (m *Mem) Flush(ctx context.Context) error { return ctx.Err() }

// Lookup implements Log.
func (m *Mem) Lookup(txid ids.TxID) (Decision, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Decision{}, ErrClosed
	}
	d, ok := m.byTx[txid]
	if !ok {
		return Decision{}, fmt.Errorf("%w for %s", ErrNotFound, txid)
	}
	return *d, nil
}

// Pending implements Log.
func (m *Mem) Pending() ([]Decision, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	var out []Decision
	for _, d := range m.byTx {
		if !d.Ended {
			out = append(out, *d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LSN < out[j].LSN })
	return out, nil
}

// Records implements Log.
func (m *Mem) Records(fn func(Record) error) error {
	m.mu.Lock()
	keys := make([]uint64, 0, len(m.recs))
	for k := range m.recs {
		keys = append(keys, k)
	}
	recs := make([]Record, 0, len(keys))
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	for _, k := range keys {
		recs = append(recs, m.recs[k])
	}
	m.mu.Unlock()
	for _, r := range recs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Compact implements Log.
func (m *Mem) Compact(ctx context.Context, endedBefore time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id, d := range m.byTx {
		if d.Ended && d.EndTime.Before(endedBefore) {
			delete(m.recs, d.LSN)
			delete(m.recs, d.EndLSN)
			delete(m.byTx, id)
			if d.EndTime.After(m.horizon) {
				m.horizon = d.EndTime
			}
			n++
		}
	}
	m.stats.Compacted += uint64(n)
	return n, nil
}

// Epoch implements Log.
func (m *Mem) Epoch() uint64 { return m.epoch }

// Horizon implements Log.
func (m *Mem) Horizon() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.horizon
}

// Stats implements Log.
func (m *Mem) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats
	for _, d := range m.byTx {
		if !d.Ended {
			s.Pending++
		}
	}
	return s
}

// Close implements Log.
func (m *Mem) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
