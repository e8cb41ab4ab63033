package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/txcoord/txcoord/authz"
	"github.com/txcoord/txcoord/coordinator"
	"github.com/txcoord/txcoord/server"
	"github.com/txcoord/txcoord/wal"
)

type sustainOptions struct {
	duration, window, idle time.Duration
	workers, accounts      int
	serverProfile          string
	maxRetained            int
}

func newSustainCmd() *cobra.Command {
	o := &sustainOptions{}
	cmd := &cobra.Command{
		Use:   "sustain",
		Short: "Transfers through a txcoord server process for a long while: its CPU per transfer early and late, its idle CPU after, its memory",
		Long: `sustain runs transfers between two PostgreSQL databases through a txcoord
server in a process of its own (its log in bbolt), the participants being
two SDK services in this process, for --duration at --workers. It prints
the server's CPU per transfer in the first and the last --window (a server
whose bookkeeping grows with the transactions it has finished gets slower
per transfer as the run goes on), the server's CPU over --idle after the
load stops (its background work at rest), and its resident memory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSustain(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs")
	f.DurationVar(&o.window, "window", time.Minute, "the first and the last stretch of the load compared")
	f.DurationVar(&o.idle, "idle", time.Minute, "how long the server's idle CPU is measured after the load")
	f.IntVar(&o.workers, "workers", 8, "concurrent clients")
	f.IntVar(&o.accounts, "accounts", 10000, "accounts per database")
	f.StringVar(&o.serverProfile, "server-cpuprofile", "", "write CPU profiles of the server process over the first and the last --window to `file`.first and file.last")
	f.IntVar(&o.maxRetained, "max-retained", 0, "the server's cap on finished transactions remembered (0: its default, 100000)")
	return cmd
}

func (o *sustainOptions) validate() error {
	switch {
	case o.window < time.Second:
		return fmt.Errorf("--window %v: at least 1s", o.window)
	case o.duration < 2*o.window:
		return fmt.Errorf("--duration %v: at least two windows (--window %v)", o.duration, o.window)
	case o.idle < time.Second:
		return fmt.Errorf("--idle %v: at least 1s", o.idle)
	case o.workers < 1:
		return fmt.Errorf("--workers %d: at least 1", o.workers)
	case o.accounts < 2:
		return fmt.Errorf("--accounts %d: at least 2", o.accounts)
	case o.maxRetained < 0:
		return fmt.Errorf("--max-retained %d: 0 (the default) or more", o.maxRetained)
	}
	return nil
}

// sample is the server's CPU time and the transfers done at one moment.
type sample struct {
	at   time.Time
	cpu  time.Duration
	done uint64
}

func runSustain(ctx context.Context, out io.Writer, o *sustainOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	_, db, closeBanks, err := startBanks(ctx, o.accounts)
	if err != nil {
		return err
	}
	defer closeBanks()
	dir, err := os.MkdirTemp("", "txbench-sustain-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"sustain-server", "--dir", dir, "--max-retained", strconv.Itoa(o.maxRetained)}
	if o.serverProfile != "" {
		abs, err := filepath.Abs(o.serverProfile)
		if err != nil {
			return err
		}
		args = append(args, "--cpuprofile", abs)
	}
	child := exec.Command(self, args...)
	child.Stderr = os.Stderr
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start the server: %w", err)
	}
	defer func() {
		_ = child.Process.Signal(syscall.SIGTERM)
		_ = child.Wait()
	}()
	addr, err := readAddress(stdout, 30*time.Second)
	if err != nil {
		return fmt.Errorf("the server: %w", err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	rig, err := newRemoteGRPCMode(ctx, addr, db[:], bankNames)
	if err != nil {
		return err
	}
	defer rig.close()

	pid := child.Process.Pid
	var done, failed atomic.Uint64
	var firstErr atomic.Value
	began0 := time.Now()
	deadline := began0.Add(o.duration)
	lctx, stop := context.WithDeadline(ctx, deadline)
	defer stop()
	var wg sync.WaitGroup
	for w := range o.workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			// gRPC fails a call at the deadline a moment before the
			// context says it ended: the clock decides.
			for time.Now().Before(deadline) {
				if err := grpcTransfer(lctx, rig, r, o.accounts); err != nil {
					if time.Now().Before(deadline) {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%v (%v into the run)", err, time.Since(began0).Round(time.Millisecond)))
					}
					continue
				}
				done.Add(1)
			}
		})
	}
	take := func() (sample, error) {
		cpu, err := procCPU(pid)
		return sample{at: time.Now(), cpu: cpu, done: done.Load()}, err
	}
	// toggle starts or stops the server's CPU profile (--server-cpuprofile).
	toggle := func() {
		if o.serverProfile != "" {
			_ = child.Process.Signal(syscall.SIGUSR1)
		}
	}
	toggle()
	began, err := take()
	if err != nil {
		return err
	}
	var firstEnd, lastBegin sample
	t := time.NewTimer(o.window)
	<-t.C
	if firstEnd, err = take(); err != nil {
		return err
	}
	toggle()
	t.Reset(time.Until(began.at.Add(o.duration - o.window)))
	<-t.C
	toggle()
	if lastBegin, err = take(); err != nil {
		return err
	}
	wg.Wait()
	end, err := take()
	if err != nil {
		return err
	}
	toggle()
	memLoad, _ := procMemory(pid)
	time.Sleep(o.idle)
	rest, err := take()
	if err != nil {
		return err
	}
	memIdle, _ := procMemory(pid)

	perTx := func(a, b sample) string {
		if b.done == a.done {
			return "no transfers"
		}
		return fmt.Sprintf("%v (%d transfers)", ((b.cpu - a.cpu) / time.Duration(b.done-a.done)).Round(time.Microsecond), b.done-a.done)
	}
	ratio := "n/a"
	if firstEnd.done > began.done && end.done > lastBegin.done {
		first := float64(firstEnd.cpu-began.cpu) / float64(firstEnd.done-began.done)
		last := float64(end.cpu-lastBegin.cpu) / float64(end.done-lastBegin.done)
		ratio = fmt.Sprintf("%.2f", last/first)
	}
	total := end.done - began.done
	fmt.Fprintf(out, "sustain: %d workers, transfers between two PostgreSQL databases through a txcoord server process (bbolt log) and two SDK services, for %v\n",
		o.workers, o.duration)
	fmt.Fprintf(out, "  transfers:             %d committed (%.0f/s), %d failed\n", total, float64(total)/end.at.Sub(began.at).Seconds(), failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(out, "  the first failure:     %s\n", e)
	}
	fmt.Fprintf(out, "  server CPU per transfer: first %v: %s; last %v: %s; last/first %s\n", o.window, perTx(began, firstEnd), o.window, perTx(lastBegin, end), ratio)
	fmt.Fprintf(out, "  server CPU at rest:    %.2f%% of a core over the %v after the load\n", 100*float64(rest.cpu-end.cpu)/float64(rest.at.Sub(end.at)), o.idle)
	fmt.Fprintf(out, "  server memory:         at the end of the load %v; at rest %v\n", memLoad, memIdle)
	return nil
}

// readAddress reads the "listening ADDR" line the server child prints.
func readAddress(r io.Reader, timeout time.Duration) (string, error) {
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		addr, found := strings.CutPrefix(l, "listening ")
		if !ok || !found {
			return "", fmt.Errorf("exited or said %q instead of its address", l)
		}
		return addr, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no address within %v", timeout)
	}
}

// procCPU returns process pid's CPU time (user and system) from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after its closing parenthesis (field 3, state, first).
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTick, nil
}

// procMem is a process's resident memory: all of it, its own (anonymous)
// pages, and pages of files it maps (a bbolt log's mmap, page cache that
// the kernel can take back).
type procMem struct{ rss, anon, file int64 }

func (m procMem) String() string {
	return fmt.Sprintf("RSS %.0f MiB (anonymous %.0f MiB, file-backed %.0f MiB)", mib(m.rss), mib(m.anon), mib(m.file))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// procMemory reads process pid's resident memory from /proc.
func procMemory(pid int) (procMem, error) {
	var m procMem
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	fields := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	for _, l := range strings.Split(string(b), "\n") {
		for name, dst := range fields {
			if v, ok := strings.CutPrefix(l, name); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return m, fmt.Errorf("/proc/%d/status: %s %w", pid, name, err)
				}
				*dst = kb << 10
			}
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, nil
}

// newSustainServerCmd is the server process of sustain: a coordinator
// with its bbolt log and the gRPC server, on a free loopback port that it
// prints, until SIGTERM.
func newSustainServerCmd() *cobra.Command {
	var dir, profile string
	var maxRetained int
	cmd := &cobra.Command{
		Use:    "sustain-server",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			if profile != "" {
				stopProfiles := profileOnSignal(profile, cmd.ErrOrStderr())
				defer stopProfiles()
			}
			return sustainServer(ctx, cmd.OutOrStdout(), dir, maxRetained)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory of the log")
	cmd.Flags().StringVar(&profile, "cpuprofile", "", "on each SIGUSR1, start or stop a CPU profile, written to this file's name with .first, then .last")
	cmd.Flags().IntVar(&maxRetained, "max-retained", 0, "server.Config.MaxRetained")
	return cmd
}

func sustainServer(ctx context.Context, out io.Writer, dir string, maxRetained int) error {
	if dir == "" {
		return errors.New("--dir is required")
	}
	log, err := wal.OpenBolt(filepath.Join(dir, "txcoord.wal"), wal.BoltOptions{Owner: "txc.sustain"})
	if err != nil {
		return err
	}
	defer log.Close()
	c, err := coordinator.New(ctx, coordinator.Config{ID: "sustain", Log: log, InDoubtTimeout: 2 * time.Second, CallTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	srv, err := server.New(server.Config{Coordinator: c, Authorizer: authz.Insecure(), MaxRetained: maxRetained,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}})
	if err != nil {
		return err
	}
	defer srv.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go srv.Run(runCtx)
	fmt.Fprintf(out, "listening %s\n", lis.Addr())
	<-ctx.Done()
	return nil
}

// profileOnSignal starts a CPU profile on SIGUSR1 and stops it on the
// next, writing path.first, then path.last. The returned func stops a
// profile still running and the listening.
func profileOnSignal(path string, errs io.Writer) func() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		var f *os.File
		stop := func() {
			if f != nil {
				pprof.StopCPUProfile()
				_ = f.Close()
				f = nil
			}
		}
		defer stop()
		names := []string{path + ".first", path + ".last"}
		on := false // whether the last signal started a profile
		for {
			select {
			case <-quit:
				return
			case <-sig:
			}
			if on = !on; !on {
				stop()
				continue
			}
			if len(names) == 0 {
				continue
			}
			var err error
			if f, err = os.Create(names[0]); err == nil {
				if err = pprof.StartCPUProfile(f); err != nil {
					_ = f.Close()
					f = nil
				}
			}
			if err != nil {
				fmt.Fprintf(errs, "sustain-server: profile %s: %v\n", names[0], err)
			}
			names = names[1:]
		}
	}()
	return func() {
		signal.Stop(sig)
		close(quit)
		<-done
	}
}
