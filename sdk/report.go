// A branch reported in the reply: when the caller collects reported
// branches (the client package does) and names the coordinator instance
// this participant serves, the prepared branch goes back in the reply's
// trailer for the client's Commit to carry, instead of a RegisterBranch
// call to the coordinator before the reply.

package sdk

import (
	"context"
	"sync"

	"google.golang.org/grpc"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant/remote"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// reply is the reply of the call a handler is answering: a branch is
// reported only while the handler runs, so that the trailer goes out with
// the reply and is not lost after it.
type reply struct {
	mu   sync.Mutex
	done bool
}

type replyKey struct{}

// withReply marks ctx as a call whose reply can carry reported branches;
// end ends it, once the handler has returned.
func withReply(ctx context.Context) (context.Context, func()) {
	r := &reply{}
	return context.WithValue(ctx, replyKey{}, r), func() {
		r.mu.Lock()
		r.done = true
		r.mu.Unlock()
	}
}

// report puts prepared branch gid in the reply of the call in ctx, if the
// caller collects reported branches under the instance this participant
// serves and the handler is still answering the call. false: the branch
// must be registered.
func (p *Participant) report(ctx context.Context, tx remote.Tx, gid ids.GID) bool {
	r, ok := ctx.Value(replyKey{}).(*reply)
	if !ok || tx.Report == "" {
		return false
	}
	inst := p.expected(ctx)
	if inst == nil || remote.FormatInstance(inst.Owner, inst.LogId, inst.Epoch) != tx.Report {
		// Not known to that instance yet (it started since this
		// participant last heard from it): registering tells it.
		return false
	}
	md, err := remote.ReportBranch(&txcoordv1.ReportedBranch{Participant: p.cfg.Name, Gid: gid.String(), Instance: inst})
	if err != nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.done && grpc.SetTrailer(ctx, md) == nil
}
