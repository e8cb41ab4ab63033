// Package dbproc runs a throwaway database server as a child process, for
// the test harnesses internal/pgtest and internal/mariadbtest: its start,
// its exit, its log and a free port for it.
package dbproc

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"time"
)

// Run is one server process.
type Run struct {
	Proc   *os.Process
	exited chan struct{} // closed when Proc has exited
	err    error         // Proc's wait status, set before exited is closed
}

// Start starts cmd with its output appended to the log at logPath, and
// returns the run and the log offset at which this run's output begins.
func Start(cmd *exec.Cmd, logPath string) (*Run, int64, error) {
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil, 0, err
	}
	defer logFile.Close()
	off, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, 0, err
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	r := &Run{Proc: cmd.Process, exited: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.exited)
	}()
	return r, off, nil
}

// Exited is closed when the process has exited.
func (r *Run) Exited() <-chan struct{} { return r.exited }

// Alive reports whether the process has not exited.
func (r *Run) Alive() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// WaitExit waits up to d for the process to exit and reports whether it
// did.
func (r *Run) WaitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.exited:
		return true
	case <-t.C:
		return false
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	return port, nil
}

// LogTail returns the last n lines of the file at path.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(Tail(b, n))
}

// LogSince returns the file at path from offset off on.
func LogSince(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// Tail returns the last n lines of b.
func Tail(b []byte, n int) []byte {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i+1:]
			}
		}
	}
	return b
}
