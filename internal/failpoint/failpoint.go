// Package failpoint provides named crash points for crash tests.
//
// A crash point is a call failpoint.Hit("name") placed before and after a
// durable write. It does nothing unless the process was started with the
// environment variable TXCOORD_CRASH set to "name" or "name:N" (crash at the
// N-th hit, counting from 1); then the process kills itself with SIGKILL at
// that point, as a power cut or kill -9 would.
package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// EnvVar is the environment variable that arms a crash point.
const EnvVar = "TXCOORD_CRASH"

var (
	armed   atomic.Bool
	mu      sync.Mutex
	target  string
	atHit   int64
	hits    int64
	onCrash = func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late; wait for it.
	}
)

func init() {
	if v := os.Getenv(EnvVar); v != "" {
		if err := Arm(v); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", EnvVar, err)
			os.Exit(2)
		}
	}
}

// Arm sets the crash point from a spec "name" or "name:N". An empty spec
// disarms.
func Arm(spec string) error {
	mu.Lock()
	defer mu.Unlock()
	if spec == "" {
		armed.Store(false)
		target, atHit, hits = "", 0, 0
		return nil
	}
	name, n := spec, int64(1)
	if i := strings.LastIndexByte(spec, ':'); i >= 0 {
		v, err := strconv.ParseInt(spec[i+1:], 10, 64)
		if err != nil || v < 1 {
			return fmt.Errorf("failpoint: bad spec %q: want name or name:N with N >= 1", spec)
		}
		name, n = spec[:i], v
	}
	if !known(name) {
		return fmt.Errorf("failpoint: unknown crash point %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	target, atHit, hits = name, n, 0
	armed.Store(true)
	return nil
}

// Hit marks a crash point. It costs one atomic load when nothing is armed.
func Hit(name string) {
	if !armed.Load() {
		return
	}
	mu.Lock()
	if name != target {
		mu.Unlock()
		return
	}
	hits++
	crash := hits == atHit
	mu.Unlock()
	if crash {
		onCrash()
	}
}

// Armed reports whether the crash point name is the one armed. Code may
// take a slower path that exposes the point only then (send two
// statements where it would send one, say), so that a crash test can stop
// between them.
func Armed(name string) bool {
	if !armed.Load() {
		return false
	}
	mu.Lock()
	defer mu.Unlock()
	return name == target
}

// During runs f, marking crash point name while f is in flight: when the
// point is armed and due, f starts in another goroutine and the process
// kills itself shortly after, before f returns. It stands for "a request
// sent, its reply not read".
func During(name string, f func()) {
	if !armed.Load() {
		f()
		return
	}
	mu.Lock()
	due := false
	if name == target {
		hits++
		due = hits == atHit
	}
	mu.Unlock()
	if !due {
		f()
		return
	}
	go f()
	time.Sleep(duringDelay)
	onCrash()
}

// duringDelay is how long During lets f run before the crash: long enough
// for a request to leave the process, short enough that its reply has not
// come back.
const duringDelay = 2 * time.Millisecond
