package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestDelayIsCappedAndJittered(t *testing.T) {
	p := Policy{Base: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[time.Duration]bool{}
	for n := 1; n <= 100; n++ {
		d := p.Delay(n, r)
		want := 10 * time.Millisecond
		for i := 1; i < n && want < p.Max; i++ {
			want *= 2
		}
		if want > p.Max {
			want = p.Max
		}
		if d < want/2 || d > want {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", n, d, want/2, want)
		}
		if n > 10 {
			seen[d] = true
		}
	}
	if len(seen) < 2 {
		t.Fatalf("capped delays show no jitter: %v", seen)
	}
}

func TestZeroPolicyUsesDefaults(t *testing.T) {
	if d := (Policy{}).Delay(1, nil); d <= 0 || d > Default.Base {
		t.Fatalf("zero policy first delay %v, want in (0, %v]", d, Default.Base)
	}
}
