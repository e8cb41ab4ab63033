// A branch reported in the reply: when the caller collects reported
// branches (the client package does) and names the coordinator instance
// this participant gave its report key to, the prepared branch goes back
// in the reply's trailer for the client's Commit to carry, instead of a
// RegisterBranch call to the coordinator before the reply.

package sdk

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// reporter is the participant's report key and the coordinator instance
// that took it (with Announce or RegisterBranch): the branches reported
// under that instance carry proofs it can check.
type reporter struct {
	key []byte // fixed at New

	mu   sync.Mutex
	inst *txcoordv1.Instance
	name string    // inst as remote.FormatInstance
	at   time.Time // when inst last took the key
}

// keyRefresh is how long after giving its key to the coordinator a
// participant reports branches; then it registers one, which gives the key
// again. The coordinator keeps the last few keys of each participant name,
// and processes of one participant (replicas, restarts) each have their
// own: one that stayed quiet while others gave theirs would find its key
// forgotten and every branch it reports refused.
const keyRefresh = time.Minute

// keyed records that inst took the report key.
func (r *reporter) keyed(inst *txcoordv1.Instance) {
	if inst.GetLogId() == "" {
		return
	}
	name := remote.FormatInstance(inst.GetOwner(), inst.GetLogId(), inst.GetEpoch())
	r.mu.Lock()
	r.inst, r.name, r.at = inst, name, time.Now()
	r.mu.Unlock()
}

// instance is the instance that has the key, if one took it within
// keyRefresh.
func (r *reporter) instance() (*txcoordv1.Instance, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.at) >= keyRefresh {
		return nil, ""
	}
	return r.inst, r.name
}

// reply is the reply of the call a handler is answering, for the
// transaction the call carries: a branch is reported only while the
// handler runs, so that the trailer goes out with the reply, and only for
// that transaction.
type reply struct {
	gtrid string
	mu    sync.Mutex
	done  bool
}

type replyKey struct{}

// withReply marks ctx as a call in tx whose reply can carry reported
// branches; end ends it, once the handler has returned.
func withReply(ctx context.Context, tx remote.Tx) (context.Context, func()) {
	r := &reply{gtrid: tx.GTRID()}
	return context.WithValue(ctx, replyKey{}, r), func() {
		r.mu.Lock()
		r.done = true
		r.mu.Unlock()
	}
}

// report puts prepared branch gid of tx in the reply of the call in ctx:
// if the call carries tx and asked for reports under the instance that has
// this participant's report key, and its handler is still answering.
// false: the branch must be registered.
func (p *Participant) report(ctx context.Context, tx remote.Tx, gid ids.GID) bool {
	r, ok := ctx.Value(replyKey{}).(*reply)
	if !ok || tx.Reports != nil || tx.Report == "" || tx.GTRID() != r.gtrid {
		// Not a call asking for reports, or a transaction other than
		// the call's (the handler began its own).
		return false
	}
	inst, name := p.rep.instance()
	if name != tx.Report {
		// That instance does not have the key (it started since this
		// participant last called it), or had it too long ago:
		// registering gives it the key.
		return false
	}
	g := gid.String()
	md, err := remote.ReportBranch(&txcoordv1.ReportedBranch{Participant: p.cfg.Name, Gid: g, Instance: inst, Proof: remote.ReportProof(p.rep.key, g)})
	if err != nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.done && grpc.SetTrailer(ctx, md) == nil
}
