package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/txcoord/txcoord/wal"
)

func newWALCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "Read, check or compact the decision log offline (server stopped)",
		Long: `Work on the decision log file directly, with the txcoord server stopped (a
running server holds the file's lock: exit code 7). inspect and verify open it
read-only and change nothing.`,
		Example: `  txctl wal verify --wal /var/lib/txcoord/txcoord.wal
  txctl wal inspect --wal /var/lib/txcoord/txcoord.wal -o json`,
	}
	cmd.PersistentFlags().StringVar(&path, "wal", "", "the log file (DATA_DIR/txcoord.wal)")
	open := func(readOnly bool) (*wal.Bolt, error) {
		if path == "" {
			return nil, usageErr(errors.New("--wal is required: the server's DATA_DIR/txcoord.wal"))
		}
		b, err := wal.OpenBolt(path, wal.BoltOptions{ReadOnly: readOnly, LockTimeout: time.Second})
		if err != nil {
			return nil, walErr(err)
		}
		return b, nil
	}

	inspect := &cobra.Command{
		Use:     "inspect --wal FILE",
		Short:   "Print every record of the log",
		Example: `  txctl wal inspect --wal /var/lib/txcoord/txcoord.wal`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := open(true)
			if err != nil {
				return err
			}
			defer b.Close()
			type rec struct {
				LSN       uint64    `json:"lsn"`
				Kind      string    `json:"kind"`
				TxID      string    `json:"txid"`
				Time      time.Time `json:"time"`
				Epoch     uint64    `json:"epoch"`
				Heuristic bool      `json:"heuristic,omitempty"`
				Who       string    `json:"who,omitempty"`
				Why       string    `json:"why,omitempty"`
				Branches  []string  `json:"branches,omitempty"`
			}
			var recs []rec
			err = b.Records(func(r wal.Record) error {
				x := rec{LSN: r.LSN, Kind: r.Kind.String(), TxID: r.TxID.String(), Time: r.Time, Epoch: r.Epoch, Heuristic: r.Heuristic, Who: r.Who, Why: r.Why}
				for _, br := range r.Branches {
					x.Branches = append(x.Branches, br.Resource+"="+br.GID.String())
				}
				recs = append(recs, x)
				return nil
			})
			if err != nil {
				return walErr(err)
			}
			st := b.Stats()
			out := cmd.OutOrStdout()
			if g.output == "json" {
				if recs == nil {
					recs = []rec{}
				}
				return printJSON(out, map[string]any{"file": path, "owner": b.Owner(), "last_epoch": b.Epoch(), "pending": st.Pending, "records": recs})
			}
			fmt.Fprintf(out, "log %s: owner %q, last epoch %d, %d records, %d decisions without END\n", path, b.Owner(), b.Epoch(), len(recs), st.Pending)
			tw := table(out)
			fmt.Fprintln(tw, "LSN\tKIND\tTXID\tTIME\tEPOCH\tHEURISTIC\tBRANCHES")
			for _, r := range recs {
				h := "-"
				if r.Heuristic {
					h = r.Who + ": " + r.Why
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%v\n", r.LSN, r.Kind, r.TxID, r.Time.Format(time.RFC3339Nano), r.Epoch, h, r.Branches)
			}
			return tw.Flush()
		},
	}

	verify := &cobra.Command{
		Use:   "verify --wal FILE",
		Short: "Check every record's checksum and the state transitions",
		Long: `Read the whole log read-only, checking every record's checksum and that each
transaction's records follow the protocol (one decision, END only after it).
The first damaged record is named by bucket and key; exit code 6.`,
		Example: `  txctl wal verify --wal /var/lib/txcoord/txcoord.wal && echo ok`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := open(true)
			if err != nil {
				return err
			}
			defer b.Close()
			n := 0
			if err := b.Records(func(wal.Record) error { n++; return nil }); err != nil {
				return walErr(err)
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, map[string]any{"file": path, "ok": true, "records": n, "pending": b.Stats().Pending})
			}
			fmt.Fprintf(out, "%s: ok, %d records, checksums and state transitions verified\n", path, n)
			return nil
		},
	}

	var keep time.Duration
	var reason string
	compact := &cobra.Command{
		Use:   "compact --wal FILE",
		Short: "Remove ended transactions from the log",
		Long: `Remove every transaction whose END is older than --keep (default 1h, the
server's own keep period). Until removed, the log still answers "committed"
for a finished transaction; after, it is reported as forgotten (outcome
unknown), never as aborted: the log keeps its compaction horizon. Keeping less
than 1h loses answers a client may still ask for, and needs --reason.`,
		Example: `  txctl wal compact --wal /var/lib/txcoord/txcoord.wal
  txctl wal compact --wal /var/lib/txcoord/txcoord.wal --keep 10m --reason "disk full"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keep < 0 {
				return usageErr(fmt.Errorf("--keep %v: want a duration of 0 or more", keep))
			}
			if keep < defaultKeep && strings.TrimSpace(reason) == "" {
				return usageErr(fmt.Errorf("--keep %v is less than the server's keep period (%v): decisions of that age may still be asked for, and would read as forgotten; say why with --reason", keep, defaultKeep))
			}
			b, err := open(false)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
			defer cancel()
			n, err := b.Compact(ctx, time.Now().Add(-keep))
			if cerr := b.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return walErr(err)
			}
			out := cmd.OutOrStdout()
			if g.output == "json" {
				return printJSON(out, map[string]any{"file": path, "removed": n})
			}
			fmt.Fprintf(out, "%s: removed %d ended transactions\n", path, n)
			return nil
		},
	}
	compact.Flags().DurationVar(&keep, "keep", defaultKeep, "keep transactions that ended less than this long ago")
	compact.Flags().StringVar(&reason, "reason", "", "why to keep less than the server's keep period")
	cmd.AddCommand(inspect, verify, compact)
	return cmd
}

// defaultKeep is how long the server keeps finished decisions by default
// (coordinator.Config.KeepEnded).
const defaultKeep = time.Hour

func walErr(err error) error {
	var ce *wal.CorruptError
	switch {
	case errors.As(err, &ce):
		return fail(exitCorrupt, err, fmt.Sprintf("record %d in bucket %q is damaged; keep a copy of the file, and resolve its transactions with the databases' prepared branches (txctl scan) before replacing it", ce.Key, ce.Bucket))
	case errors.Is(err, wal.ErrCorrupt), errors.Is(err, wal.ErrBadFile):
		return fail(exitCorrupt, err, "the file is not a readable txcoord log; keep a copy for inspection")
	case errors.Is(err, wal.ErrLocked):
		return fail(exitLocked, err, "a txcoord server holds the log: stop it first (the running server answers `txctl list` and `txctl show`)")
	}
	return fail(exitError, err, "")
}
