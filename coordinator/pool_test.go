package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Calls one after another reuse one worker; a call while every worker is
// busy gets a new one; when the context ends, idle workers exit.
func TestWorkersAreReused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorkers(ctx)
	done := make(chan struct{})
	for range 20 {
		w.run(func() { done <- struct{}{} })
		<-done
		// A moment for the worker to be back waiting for a call.
		time.Sleep(5 * time.Millisecond)
	}
	// One worker, unless the machine is so loaded that a worker was not
	// back in 5ms now and then; a goroutine per call would make 20.
	if n := w.made.Load(); n > 5 {
		t.Fatalf("20 calls one after another started %d workers, want about 1", n)
	}

	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 3 {
		wg.Add(1)
		w.run(func() { defer wg.Done(); <-release })
	}
	if n := w.made.Load(); n < 3 {
		t.Fatalf("3 blocked calls ran on %d workers in all, want at least 3", n)
	}
	close(release)
	wg.Wait()

	cancel()
	stopped := make(chan struct{})
	go func() { w.wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("idle workers did not exit when the context ended")
	}
}
