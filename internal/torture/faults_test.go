package torture

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/internal/shopdb"
	"github.com/txcoord/txcoord/participant/mysql"
)

// runSchedule runs the faults, each target's in order on its own
// goroutine, at the start of their slots counted from began, until ctx
// ends. A fault still on when ctx ends is left for heal.
func (r *rig) runSchedule(ctx context.Context, began time.Time, faults []fault) {
	byTarget := map[string][]fault{}
	var targets []string
	for _, f := range faults {
		if len(byTarget[f.target]) == 0 {
			targets = append(targets, f.target)
		}
		byTarget[f.target] = append(byTarget[f.target], f)
	}
	at := func(slot int) time.Time { return began.Add(time.Duration(slot) * slotLen) }
	var wg sync.WaitGroup
	for _, target := range targets {
		wg.Go(func() {
			for _, f := range byTarget[target] {
				if !sleepUntil(ctx, at(f.start)) {
					return
				}
				r.begin(f)
				if !sleepUntil(ctx, at(f.end)) {
					return
				}
				r.end(ctx, f)
			}
		})
	}
	wg.Wait()
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// begin injects fault f.
func (r *rig) begin(f fault) {
	r.ev.logf("slot %d: %v", f.start, f)
	r.mu.Lock()
	r.injected[f.kind]++
	if f.arm != "" {
		r.armed++
	}
	r.mu.Unlock()
	switch f.kind {
	case killCoordinator, killService:
		r.procs[f.target].kill()
	case killDatabase:
		if err := r.pg[dbOf(f.target)].Kill(); err != nil {
			r.fail("kill %s: %v", f.target, err)
		}
	case cutLink:
		r.links[f.target].cutOff()
	case delayLink:
		r.links[f.target].delay(f.latency, f.jitter)
	case blackholeLink:
		r.links[f.target].blackhole(f.dir)
	case isolateCoordinator:
		r.links[f.target].blackhole(bothWays)
	case rollbackByHand:
		r.rollbackByHand(f)
	}
}

// rollbackByHand rolls back one of the coordinator's prepared branches at
// the database f targets, straight and not through a link.
func (r *rig) rollbackByHand(f fault) {
	svc := dbOf(f.target)
	db := r.dbs[svc]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gids, err := shopdb.PreparedGIDs(ctx, db)
	if err != nil {
		r.ev.logf("slot %d: %s could not be asked for prepared branches: %v", f.start, f.target, err)
		return
	}
	var ours []string
	for _, g := range gids {
		if strings.HasPrefix(g, "txc.torture.") {
			ours = append(ours, g)
		}
	}
	if len(ours) == 0 {
		r.ev.logf("slot %d: nothing prepared at %s to roll back", f.start, f.target)
		return
	}
	raw := ours[rand.IntN(len(ours))]
	g, err := ids.ParseGID(raw)
	if err != nil {
		r.fail("a prepared gid at %s does not parse: %q: %v", f.target, raw, err)
		return
	}
	stmt := "ROLLBACK PREPARED " + ids.QuoteLiteral(raw)
	if svc == mariaDB {
		stmt = "XA ROLLBACK " + mysql.XID(g, svc) // the service's database is named after it
	}
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		r.ev.logf("slot %d: %s (%s) at %s: %v", f.start, stmt, raw, f.target, err)
		return
	}
	r.mu.Lock()
	r.lost[g.TxID] = append(r.lost[g.TxID], raw)
	r.mu.Unlock()
	r.ev.logf("slot %d: rolled back %s at %s by hand", f.start, raw, f.target)
}

// lostTxs returns the transactions a branch of which was rolled back by
// hand.
func (r *rig) lostTxs() map[ids.TxID]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[ids.TxID]bool, len(r.lost))
	for id := range r.lost {
		out[id] = true
	}
	return out
}

// end ends fault f: what was killed starts again, the link heals. If ctx
// ends first, heal finishes the job.
func (r *rig) end(ctx context.Context, f fault) {
	switch f.kind {
	case killCoordinator, killService:
		if err := r.procs[f.target].start(f.arm); err != nil {
			r.fail("restart %s: %v", f.target, err)
		}
		if f.arm != "" {
			r.ev.logf("slot %d: %s restarted, armed with %s", f.end, f.target, f.arm)
		} else {
			r.ev.logf("slot %d: %s restarted", f.end, f.target)
		}
	case killDatabase:
		rctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
		defer cancel()
		if err := r.pg[dbOf(f.target)].Restart(rctx); err != nil {
			r.ev.logf("slot %d: restart %s: %v (heal tries again)", f.end, f.target, err)
			return
		}
		r.ev.logf("slot %d: %s restarted", f.end, f.target)
	case cutLink:
		if err := r.links[f.target].restore(ctx); err != nil {
			r.ev.logf("slot %d: %v (heal tries again)", f.end, err)
			return
		}
		r.ev.logf("slot %d: %s restored", f.end, f.target)
	case delayLink, blackholeLink, isolateCoordinator:
		r.links[f.target].clear()
		r.ev.logf("slot %d: %s clear", f.end, f.target)
	}
}

// heal ends every fault: links pass everything, every database server
// runs, every process runs, unarmed.
func (r *rig) heal() {
	ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
	defer cancel()
	for _, name := range links(r.failover) {
		l := r.links[name]
		l.clear()
		if l.isCut() {
			if err := l.restore(ctx); err != nil {
				r.fail("heal: %v", err)
			} else {
				r.ev.logf("heal: %s restored", name)
			}
		}
	}
	for _, s := range databases {
		for !r.pg[s].Running() {
			err := r.pg[s].Restart(ctx)
			if err == nil {
				r.ev.logf("heal: %s restarted", dbName(s))
				break
			}
			if ctx.Err() != nil {
				r.fail("heal: restart %s: %v", dbName(s), err)
				break
			}
			// Its port may be taken for a moment.
			r.ev.logf("heal: restart %s: %v; trying again", dbName(s), err)
			time.Sleep(time.Second)
		}
	}
	for _, name := range r.procNames() {
		p := r.procs[name]
		r.disarm(p)
		if err := p.start(""); err != nil {
			r.fail("heal: start %s: %v", name, err)
		}
	}
}

// disarm stops a run armed with a crash point it has not reached yet, once
// the run is up (a SIGTERM before its handler is installed would kill it),
// so that it starts again unarmed.
func (r *rig) disarm(p *proc) {
	arm, running := p.armed()
	if !running || arm == "" {
		return
	}
	if r.failover && slices.Contains(r.coordinators(), p.name) {
		// A standby does not serve, so it cannot be waited for: kill it
		// (as the schedule does) and start it again unarmed.
		p.kill()
		if err := p.start(""); err != nil {
			r.fail("heal: start %s: %v", p.name, err)
		}
		r.ev.logf("heal: %s killed to disarm %s", p.name, arm)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := p.waitReady(ctx); err != nil {
		r.ev.logf("heal: %s, armed with %s, not ready: %v", p.name, arm, err)
	}
	if now, running := p.armed(); !running || now != arm {
		return // it reached its crash point and runs again unarmed
	}
	if err := p.stop(stopTimeout); err != nil {
		r.fail("heal: stop %s, armed with %s: %v", p.name, arm, err)
	}
	r.ev.logf("heal: %s stopped to disarm %s", p.name, arm)
}
