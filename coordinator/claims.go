package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/txcoord/txcoord/participant"
)

// ErrResourceDown: the resource cannot be reached, so this coordinator
// does not hold its id there; no branch is begun there, and recovery
// leaves its branches until it is back.
var ErrResourceDown = errors.New("coordinator: resource down")

// Claims are per resource. At each resource that can guard the coordinator
// id (participant.Guard) the id is claimed, so that two running
// coordinators with one id never both resolve branches there. A resource
// that cannot be reached is down: the coordinator starts and serves
// without it, recovery resolves everything it can at the others and leaves
// that one's branches, and each pass (and each Enlist there) tries to
// claim it again. Another process holding the id anywhere is different:
// New fails, and a pass that finds it resolves nothing at all.

// guarded lists the resources that can guard the id, by name.
func (c *Coordinator) guarded() map[string]participant.Guard {
	c.resMu.RLock()
	defer c.resMu.RUnlock()
	out := map[string]participant.Guard{}
	for n, r := range c.resources {
		if g, ok := r.(participant.Guard); ok {
			out[n] = g
		}
	}
	return out
}

// claim claims the id at every guarding resource, each waiting up to
// OwnerWait for a previous process to let go. One held by another process
// fails New; one that cannot be reached is marked down.
func (c *Coordinator) claim(ctx context.Context) error {
	owner := c.owner()
	gs := c.guarded()
	names := make([]string, 0, len(gs))
	for n := range gs {
		names = append(names, n)
	}
	sort.Strings(names)
	cls := make([]participant.Claim, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, c.cfg.OwnerWait)
			defer cancel()
			cls[i], errs[i] = gs[n].Guard(cctx, owner)
		}()
	}
	wg.Wait()
	c.claimOp.Lock()
	defer c.claimOp.Unlock()
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	var owned error
	for i, n := range names {
		switch {
		case errs[i] == nil:
			c.claims[n] = cls[i]
		case errors.Is(errs[i], participant.ErrOwnerRunning):
			owned = errors.Join(owned, fmt.Errorf("coordinator: claim id %s at %s: %w", owner, n, errs[i]))
		default:
			c.down[n] = errs[i]
			c.logger.Warn("resource unreachable: starting without it; its branches wait until it is back, and no branch is begun there meanwhile", "resource", n, "err", errs[i])
		}
	}
	if owned != nil {
		c.unclaimLocked()
		return owned
	}
	return nil
}

func (c *Coordinator) unclaim() {
	c.claimOp.Lock()
	defer c.claimOp.Unlock()
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	c.unclaimLocked()
}

func (c *Coordinator) unclaimLocked() {
	for n, cl := range c.claims {
		if err := cl.Release(); err != nil {
			c.logger.Warn("releasing the coordinator id claim", "resource", n, "err", err)
		}
	}
	c.claims = map[string]participant.Claim{}
}

// errOwned reports another process holding this coordinator's id.
func (c *Coordinator) errOwned(n string, err error) error {
	return fmt.Errorf("coordinator: lost the claim on id %s at %s to another process; not resolving anything: %w", c.owner(), n, err)
}

// checkClaims makes sure of the claim at every guarding resource before a
// recovery pass, claiming again where it was lost or never taken. It
// returns the resources that are down (the pass leaves them), or an error
// if another process holds the id at any resource (the pass must resolve
// nothing).
func (c *Coordinator) checkClaims(ctx context.Context) (map[string]error, error) {
	gs := c.guarded()
	c.claimOp.Lock()
	defer c.claimOp.Unlock()
	down := map[string]error{}
	names := make([]string, 0, len(gs))
	for n := range gs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := c.hold(ctx, n, gs[n]); err != nil {
			if errors.Is(err, participant.ErrOwnerRunning) {
				return nil, c.errOwned(n, err)
			}
			down[n] = err
		}
	}
	return down, nil
}

// hold makes sure the claim at n is held, taking it if need be, and files
// n as down or up; it returns why the claim is not held. The caller holds
// claimOp: claims are checked and taken one operation at a time, while
// claimMu is held only to read and update the maps.
func (c *Coordinator) hold(ctx context.Context, n string, g participant.Guard) error {
	cctx, cancel := context.WithTimeout(ctx, min(c.cfg.CallTimeout, 5*time.Second))
	defer cancel()
	c.claimMu.Lock()
	cl, have := c.claims[n]
	c.claimMu.Unlock()
	var err error
	if have {
		err = cl.Check(cctx)
	} else if cl, err = g.Guard(cctx, c.owner()); err == nil {
		c.claimMu.Lock()
		c.claims[n] = cl
		c.claimMu.Unlock()
	}
	owned := errors.Is(err, participant.ErrOwnerRunning)
	c.claimMu.Lock()
	was, wasDown := c.down[n]
	switch {
	case err == nil:
		delete(c.down, n)
	case !owned:
		c.down[n] = err
	}
	c.claimMu.Unlock()
	switch {
	case err == nil && wasDown:
		c.logger.Info("resource back: the coordinator id is claimed there again", "resource", n, "was", was)
	case err != nil && !owned && !wasDown:
		c.logger.Warn("resource down: its branches wait until it is back, and no branch is begun there meanwhile", "resource", n, "err", err)
	}
	return err
}

// usable makes sure this coordinator holds its id at r before a branch
// is begun there: at a resource that was down it claims the id first.
func (c *Coordinator) usable(ctx context.Context, r participant.Resource) error {
	g, ok := r.(participant.Guard)
	if !ok {
		return nil
	}
	c.claimMu.Lock()
	_, isDown := c.down[r.Name()]
	c.claimMu.Unlock()
	if !isDown {
		return nil
	}
	c.claimOp.Lock()
	defer c.claimOp.Unlock()
	if err := c.hold(ctx, r.Name(), g); err != nil {
		if errors.Is(err, participant.ErrOwnerRunning) {
			return fmt.Errorf("coordinator: resource %s: another process holds coordinator id %s there: %w", r.Name(), c.owner(), err)
		}
		return fmt.Errorf("%w: %s: %v", ErrResourceDown, r.Name(), err)
	}
	return nil
}

// DownResources names the resources that are down (unreachable: the id is
// not claimed there), with why.
func (c *Coordinator) DownResources() map[string]string {
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	out := make(map[string]string, len(c.down))
	for n, err := range c.down {
		out[n] = err.Error()
	}
	return out
}
