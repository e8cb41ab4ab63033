package server

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/txcoord/txcoord/coordinator"
)

// A settled result answers a repeated Commit exactly as the result it
// was kept from, and errors.Is as it for the coordinator's errors.
func TestSettledResultAnswersAsTheOriginal(t *testing.T) {
	for _, err := range []error{
		nil,
		fmt.Errorf("%w: rolled back as asked", coordinator.ErrAborted),
		fmt.Errorf("%w (t1): prepare timed out: %w", coordinator.ErrAborted, errors.New("deadline")),
		fmt.Errorf("%w (t1): bank_b: %w", coordinator.ErrCommitPending, errors.New("connection refused")),
		fmt.Errorf("%w (t1): bank_b: branch gone", coordinator.ErrHeuristicHazard),
		fmt.Errorf("%w (t1)", coordinator.ErrOutcomeUnknown),
		fmt.Errorf("%w: %w", coordinator.ErrClosed, coordinator.ErrAborted),
	} {
		got := settledResult(err).err()
		if (got == nil) != (err == nil) {
			t.Fatalf("%v settled as %v", err, got)
		}
		if want, have := commitResponse(err), commitResponse(got); !proto.Equal(want, have) {
			t.Errorf("%v: answers %v, want %v", err, have, want)
		}
		for _, s := range settledSentinels {
			if errors.Is(err, s) != errors.Is(got, s) {
				t.Errorf("%v: errors.Is(%v) = %v after settling", err, s, errors.Is(got, s))
			}
		}
	}
	if len(settledSentinels) > 16 {
		t.Fatalf("%d sentinels do not fit the 16 bits of settledError.is", len(settledSentinels))
	}
}
