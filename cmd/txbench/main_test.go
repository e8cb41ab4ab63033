package main

import (
	"context"
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// txbench recovery runs this binary as its child: in a test, that is
	// the test binary.
	if os.Getenv(envRecoveryWAL) != "" {
		if err := recoveryChild(context.Background(), os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "recovery child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// txbench sustain runs it as its server process, and logfill to open
	// the log it filled.
	if len(os.Args) > 1 && (os.Args[1] == "sustain-server" || os.Args[1] == "logfill-open") {
		cmd := newRootCmd()
		cmd.SetArgs(os.Args[1:])
		if err := cmd.Execute(); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
