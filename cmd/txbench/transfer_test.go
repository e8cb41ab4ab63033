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
	for _, c := range []struct {
		args []string
		want string // the error names the flag
	}{
		{[]string{"--duration", "0s"}, "--duration"}, {[]string{"--workers", "0"}, "--workers"},
		{[]string{"--workers", "500"}, "--workers"}, {[]string{"--modes", "fast"}, "--modes"},
		{[]string{"--rounds", "0"}, "--rounds"}, {[]string{"--log", "tape"}, "--log"},
		{[]string{"-o", "xml"}, "--output"}, {[]string{"--accounts", "0"}, "--accounts"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"transfer"}, c.args...))
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want one naming %s", c.args, err, c.want)
		}
	}
}
