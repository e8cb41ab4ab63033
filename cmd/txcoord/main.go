// Command txcoord is the coordinator server: remote participants (services
// using the sdk package) join global transactions that clients begin and
// commit through it.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "txcoord:", err)
		os.Exit(1)
	}
}
