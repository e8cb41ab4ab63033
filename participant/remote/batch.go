package remote

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/participant"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// MaxCommitBatch is the most gids one CommitBatch call carries.
const MaxCommitBatch = 64

// committer batches phase-two commits to one participant without a
// timer: a commit asked for while no call is in flight is sent at once, by
// its caller; commits asked for meanwhile queue, and when the call returns
// the first of them leads the next call, carrying every commit queued
// (CommitBatch when there are several). Under load the participant gets
// one call per round trip instead of one per transaction; a lone commit
// costs what it did.
type committer struct {
	mu      sync.Mutex
	queue   []*commitWait
	sending bool
	// single is set once the participant answered CommitBatch with
	// UNIMPLEMENTED (an older SDK): every commit is then a call of its own.
	single atomic.Bool
}

// commitWait is one caller's commit in the queue.
type commitWait struct {
	gid   ids.GID
	ctx   context.Context
	done  chan commitAnswer // buffered: an answer never blocks the leader
	state waitState         // guarded by committer.mu
}

type waitState int

const (
	waitQueued    waitState = iota
	waitLeading             // told to lead the next call
	waitTaken               // in a call in flight
	waitWithdrawn           // its caller gave up before it was sent
)

type commitAnswer struct {
	err  error
	lead bool // lead the next call instead
}

// commit queues gid and returns its answer, leading calls when told to.
func (c *committer) commit(ctx context.Context, r *Resource, gid ids.GID) error {
	if c.single.Load() {
		return r.commitOne(ctx, gid)
	}
	w := &commitWait{gid: gid, ctx: ctx, done: make(chan commitAnswer, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, w)
	lead := !c.sending
	c.sending = true
	c.mu.Unlock()
	if lead {
		c.mu.Lock()
		w.state = waitLeading
		c.mu.Unlock()
		c.lead(r)
	}
	for {
		var a commitAnswer
		select {
		case a = <-w.done:
		case <-ctx.Done():
			c.mu.Lock()
			if w.state == waitQueued {
				w.state = waitWithdrawn
				c.mu.Unlock()
				// Never sent: nothing happened at the participant.
				return r.mapErr("commit", gid, status.FromContextError(ctx.Err()).Err())
			}
			c.mu.Unlock()
			a = <-w.done // in a call, or told to lead: that comes first
		}
		if !a.lead {
			return a.err
		}
		// Lead even if ctx has ended: the commits queued behind this one
		// wait for it.
		c.lead(r)
	}
}

// lead sends one call with what is queued (the leader's own commit first,
// if it is still wanted), answers each commit, and passes leadership to the
// first commit still queued, or leaves the path free.
func (c *committer) lead(r *Resource) {
	c.mu.Lock()
	var batch []*commitWait
	rest := c.queue[:0]
	for _, w := range c.queue {
		switch {
		case w.state == waitWithdrawn:
		case (w.state == waitQueued || w.state == waitLeading) && len(batch) < MaxCommitBatch:
			w.state = waitTaken
			batch = append(batch, w)
		default:
			rest = append(rest, w)
		}
	}
	clear(c.queue[len(rest):])
	c.queue = rest
	c.mu.Unlock()

	if len(batch) > 0 {
		errs := c.send(r, batch)
		for i, w := range batch {
			w.done <- commitAnswer{err: errs[i]}
		}
	}

	c.mu.Lock()
	for _, w := range c.queue {
		if w.state == waitQueued {
			w.state = waitLeading
			c.mu.Unlock()
			w.done <- commitAnswer{lead: true}
			return
		}
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	c.sending = false
	c.mu.Unlock()
}

// send commits the batch's gids in one call and returns each one's error.
// The call's deadline is the latest of its callers' (none if one has
// none): a caller that gives up earlier stops waiting, the call goes on for
// the others.
func (c *committer) send(r *Resource, batch []*commitWait) []error {
	errs := make([]error, len(batch))
	// The same gid twice (recovery and phase two at once) is sent once.
	first := make(map[ids.GID]int, len(batch))
	var gids []string
	var deadline time.Time
	unbounded := false
	for i, w := range batch {
		if dl, ok := w.ctx.Deadline(); !ok {
			unbounded = true
		} else if dl.After(deadline) {
			deadline = dl
		}
		if _, ok := first[w.gid]; !ok {
			first[w.gid] = i
			gids = append(gids, w.gid.String())
		}
	}
	ctx := context.WithoutCancel(batch[0].ctx)
	if !unbounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if len(gids) == 1 {
		err := r.commitOne(ctx, batch[0].gid)
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	byGID, err := c.commitBatch(ctx, r, gids)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for i, w := range batch {
		errs[i] = byGID[w.gid.String()]
	}
	return errs
}

// commitBatch sends one CommitBatch call and returns each gid's error. An
// error for the whole call applies to every gid; a participant that does
// not serve CommitBatch gets a Commit call per gid instead, now and from
// then on.
func (c *committer) commitBatch(ctx context.Context, r *Resource, gids []string) (map[string]error, error) {
	if c.single.Load() {
		return commitEach(ctx, r, gids), nil
	}
	stub, err := r.stub()
	if err != nil {
		return nil, err
	}
	resp, err := stub.CommitBatch(ctx, &txcoordv1.CommitBatchRequest{Gids: gids})
	where := fmt.Sprintf("remote: commit of %d branches (%s, ...) at %s (%s)", len(gids), gids[0], r.name, r.Address())
	if status.Code(err) == codes.Unimplemented {
		c.single.Store(true)
		return commitEach(ctx, r, gids), nil
	}
	if err != nil {
		return nil, r.mapErrAt(where, err)
	}
	res := resp.GetResults()
	if len(res) != len(gids) {
		return nil, fmt.Errorf("%s: %w: the participant answered for %d", where, participant.ErrOutcomeUnknown, len(res))
	}
	out := make(map[string]error, len(gids))
	for i, g := range gids {
		if res[i].GetGid() != g {
			return nil, fmt.Errorf("%s: %w: answer %d names %.80q, not %s", where, participant.ErrOutcomeUnknown, i, res[i].GetGid(), g)
		}
		gid, _ := ids.ParseGID(g)
		var e error
		if code := res[i].GetCode(); code != uint32(codes.OK) {
			e = status.Error(codes.Code(code), res[i].GetMessage())
		}
		out[g] = r.mapErr("commit", gid, e)
	}
	return out, nil
}

// commitEach commits every gid in a call of its own, all at once.
func commitEach(ctx context.Context, r *Resource, gids []string) map[string]error {
	out := make(map[string]error, len(gids))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range gids {
		wg.Go(func() {
			gid, err := ids.ParseGID(g)
			if err == nil {
				err = r.commitOne(ctx, gid)
			}
			mu.Lock()
			out[g] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}
