package recovery

import (
	"context"
	"fmt"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
)

// forgetProofs deletes the proofs (markers) that no decision needs any
// more: those of the commits this pass ended, and those a crash left
// behind. A proof is kept while its transaction is live, its COMMIT is in
// the log without END, or a holder keeps a row for it; the log is flushed
// first, so that every END and note seen here is durable before a proof
// goes.
func (p *pass) forgetProofs(ctx context.Context, names []string) {
	byRes := map[string]map[ids.GID]bool{}
	add := func(res string, g ids.GID) {
		if byRes[res] == nil {
			byRes[res] = map[ids.GID]bool{}
		}
		byRes[res][g] = true
	}
	for _, b := range p.ended {
		add(b.Resource, b.GID)
	}
	var listed []ids.GID
	if !p.scanFailed {
		// Proofs left by a crash between END and their deletion.
		for _, n := range names {
			pr, ok := p.res[n].(participant.Prover)
			if !ok {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			gids, err := pr.Proofs(lctx, p.owner())
			cancel()
			if err != nil {
				p.fail(fmt.Errorf("recovery: list the markers at %s: %w", n, err))
				continue
			}
			for _, g := range gids {
				add(n, g)
				listed = append(listed, g)
			}
		}
	}
	if len(byRes) == 0 {
		return
	}
	// What still needs a proof, read after the proofs were listed: a
	// proof visible then belongs to a commit already decided.
	keep := map[ids.TxID]bool{}
	pending, err := p.cfg.Log.Pending()
	if err != nil {
		p.fail(fmt.Errorf("recovery: read pending decisions: %w", err))
		return
	}
	for _, d := range pending {
		keep[d.TxID] = true
	}
	if len(listed) > 0 {
		for _, n := range names {
			h, ok := p.res[n].(participant.DecisionHolder)
			if !ok {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
			rows, err := h.Decisions(lctx, p.owner())
			cancel()
			if err != nil {
				p.fail(fmt.Errorf("recovery: read the decisions held by %s: %w", n, err))
				return
			}
			for _, d := range rows {
				keep[d.TxID] = true
			}
		}
	}
	fctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	if err := p.cfg.Log.Flush(fctx); err != nil {
		p.fail(fmt.Errorf("recovery: flush the log before forgetting markers: %w", err))
		return
	}
	for n, set := range byRes {
		pr, ok := p.res[n].(participant.Prover)
		if !ok {
			continue
		}
		var gone []ids.GID
		for g := range set {
			if !keep[g.TxID] && !p.live(g.TxID) {
				gone = append(gone, g)
			}
		}
		if len(gone) == 0 {
			continue
		}
		if err := pr.ForgetProofs(fctx, gone); err != nil {
			p.fail(fmt.Errorf("recovery: forget %d markers at %s: %w", len(gone), n, err))
			continue
		}
		p.rep.ProofsForgotten += len(gone)
	}
}
