// Package backoff computes capped exponential backoff with jitter.
package backoff

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff: attempt n (from 1) waits a random
// time in [d/2, d] where d = min(Max, Base * 2^(n-1)) ("equal jitter").
type Policy struct {
	Base time.Duration
	Max  time.Duration
}

// Default is used where no policy is configured.
var Default = Policy{Base: 10 * time.Millisecond, Max: 5 * time.Second}

// Delay returns the wait before retry attempt n (n >= 1). r supplies the
// jitter; nil uses the global source.
func (p Policy) Delay(n int, r *rand.Rand) time.Duration {
	base, max := p.Base, p.Max
	if base <= 0 {
		base = Default.Base
	}
	if max < base {
		max = base
	}
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	var j int64
	if r != nil {
		j = r.Int64N(int64(half) + 1)
	} else {
		j = rand.Int64N(int64(half) + 1)
	}
	return half + time.Duration(j)
}

// Until calls open until it succeeds, fails with an error down does not
// call transient, ctx ends, or wait has passed, waiting 100ms, then twice
// as long each time up to 2s, and calling onWait (if not nil) before each
// wait. what names the thing opened in the error given when wait passes.
func Until[T any](ctx context.Context, wait time.Duration, what string, open func() (T, error), transient func(error) bool, onWait func(err error, retryIn time.Duration)) (T, error) {
	deadline := time.Now().Add(wait)
	delay := 100 * time.Millisecond
	for {
		v, err := open()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return v, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			var zero T
			return zero, fmt.Errorf("%s: the database server did not accept connections within %v: %w", what, wait, err)
		}
		if onWait != nil {
			onWait(err, min(delay, left))
		}
		t := time.NewTimer(min(delay, left))
		select {
		case <-ctx.Done():
			t.Stop()
			var zero T
			return zero, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
}
