package main

import (
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"sort"
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
	plots := map[string]string{
		"throughput.svg": lineCharts("Throughput (operations/s) against workers", "ops/s", o, wls, results, func(r cmpResult) float64 { return r.TPS }),
		"p99.svg":        lineCharts("Latency p99 (ms) against workers", "ms", o, wls, results, func(r cmpResult) float64 { return r.P99 }),
		"anomalies.svg":  anomalyBars(o, wls, results),
	}
	for name, svg := range plots {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "summary.md"), []byte(summary(o, wls, results)), 0o644)
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
	if g, ok := find(results, wl, "2pc-grpc", workers); ok && tp.TPS > 0 {
		parts = append(parts, fmt.Sprintf("2pc-grpc/2pc %.0f%%", 100*g.TPS/tp.TPS))
	}
	return strings.Join(parts, ", ")
}

func summary(o *cmpOptions, wls []workload, results []cmpResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# 2PC against sagas: what the numbers say\n\n")
	fmt.Fprintf(&b, "Each run: %v measured after %v of warm-up, %.0f%% of operations failing for a business reason at their last step", o.duration, o.warmup, 100*o.failRate)
	if o.crash {
		b.WriteString(", and the second database server killed (SIGKILL) a third of the way in and restarted a second later")
	}
	b.WriteString(". The saga is ours (an orchestrated saga with a durable bbolt log and idempotent steps), not a peer's. All databases are PostgreSQL servers on this machine with fsync on.\n\n")
	for _, w := range wls {
		fmt.Fprintf(&b, "## %s (%s)\n\n", w.Name, w.Desc)
		b.WriteString("| workers | mode | ops/s | p50 ms | p99 ms | aborts | rows locked p99 ms | partly visible p99 ms | auditor saw money missing or doubled | never healed | invariant after recovery |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, workers := range o.workers {
			for _, mode := range o.modes {
				r, ok := find(results, w.Name, mode, workers)
				if !ok {
					continue
				}
				fmt.Fprintf(&b, "| %d | %s | %.0f | %.2f | %.2f | %.1f%% | %.2f | %.2f | %d of %d reads (%.1f%%) | %d | %v |\n", workers, mode, r.TPS, r.P50, r.P99, 100*r.AbortRate, r.LockedP99, r.InconsistentP99, r.Anomalies, r.Audits, 100*r.AnomalyRate, r.NeverHealed, holds(r))
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
	b.WriteString("- *Auditor*: it reads every database's total at the same moment (one query per database, in parallel) every 10 ms and counts the reads where the sum is not the invariant. Its own reads are not one snapshot across databases, so an operation committing between its queries counts too: compare modes with each other, not with zero.\n")
	b.WriteString("- *Invariant after recovery*: after the run, recovery (2PC) or saga recovery finishes what is left; then the total across databases must be unchanged and nothing left prepared.\n")
	if o.crash {
		b.WriteString("- *Aborts with a server killed*: while the server is down, an operation under 2PC or with no atomicity fails at once and the worker starts the next, so these modes count many quick failed attempts; an operation under the saga retries its step until the server is back (one slow operation, not many aborts). Compare throughput and the invariant, not the abort share.\n")
	}
	return b.String()
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
		fmt.Fprintf(&b, "The auditor saw money missing or doubled in %.1f%% of its reads under 2PC, %.1f%% under the saga and %.1f%% with no atomicity. ", 100*tp.AnomalyRate, 100*sg.AnomalyRate, 100*nn.AnomalyRate)
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

var modeColors = map[string]string{"2pc": "#1f77b4", "2pc-grpc": "#9467bd", "saga": "#ff7f0e", "none": "#7f7f7f"}

// lineCharts draws one small chart per workload: value against workers,
// one line per mode.
func lineCharts(title, unit string, o *cmpOptions, wls []workload, results []cmpResult, val func(cmpResult) float64) string {
	const cw, ch, pad = 360, 240, 50
	cols := min(len(wls), 3)
	rows := (len(wls) + cols - 1) / cols
	W, H := cols*cw, rows*ch+60
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="20" font-size="15">%s</text>`+"\n", html.EscapeString(title))
	legend(&b, o.modes, 10, 40)
	ws := append([]int(nil), o.workers...)
	sort.Ints(ws)
	for i, w := range wls {
		x0, y0 := (i%cols)*cw, 60+(i/cols)*ch
		ymax := 0.0
		for _, r := range results {
			if r.Workload == w.Name {
				ymax = math.Max(ymax, val(r))
			}
		}
		if ymax == 0 {
			ymax = 1
		}
		ymax = niceCeil(ymax)
		px := func(k int) float64 {
			if len(ws) == 1 {
				return float64(x0+pad) + float64(cw-2*pad)/2
			}
			return float64(x0+pad) + float64(k)*float64(cw-2*pad)/float64(len(ws)-1)
		}
		py := func(v float64) float64 { return float64(y0+ch-pad) - v/ymax*float64(ch-2*pad) }
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12">%s</text>`+"\n", x0+pad, y0+pad-18, html.EscapeString(w.Name))
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n",
			x0+pad, y0+ch-pad, x0+cw-pad, y0+ch-pad, x0+pad, y0+pad, x0+pad, y0+ch-pad)
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%s</text><text x="%d" y="%d" text-anchor="end">0</text>`+"\n", x0+pad-4, py(ymax)+4, trimFloat(ymax), x0+pad-4, y0+ch-pad+4)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">workers</text><text x="%d" y="%d">%s</text>`+"\n", x0+cw/2, y0+ch-pad+30, x0+pad+6, y0+pad+4, unit)
		for k, wk := range ws {
			fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%d</text>`+"\n", px(k), y0+ch-pad+14, wk)
		}
		for _, mode := range o.modes {
			var pts []string
			for k, wk := range ws {
				if r, ok := find(results, w.Name, mode, wk); ok {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(k), py(val(r))))
				}
			}
			if len(pts) == 0 {
				continue
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", modeColors[mode], strings.Join(pts, " "))
			for _, p := range pts {
				xy := strings.Split(p, ",")
				fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], modeColors[mode])
			}
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// anomalyBars draws, per workload at the highest worker count, the share
// of the auditor's reads that saw money missing or doubled, per mode.
func anomalyBars(o *cmpOptions, wls []workload, results []cmpResult) string {
	maxW := 0
	for _, w := range o.workers {
		maxW = max(maxW, w)
	}
	const gw, H, pad = 220, 320, 50
	W := pad + len(wls)*gw + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="20" font-size="15">Auditor reads that saw money missing or doubled (%%), %d workers</text>`+"\n", maxW)
	legend(&b, o.modes, 10, 40)
	base := H - pad
	top := 70
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", pad, base, W-10, base)
	for _, t := range []int{0, 25, 50, 75, 100} {
		y := float64(base) - float64(t)/100*float64(base-top)
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%d</text><line x1="%d" y1="%.0f" x2="%d" y2="%.0f" stroke="#ddd"/>`+"\n", pad-4, y+4, t, pad, y, W-10, y)
	}
	bw := (gw - 20) / max(len(o.modes), 1)
	for i, w := range wls {
		gx := pad + i*gw + 10
		for j, mode := range o.modes {
			r, ok := find(results, w.Name, mode, maxW)
			if !ok {
				continue
			}
			h := r.AnomalyRate * float64(base-top)
			fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s %s: %d of %d</title></rect>`+"\n", gx+j*bw, float64(base)-h, bw-4, h, modeColors[mode], w.Name, mode, r.Anomalies, r.Audits)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="middle" font-size="9">%.0f</text>`+"\n", gx+j*bw+(bw-4)/2, float64(base)-h-3, 100*r.AnomalyRate)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", gx+(gw-20)/2, base+16, html.EscapeString(w.Name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func legend(b *strings.Builder, modes []string, x, y int) {
	for i, m := range modes {
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", x+i*90, y-10, modeColors[m], x+i*90+16, y, m)
	}
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	if v >= 10 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// nWorkers is "1 worker" or "n workers".
func nWorkers(n int) string {
	if n == 1 {
		return "1 worker"
	}
	return fmt.Sprintf("%d workers", n)
}
