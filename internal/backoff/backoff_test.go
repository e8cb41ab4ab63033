package backoff

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
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

func TestUntilRetriesOnlyTransientErrorsWithinTheWait(t *testing.T) {
	ctx := context.Background()
	down, bad := errors.New("down"), errors.New("bad")
	transient := func(err error) bool { return errors.Is(err, down) }
	calls, waits := 0, 0
	v, err := Until(ctx, time.Minute, "db", func() (int, error) {
		calls++
		if calls < 3 {
			return 0, down
		}
		return 7, nil
	}, transient, func(error, time.Duration) { waits++ })
	if v != 7 || err != nil || calls != 3 || waits != 2 {
		t.Fatalf("after two transient errors: %d, %v, %d calls, %d waits", v, err, calls, waits)
	}
	calls = 0
	if _, err := Until(ctx, time.Minute, "db", func() (int, error) { calls++; return 0, bad }, transient, nil); !errors.Is(err, bad) || calls != 1 {
		t.Fatalf("a lasting error: %v after %d calls, want it at once", err, calls)
	}
	start := time.Now()
	_, err = Until(ctx, 150*time.Millisecond, "db", func() (int, error) { return 0, down }, transient, nil)
	if !errors.Is(err, down) || !strings.Contains(err.Error(), "did not accept connections within 150ms") || time.Since(start) > 5*time.Second {
		t.Fatalf("past the wait: %v", err)
	}
}
