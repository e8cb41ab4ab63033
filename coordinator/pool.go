package coordinator

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// workerIdle is how long an idle worker waits for another call.
const workerIdle = 10 * time.Second

// workers runs participant calls on goroutines that outlive one call. A
// database driver's call runs deep, and a fresh goroutine would grow (copy)
// its stack on every call; a worker grows it once.
type workers struct {
	ctx   context.Context // when it ends, idle workers exit
	calls chan func()     // unbuffered: a send succeeds only to an idle worker
	wg    sync.WaitGroup
	made  atomic.Int64 // workers started
}

func newWorkers(ctx context.Context) *workers {
	return &workers{ctx: ctx, calls: make(chan func())}
}

// run runs f on an idle worker, or on a new one.
func (w *workers) run(f func()) {
	select {
	case w.calls <- f:
	default:
		w.wg.Add(1)
		w.made.Add(1)
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	defer w.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		f = nil
		idle.Reset(workerIdle)
		select {
		case f = <-w.calls:
		case <-idle.C:
			return
		case <-w.ctx.Done():
			return
		}
	}
}

// wait waits for every worker to exit; ctx must have ended and no call
// may be running or coming.
func (w *workers) wait() { w.wg.Wait() }
