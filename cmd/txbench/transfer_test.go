package main

import (
	"strings"
	"testing"
)

func TestPairedRatioComparesRunsOfTheSameRound(t *testing.T) {
	plain := []result{{TPS: 1000}, {TPS: 400}, {TPS: 900}}
	mode := []result{{TPS: 900}, {TPS: 360}, {TPS: 450}}
	// Per round: 0.9, 0.9, 0.5; the ratio of medians would be 450/900.
	if got := pairedRatio(mode, plain); got != 0.9 {
		t.Fatalf("paired ratio %v, want 0.9", got)
	}
	if got := median(mode); got.TPS != 450 || got.Rounds[0] != 900 {
		t.Fatalf("median %+v: want 450 with rounds in round order", got)
	}
	if mode[0].TPS != 900 {
		t.Fatal("median reordered its input")
	}
}

func TestTransferFlagsThatMakeNoSenseAreRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--duration", "0s"}, {"--workers", "0"}, {"--workers", "500"}, {"--modes", "fast"},
		{"--rounds", "0"}, {"--log", "tape"}, {"-o", "xml"}, {"--accounts", "0"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"transfer"}, args...))
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), strings.TrimLeft(args[0], "-")) {
			t.Errorf("%v: err %v, want one naming the flag", args, err)
		}
	}
}
