// Command txbench measures txcoord against baselines on the same work.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "txbench:", err)
		os.Exit(exitError)
	}
	os.Exit(exitOK)
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "txbench",
		Short:         "Benchmark txcoord against baselines on the same workload",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newTransferCmd(), newCompareCmd(), newRecoveryCmd(), newRecoveryChildCmd(), newSustainCmd(), newSustainServerCmd(), newLogfillCmd(), newLogfillOpenCmd())
	return root
}
