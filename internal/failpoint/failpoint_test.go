package failpoint

import (
	"strings"
	"testing"
)

func TestArmRejectsUnknownPointsAndBadCounts(t *testing.T) {
	for _, spec := range []string{"no-such-point", CoordAfterDecision + ":0", CoordAfterDecision + ":x", CoordAfterDecision + ":-1"} {
		if err := Arm(spec); err == nil {
			t.Errorf("Arm(%q) accepted", spec)
		}
	}
	if err := Arm("nope"); err == nil || !strings.Contains(err.Error(), CoordAfterDecision) {
		t.Errorf("the error should list the known points: %v", err)
	}
}

func TestHitCrashesAtTheNthHitOfTheArmedPointOnly(t *testing.T) {
	crashed := 0
	old := onCrash
	onCrash = func() { crashed++ }
	defer func() { onCrash = old; _ = Arm("") }()
	if err := Arm(CoordAfterDecision + ":3"); err != nil {
		t.Fatal(err)
	}
	Hit(CoordBeforeDecision)
	Hit(CoordAfterDecision)
	Hit(CoordAfterDecision)
	if crashed != 0 {
		t.Fatal("crashed early")
	}
	Hit(CoordAfterDecision)
	if crashed != 1 {
		t.Fatalf("crashed %d times at the third hit", crashed)
	}
	Hit(CoordAfterDecision)
	if crashed != 1 {
		t.Fatal("crashed again after the third hit")
	}
	_ = Arm("")
	Hit(CoordAfterDecision)
	if crashed != 1 {
		t.Fatal("disarmed point crashed")
	}
}

func TestDuringCrashesWhileTheCallIsInFlight(t *testing.T) {
	crashed := 0
	old := onCrash
	onCrash = func() { crashed++ }
	defer func() { onCrash = old; _ = Arm("") }()
	if err := Arm(PGHolderCommitSent + ":2"); err != nil {
		t.Fatal(err)
	}
	if !Armed(PGHolderCommitSent) || Armed(PGHolderAfterCommit) {
		t.Fatal("Armed names the wrong point")
	}
	ran := make(chan struct{}, 2)
	During(PGHolderCommitSent, func() { ran <- struct{}{} })
	if crashed != 0 || len(ran) != 1 {
		t.Fatalf("first hit: crashed %d, ran %d", crashed, len(ran))
	}
	release := make(chan struct{})
	During(PGHolderCommitSent, func() { <-release; ran <- struct{}{} })
	if crashed != 1 {
		t.Fatalf("second hit did not crash while the call was in flight")
	}
	close(release)
	<-ran
}
