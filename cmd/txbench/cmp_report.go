package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// writeReport writes results.json, summary.md and the plots to dir.
func writeReport(dir string, o *cmpOptions, wls []workload, results []cmpResult) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	doc := map[string]any{
		"generated": time.Now().UTC().Format(time.RFC3339),
		"settings": map[string]any{
			"duration_s": o.duration.Seconds(), "warmup_s": o.warmup.Seconds(), "fail_rate": o.failRate,
			"participant_crash": o.crash, "accounts": o.accounts, "seed": o.seed, "workers": o.workers, "modes": o.modes,
		},
		"workloads": wls,
		"runs":      results,
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	plots, err := writePlots(dir, o, wls, results)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "summary.md"), []byte(summary(o, wls, results, plots)), 0o644)
}

func find(results []cmpResult, wl, mode string, workers int) (cmpResult, bool) {
	for _, r := range results {
		if r.Workload == wl && r.Mode == mode && r.Workers == workers {
			return r, true
		}
	}
	return cmpResult{}, false
}

// headline returns the ratios the summary leads with, for one workload at
// one worker count.
func headline(results []cmpResult, wl string, workers int) string {
	tp, ok := find(results, wl, "2pc", workers)
	if !ok {
		return ""
	}
	var parts []string
	if n, ok := find(results, wl, "none", workers); ok && n.TPS > 0 {
		parts = append(parts, fmt.Sprintf("2pc/none %.0f%%", 100*tp.TPS/n.TPS))
	}
	if s, ok := find(results, wl, "saga", workers); ok && s.TPS > 0 {
		parts = append(parts, fmt.Sprintf("2pc/saga %.0f%%", 100*tp.TPS/s.TPS))
	}
	if h, ok := find(results, wl, "2pc-holder", workers); ok && tp.TPS > 0 {
		parts = append(parts, fmt.Sprintf("2pc-holder/2pc %.0f%%", 100*h.TPS/tp.TPS))
	}
	if g, ok := find(results, wl, "2pc-grpc", workers); ok && tp.TPS > 0 {
		parts = append(parts, fmt.Sprintf("2pc-grpc/2pc %.0f%%", 100*g.TPS/tp.TPS))
	}
	return strings.Join(parts, ", ")
}

func summary(o *cmpOptions, wls []workload, results []cmpResult, plots []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# 2PC against sagas: what the numbers say\n\n")
	fmt.Fprintf(&b, "Each run: %v measured after %v of warm-up, %.0f%% of operations failing for a business reason at their last step", o.duration, o.warmup, 100*o.failRate)
	if o.crash {
		b.WriteString(", and the second database server killed (SIGKILL) a third of the way in and restarted a second later")
	}
	b.WriteString(". The saga is ours (an orchestrated saga with a durable bbolt log and idempotent steps), not a peer's. All databases are PostgreSQL servers on this machine with fsync on.\n\n")
	b.WriteString("## What a reader of the data sees\n\n")
	b.WriteString(readersInWords(o, results))
	b.WriteString("\nThe two readers differ in what they wait for. The *plain reader* is an application's ordinary read: one query per database, each in its own transaction, waiting for nothing. Under 2PC it can still see a change in one database and not yet in another while phase two runs (a few milliseconds), and, like any read of several databases in several queries, it sees an operation that commits between its own queries. Its off reads are split by reading again at once: off by the same amount twice is a *stable* partial state (one that lasted); off once is most likely a race between its own queries. ")
	fmt.Fprintf(&b, "The *locking reader* reads every database in one transaction per database, all kept open until every database was read, after taking a SHARE lock on the accounts table in each (the whole-table form of `SELECT ... FOR SHARE`, in the order the operations lock: databases 2 to N, then 1), every %v. It waits for every writer in flight, prepared 2PC branches included, and holds new writers off until it is done: under 2PC it sees only whole operations; under a saga or independent commits, nothing holds a step's commit back, so it sees their partial states. Its price is the wait, reported as *locking wait*, and the writers it holds off meanwhile.\n\n", o.lockEvery)
	if len(plots) > 0 {
		b.WriteString("## Plots\n\n")
		for _, name := range plots {
			fmt.Fprintf(&b, "- [%s.png](%s.png) ([SVG](%s.svg)): %s\n", name, name, name, plotMeaning(name, o))
		}
		b.WriteString("\n")
	}
	for _, w := range wls {
		fmt.Fprintf(&b, "## %s (%s)\n\n", w.Name, w.Desc)
		b.WriteString("| workers | mode | ops/s | p50 ms | p99 ms | aborts | rows locked p99 ms | partly visible p99 ms | plain reader: money missing or doubled (stable) | locking reader: money missing or doubled | locking wait p50 / p99 / max ms | never healed | invariant after recovery |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, workers := range o.workers {
			for _, mode := range o.modes {
				r, ok := find(results, w.Name, mode, workers)
				if !ok {
					continue
				}
				fmt.Fprintf(&b, "| %d | %s | %.0f | %.2f | %.2f | %.1f%% | %.2f | %.2f | %d of %d reads, %.1f%% (%d stable) | %s | %.1f / %.1f / %.1f | %d | %v |\n",
					workers, mode, r.TPS, r.P50, r.P99, 100*r.AbortRate, r.LockedP99, r.InconsistentP99, r.Anomalies, r.Audits, 100*r.AnomalyRate, r.StableAnomalies,
					lockingWords(r), r.LockWaitP50, r.LockWaitP99, r.LockWaitMax, r.NeverHealed, holds(r))
			}
		}
		b.WriteString("\n")
		for _, workers := range o.workers {
			if h := headline(results, w.Name, workers); h != "" {
				fmt.Fprintf(&b, "- At %s: %s of the throughput.\n", nWorkers(workers), h)
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("## In plain words\n\n")
	b.WriteString(plainWords(o, results))
	b.WriteString("\n## How to read it\n\n")
	b.WriteString("- *Rows locked*: under 2PC an operation's rows stay locked from its first UPDATE until COMMIT PREPARED, about the whole operation; under a saga or independent commits, only for the longest single local transaction.\n")
	b.WriteString("- *Partly visible*: how long one database shows the change and another does not: under 2PC, phase two (first COMMIT PREPARED to last acknowledgement); under a saga or independent commits, from the first step's commit to the last step's (or the last compensation's). Operations never healed are counted apart.\n")
	b.WriteString("- *Plain reader*: every 10 ms; *stable* counts the off reads that a second read at once found off by the same amount. Under load a race can repeat by chance, so stable is an estimate, not a proof; with no atomicity the total drifts further with every operation left half done, so its second read rarely agrees.\n")
	b.WriteString("- *Locking reader*: a read that waited longer than " + lockingTimeout.String() + " for a lock gives up and is counted as timed out, not as a read.\n")
	b.WriteString("- *2pc-holder against 2pc*: the holder's branch commits first (its commit is the decision) and the other branches only after its answer, where 2pc sends every COMMIT PREPARED at once after the log write; so a plain reader catches the holder's phase two more often. The locking reader sees neither.\n")
	b.WriteString("- *Invariant after recovery*: after the run, recovery (2PC) or saga recovery finishes what is left; then the total across databases must be unchanged and nothing left prepared.\n")
	if o.crash {
		b.WriteString("- *Aborts with a server killed*: while the server is down, an operation under 2PC or with no atomicity fails at once and the worker starts the next, so these modes count many quick failed attempts; an operation under the saga retries its step until the server is back (one slow operation, not many aborts). Compare throughput and the invariant, not the abort share.\n")
	}
	return b.String()
}

// lockingWords is the locking reader's finding in a table cell.
func lockingWords(r cmpResult) string {
	s := fmt.Sprintf("%d of %d reads, %.1f%%", r.LockAnomalies, r.LockAudits, 100*r.LockAnomalyRate)
	if r.LockTimeouts > 0 {
		s += fmt.Sprintf(" (%d timed out)", r.LockTimeouts)
	}
	return s
}

// readersInWords sums up, per mode over every run, what each reader saw.
func readersInWords(o *cmpOptions, results []cmpResult) string {
	var b strings.Builder
	for _, mode := range o.modes {
		var audits, off, stable, laudits, loff, timeouts int64
		var waits []float64
		for _, r := range results {
			if r.Mode != mode {
				continue
			}
			audits, off, stable = audits+r.Audits, off+r.Anomalies, stable+r.StableAnomalies
			laudits, loff, timeouts = laudits+r.LockAudits, loff+r.LockAnomalies, timeouts+r.LockTimeouts
			waits = append(waits, r.LockWaitP99)
		}
		if audits == 0 && laudits == 0 {
			continue
		}
		fmt.Fprintf(&b, "- **%s**: the locking reader saw money missing or doubled in %d of %d reads (%.1f%%)", mode, loff, laudits, 100*ratio(loff, laudits))
		if timeouts > 0 {
			fmt.Fprintf(&b, ", %d reads timed out waiting", timeouts)
		}
		if len(waits) > 0 {
			fmt.Fprintf(&b, ", waiting up to %.1f ms (the highest p99 of its runs)", slices.Max(waits))
		}
		fmt.Fprintf(&b, "; the plain reader in %d of %d (%.1f%%), %d of them stable.\n", off, audits, 100*ratio(off, audits), stable)
	}
	return b.String()
}

// plotMeaning says what a plot shows and which choice it informs.
func plotMeaning(name string, o *cmpOptions) string {
	switch {
	case name == "throughput":
		return "operations per second against workers, per workload and mode: what 2PC costs in throughput against the saga and against no atomicity, and how each scales."
	case name == "p99":
		return "the 99th percentile latency against workers: the latency price of holding locks through both phases (2PC) against running local steps one after another (saga)."
	case name == "anomalies":
		return "the share of reads that saw money missing or doubled, at the highest worker count: the plain reader's split into stable partial states and races between its own queries, and the locking reader's. Under 2PC the locking reader's bar is zero: if readers must never see a half-done operation, they need 2PC and a reader that locks; a saga cannot give them that."
	case strings.HasPrefix(name, "timeline-"):
		s := "the run at the highest worker count over time: throughput, p99, the plain reader's stable partial states per second, and the share of time the locking reader waited for locks. "
		if o.crash {
			s += "The vertical lines mark the database server's kill and its restart (one per mode). Everything stops while the server is down. After the restart the saga goes on at once; under 2PC the branches that were prepared when the server died keep their locks until recovery commits them, a plain reader sees their half-committed operations meanwhile, and the locking reader waits for them, with every new writer of the table queued behind its lock request, so 2PC commits nothing until recovery is done. This is the availability-against-consistency choice drawn out."
		} else {
			s += "Steady lines mean the averages in the tables are representative."
		}
		return s
	}
	return ""
}

func holds(r cmpResult) string {
	if r.InvariantHolds {
		return "holds"
	}
	s := fmt.Sprintf("**broken** (total off by %d", r.FinalDrift)
	if r.Leftover > 0 {
		s += fmt.Sprintf(", %d prepared left", r.Leftover)
	}
	return s + ")"
}

func plainWords(o *cmpOptions, results []cmpResult) string {
	var b strings.Builder
	maxW := o.workers[len(o.workers)-1]
	for _, wl := range []string{"transfer", "order", "hotspot"} {
		tp, ok1 := find(results, wl, "2pc", maxW)
		sg, ok2 := find(results, wl, "saga", maxW)
		nn, ok3 := find(results, wl, "none", maxW)
		if !ok1 || !ok2 || !ok3 || nn.TPS == 0 || sg.TPS == 0 {
			continue
		}
		fmt.Fprintf(&b, "- **%s, %d workers**: 2PC ran at %.0f%% of the throughput of independent commits and %.0f%% of the saga's. ", wl, maxW, 100*tp.TPS/nn.TPS, 100*tp.TPS/sg.TPS)
		fmt.Fprintf(&b, "A reader that locks saw money missing or doubled in %.1f%% of its reads under 2PC, %.1f%% under the saga and %.1f%% with no atomicity; a plain reader in %.1f%%, %.1f%% and %.1f%%. ",
			100*tp.LockAnomalyRate, 100*sg.LockAnomalyRate, 100*nn.LockAnomalyRate, 100*tp.AnomalyRate, 100*sg.AnomalyRate, 100*nn.AnomalyRate)
		fmt.Fprintf(&b, "A 2PC change was partly visible for at most %.1f ms (p99, phase two), a saga's for %.1f ms. ", tp.InconsistentP99, sg.InconsistentP99)
		fmt.Fprintf(&b, "After recovery the invariant %s under 2PC, %s under the saga, and %s with no atomicity", holds(tp), holds(sg), holds(nn))
		if nn.NeverHealed > 0 {
			fmt.Fprintf(&b, " (%d operations left half done)", nn.NeverHealed)
		}
		b.WriteString(".\n")
	}
	if b.Len() == 0 {
		b.WriteString("- Run the transfer, order or hotspot workload with the 2pc, saga and none modes for a comparison in words.\n")
	}
	return b.String()
}

// nWorkers is "1 worker" or "n workers".
func nWorkers(n int) string {
	if n == 1 {
		return "1 worker"
	}
	return fmt.Sprintf("%d workers", n)
}
