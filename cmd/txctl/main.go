// Command txctl is the operator's tool for txcoord: see transactions and
// prepared branches, resolve stuck ones, run recovery, and read the
// decision log offline.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1 // anything else
	exitUsage       = 2 // bad flags or arguments
	exitRefused     = 3 // the server refused (for example, a resolution contradicting the logged decision)
	exitNotFound    = 4 // no such transaction
	exitUnavailable = 5 // the server or database could not be reached in time
	exitCorrupt     = 6 // the WAL file is damaged
	exitLocked      = 7 // the WAL file is in use by a running server
)

// exitErr carries an exit code and a hint saying what to do.
type exitErr struct {
	code int
	err  error
	hint string
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

func fail(code int, err error, hint string) error { return &exitErr{code: code, err: err, hint: hint} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs txctl with args and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "txctl:", err)
	var ee *exitErr
	if errors.As(err, &ee) {
		if ee.hint != "" {
			fmt.Fprintln(stderr, "  "+ee.hint)
		}
		return ee.code
	}
	if isUsage(err) {
		return exitUsage
	}
	return exitError
}
