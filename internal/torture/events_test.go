package torture

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// events is the run's timeline: every fault, heal and surprise, with the
// time since the faults began. It goes to a file, shown when the test
// fails.
type events struct {
	mu    sync.Mutex
	f     *os.File
	path  string
	start time.Time
	lines int
}

func newEvents(path string) (*events, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &events{f: f, path: path, start: time.Now()}, nil
}

// restart sets the time origin.
func (e *events) restart() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.start = time.Now()
}

func (e *events) logf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return
	}
	fmt.Fprintf(e.f, "%+9.3fs  %s\n", time.Since(e.start).Seconds(), fmt.Sprintf(format, args...))
	e.lines++
}

// tail returns the last n lines.
func (e *events) tail(n int) string {
	b, err := os.ReadFile(e.path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("(%d lines before these in %s)", len(lines)-n, e.path)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

func (e *events) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f != nil {
		e.f.Close()
		e.f = nil
	}
}
