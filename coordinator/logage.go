package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/txcoord/txcoord/participant"
	"github.com/txcoord/txcoord/recovery"
)

// ErrLogTooNew: a resource holds a prepared branch of this coordinator
// begun before its log was created. Its decision may be in a log that was
// lost (deleted, replaced, restored from an old backup): presuming abort
// could roll back a branch whose transaction committed.
var ErrLogTooNew = errors.New("coordinator: the log is newer than prepared branches it should know")

// logCreated returns when the log was created, if the log can tell.
func (c *Coordinator) logCreated() time.Time {
	if l, ok := c.log.(interface{ Created() time.Time }); ok {
		return l.Created()
	}
	return time.Time{}
}

// checkLogAge refuses to start when a registered resource holds a prepared
// branch of ours, of a transaction begun before the log was created, that
// the log does not know and whose decision no holder keeps.
func (c *Coordinator) checkLogAge(ctx context.Context) error {
	created := c.logCreated()
	if created.IsZero() {
		return nil
	}
	rs := c.resourceList()
	found := make([][]participant.Prepared, len(rs))
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
			defer cancel()
			found[i], errs[i] = r.Prepared(cctx)
		}()
	}
	wg.Wait()
	for i, list := range found {
		if errs[i] != nil {
			// A resource that cannot be asked now is checked by every
			// recovery pass, which leaves such branches unresolved.
			c.logger.Warn("cannot check a resource's prepared branches against the log's age", "resource", rs[i].Name(), "err", errs[i])
			continue
		}
		for _, p := range list {
			g := p.GID
			if !g.Owned(c.cfg.Prefix, c.cfg.ID) || !recovery.BeganBeforeLog(g.TxID, created) {
				continue
			}
			if _, held := g.Holder(); held {
				continue // its holder keeps the decision
			}
			if _, err := c.log.Lookup(g.TxID); err == nil {
				continue
			}
			return fmt.Errorf("%w: %s holds prepared branch %s, begun %s, before the log was created (%s); restore the log that decided it, or resolve the branch by hand (txctl scan, then COMMIT or ROLLBACK PREPARED at the database)",
				ErrLogTooNew, rs[i].Name(), p.Raw, g.TxID.Time().Format(time.RFC3339), created.Format(time.RFC3339))
		}
	}
	return nil
}

// Instance names this coordinator to participants: its owner
// ("<prefix>.<id>"), its log's id ("" for a log that has none, such as
// the in-memory one) and this run's epoch. Participants that record it
// refuse another instance with the same id.
func (c *Coordinator) Instance() (owner, logID string, epoch uint64) {
	if l, ok := c.log.(interface{ LogID() string }); ok {
		logID = l.LogID()
	}
	return c.owner(), logID, c.log.Epoch()
}
