package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/wal"
)

type logfillOptions struct {
	ended, writers int
}

func newLogfillCmd() *cobra.Command {
	o := &logfillOptions{}
	cmd := &cobra.Command{
		Use:   "logfill",
		Short: "Fills a bbolt log with ended decisions, then opens it in a fresh process: its open time and memory",
		Long: `logfill writes --ended COMMIT decisions (two branches each) and their END
records to a new bbolt log, as a coordinator that ran a long while at a
high rate would leave it within its keep period (one hour), then opens the
log in a new process and prints how long the open took and the memory the
process holds with it open (Go heap after a GC, and RSS).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLogfill(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.ended, "ended", 1_000_000, "ended decisions to write")
	f.IntVar(&o.writers, "writers", 256, "concurrent writers (they share bbolt commits)")
	return cmd
}

func runLogfill(ctx context.Context, out io.Writer, o *logfillOptions) error {
	switch {
	case o.ended < 1:
		return fmt.Errorf("--ended %d: at least 1", o.ended)
	case o.writers < 1 || o.writers > 4096:
		return fmt.Errorf("--writers %d: between 1 and 4096", o.writers)
	}
	if ctx == nil {
		ctx = context.Background()
	}
	dir, err := os.MkdirTemp("", "txbench-logfill-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "txcoord.wal")
	log, err := wal.OpenBolt(path, wal.BoltOptions{Owner: "txc.logfill"})
	if err != nil {
		return err
	}
	began := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.writers)
	for range o.writers {
		wg.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(o.ended) {
					return
				}
				if err := fillOne(ctx, log, n); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		log.Close()
		return err
	}
	if err := log.Close(); err != nil {
		return err
	}
	fill := time.Since(began)
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.CommandContext(ctx, self, "logfill-open", "--path", path)
	child.Stderr = os.Stderr
	res, err := child.Output()
	if err != nil {
		return fmt.Errorf("open the log in a new process: %w", err)
	}
	fmt.Fprintf(out, "logfill: %d ended decisions (two branches each) written in %v; the log file is %.0f MiB\n", o.ended, fill.Round(time.Millisecond), float64(fi.Size())/(1<<20))
	fmt.Fprintf(out, "  opened in a new process: %s", res)
	return nil
}

// fillOne writes decision n and its END.
func fillOne(ctx context.Context, log wal.Log, n int64) error {
	id, err := ids.NewTxID()
	if err != nil {
		return err
	}
	rec := wal.Record{Kind: wal.KindCommit, TxID: id}
	for i, res := range []string{"bank_a", "bank_b"} {
		g, err := ids.NewGID(ids.DefaultPrefix, "logfill", id, res+"-"+strconv.Itoa(i))
		if err != nil {
			return err
		}
		rec.Branches = append(rec.Branches, wal.Branch{Resource: res, GID: g})
	}
	if _, err := log.Append(ctx, rec); err != nil {
		return fmt.Errorf("decision %d: %w", n, err)
	}
	return log.End(id)
}

// newLogfillOpenCmd is logfill's second process: it opens the log and
// reports the time and the memory.
func newLogfillOpenCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:    "logfill-open",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if path == "" {
				return errors.New("--path is required")
			}
			began := time.Now()
			log, err := wal.OpenBolt(path, wal.BoltOptions{Owner: "txc.logfill"})
			if err != nil {
				return err
			}
			defer log.Close()
			took := time.Since(began)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mem, err := procMemory(os.Getpid())
			if err != nil {
				return err
			}
			d, err := log.Pending()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "open took %v; Go heap %.0f MiB after a GC, %v; %d decisions pending\n",
				took.Round(time.Millisecond), mib(int64(ms.HeapAlloc)), mem, len(d))
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "path", "", "the log file")
	return cmd
}
