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
		{[]string{"--bank-b", "oracle"}, "--bank-b"},
		{[]string{"--bank-b", "mariadb", "--modes", "txcoord-grpc"}, "--modes"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"transfer"}, c.args...))
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want one naming %s", c.args, err, c.want)
		}
	}
}

// A short mixed run: every mode commits transfers across PostgreSQL and
// MariaDB, and nothing is left prepared at either (the run checks).
func TestMixedTransferShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL and a MariaDB server")
	}
	var out strings.Builder
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"transfer", "--bank-b", "mariadb", "--duration", "300ms", "--warmup", "100ms", "--rounds", "1", "--workers", "2", "--accounts", "100"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, m := range mixedModes {
		if !strings.Contains(out.String(), " "+m+" ") {
			t.Errorf("no row for %s:\n%s", m, out.String())
		}
	}
	if !strings.Contains(out.String(), "nothing left prepared at either") {
		t.Errorf("no end check:\n%s", out.String())
	}
}

func TestRecoveryBenchLeavesNothingInDoubt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers and a child process")
	}
	var out strings.Builder
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"recovery", "--transactions", "40", "--workers", "4"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"20 with holder bank_a (20 commit rows), 20 on the bbolt log (20 pending COMMIT records)", "after: 0 prepared, 0 decision rows, transfers 40 at bank_a and 40 at bank_b"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSustainFlagsThatMakeNoSenseAreRefused(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--window", "0s"}, "--window"}, {[]string{"--duration", "1m", "--window", "40s"}, "--duration"},
		{[]string{"--idle", "0s"}, "--idle"}, {[]string{"--workers", "0"}, "--workers"}, {[]string{"--accounts", "1"}, "--accounts"},
	} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"sustain"}, c.args...))
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want one naming %s", c.args, err, c.want)
		}
	}
}

// A short sustain run: transfers go through the server process, none
// fails, and the figures are printed.
func TestSustainShortRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers and a server process")
	}
	var out strings.Builder
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"sustain", "--duration", "4s", "--window", "1s", "--idle", "1s", "--workers", "2", "--accounts", "100"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{", 0 failed", "server CPU per transfer: first 1s: ", "last/first ", "% of a core over the 1s after the load", "; at rest RSS "} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// logfill writes ended decisions and opens the log in a new process: every
// one is ended, and the figures are printed.
func TestLogfillOpensWhatItWrote(t *testing.T) {
	var out strings.Builder
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"logfill", "--ended", "500", "--writers", "8"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"logfill: 500 ended decisions", "open took ", "RSS ", "; 0 decisions pending"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, args := range [][]string{{"--ended", "0"}, {"--writers", "0"}} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"logfill"}, args...))
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: err %v, want one naming %s", args, err, args[0])
		}
	}
}
