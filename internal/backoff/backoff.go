// Package backoff computes capped exponential backoff with jitter.
package backoff

import (
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
