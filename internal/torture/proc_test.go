package torture

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/txcoord/txcoord/internal/failpoint"
	"github.com/txcoord/txcoord/internal/proctest"
)

// etcdMember is the etcd member program's name in the build directory.
const etcdMember = "etcd-member"

// build builds txcoord and the order example's services into dir, with the
// race detector if the test runs with it, and with etcd, the etcd member
// program (without it: the race detector would slow etcd, not test us).
func build(dir string, etcd bool) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/txcoord")
	for _, s := range services {
		args = append(args, "./examples/order/"+s)
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if etcd {
		args := []string{"build", "-o", filepath.Join(dir, etcdMember), "./internal/etcdtest/member"}
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// restartDelay is how long a process that died on its own (at an armed
// crash point, or failing at start) stays down before it is started again.
const restartDelay = 300 * time.Millisecond

// proc is a supervised child process. While it is wanted up, it is started
// again (unarmed) whenever it exits on its own; kill takes it down until the
// next start. It dies with the test: SIGKILL when the test process dies,
// and at close.
type proc struct {
	name    string
	path    string
	args    []string
	addr    string // gRPC address, for readiness
	logPath string
	events  *events

	mu      sync.Mutex
	want    bool // should be running
	closed  bool
	run     *procRun
	timers  sync.WaitGroup // restarts waiting for restartDelay
	crashes map[string]int // crash point spec -> times it fired
	exits   []string       // exits nobody asked for, other than crash points
}

// procRun is one run of a process.
type procRun struct {
	cmd    *exec.Cmd
	done   chan struct{}
	arm    string // crash point armed in this run
	killed bool   // ended by kill or stop
}

func newProc(name, path, addr, logPath string, ev *events, args ...string) *proc {
	return &proc{name: name, path: path, args: args, addr: addr, logPath: logPath, events: ev, crashes: map[string]int{}}
}

// start starts the process, with crash point arm armed if not empty. It is
// a no-op if the process is running.
func (p *proc) start(arm string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("%s: closed", p.name)
	}
	p.want = true
	if p.run != nil {
		return nil
	}
	return p.spawnLocked(arm)
}

// spawnLocked starts a run. p.mu is held.
func (p *proc) spawnLocked(arm string) error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	env := append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	header := "start"
	if arm != "" {
		env = append(env, failpoint.EnvVar+"="+arm)
		header += " " + failpoint.EnvVar + "=" + arm
	}
	fmt.Fprintf(f, "=== %s: %s %s\n", time.Now().Format(time.StampMilli), header, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	r := &procRun{cmd: cmd, done: make(chan struct{}), arm: arm}
	p.run = r
	p.timers.Add(1)
	go func() {
		defer p.timers.Done()
		_ = cmd.Wait()
		fmt.Fprintf(f, "=== %s: %v\n", time.Now().Format(time.StampMilli), cmd.ProcessState)
		f.Close()
		p.exited(r)
		close(r.done)
	}()
	return nil
}

// exited handles the end of run r: a run nobody ended is counted and, if
// the process is wanted up, started again after restartDelay.
func (p *proc) exited(r *procRun) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run == r {
		p.run = nil
	}
	if r.killed {
		return
	}
	ws, _ := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if r.arm != "" && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		p.crashes[r.arm]++
		p.events.logf("%s killed itself at crash point %s", p.name, r.arm)
	} else {
		p.exits = append(p.exits, r.cmd.ProcessState.String())
		p.events.logf("%s exited on its own: %v", p.name, r.cmd.ProcessState)
	}
	if !p.want || p.closed {
		return
	}
	p.timers.Add(1)
	time.AfterFunc(restartDelay, func() {
		defer p.timers.Done()
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.want && !p.closed && p.run == nil {
			if err := p.spawnLocked(""); err != nil {
				p.events.logf("%s: restart failed: %v", p.name, err)
			}
		}
	})
}

// kill sends SIGKILL and waits until the process is gone; it stays down
// until the next start.
func (p *proc) kill() {
	p.mu.Lock()
	p.want = false
	r := p.run
	if r == nil {
		p.mu.Unlock()
		return
	}
	r.killed = true
	_ = r.cmd.Process.Kill()
	p.mu.Unlock()
	<-r.done
}

// stop sends SIGTERM and waits for a clean exit; past timeout it kills.
// A run armed with a crash point may reach it while stopping: that counts
// as the crash point firing, not as an unclean stop.
func (p *proc) stop(timeout time.Duration) error {
	p.mu.Lock()
	p.want = false
	r := p.run
	if r == nil {
		p.mu.Unlock()
		return nil
	}
	r.killed = true
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	p.mu.Unlock()
	select {
	case <-r.done:
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM; log:\n%s", p.name, timeout, p.tail(30))
	}
	if r.cmd.ProcessState.Success() {
		return nil
	}
	if ws, _ := r.cmd.ProcessState.Sys().(syscall.WaitStatus); r.arm != "" && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		p.mu.Lock()
		p.crashes[r.arm]++
		p.mu.Unlock()
		p.events.logf("%s killed itself at crash point %s while stopping", p.name, r.arm)
		return nil
	}
	return fmt.Errorf("%s ended with %v after SIGTERM; log:\n%s", p.name, r.cmd.ProcessState, p.tail(30))
}

// armed returns the crash point of the current run, if it is running.
func (p *proc) armed() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run == nil {
		return "", false
	}
	return p.run.arm, true
}

// close kills the process for good and waits for its goroutines.
func (p *proc) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.kill()
	p.timers.Wait()
}

// waitReady waits until the process's gRPC health service says SERVING.
// The process may die and be restarted meanwhile.
func (p *proc) waitReady(ctx context.Context) error {
	if err := proctest.WaitServing(ctx, p.addr, nil, dialOptions()...); err != nil {
		return fmt.Errorf("%s not ready at %s: %v; log:\n%s", p.name, p.addr, err, p.tail(30))
	}
	return nil
}

// log returns the process's whole log ("" if it cannot be read).
func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string { return proctest.Tail(p.logPath, n) }

// problems lists what the process's log shows went wrong in any run: a
// data race, a panic, a fatal runtime error.
func (p *proc) problems() []string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", p.name, err)}
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", p.name, err)}
	}
	var out []string
	for _, marker := range []string{"WARNING: DATA RACE", "panic: ", "fatal error: "} {
		if i := bytes.Index(b, []byte(marker)); i >= 0 {
			end := min(len(b), i+2000)
			out = append(out, fmt.Sprintf("%s's log (%s) shows %q:\n%s", p.name, p.logPath, marker, b[i:end]))
		}
	}
	return out
}

// counts returns the crash points that fired and the exits nobody asked
// for.
func (p *proc) counts() (crashes map[string]int, exits []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	crashes = map[string]int{}
	for k, v := range p.crashes {
		crashes[k] = v
	}
	return crashes, append([]string(nil), p.exits...)
}
