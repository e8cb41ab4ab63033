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
