package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// plotTestResults returns runs of every mode at 1 and 8 workers on two
// workloads, with series; the second workload's runs are crash runs.
func plotTestResults(modes []string) []cmpResult {
	var out []cmpResult
	for wi, wl := range []string{"transfer", "order"} {
		crash := wi == 1
		for mi, m := range modes {
			for _, workers := range []int{1, 8} {
				base := float64(200*workers) / float64(mi+1)
				r := cmpResult{
					Workload: wl, Mode: m, Workers: workers, Crash: crash, Seconds: 6,
					TPS: base, P99: 2 + float64(mi) + float64(workers)/4,
					Audits: 1000, Anomalies: int64(40 * mi), AnomalyRate: float64(40*mi) / 1000,
					StableAnomalies: int64(25 * mi), StableRate: float64(25*mi) / 1000,
					LockAudits: 300, LockAnomalies: int64(mi / 3), LockAnomalyRate: float64(mi/3) / 300,
					LockWaitP50: 1, LockWaitP99: 5, LockWaitMax: 9,
					SeriesStep: 0.25,
				}
				if crash {
					r.KillAt, r.RestartAt = 2+0.01*float64(mi), 3+0.01*float64(mi)
				}
				for i := range 24 {
					t := tick{T: 0.25 * float64(i)}
					down := crash && t.T >= r.KillAt && t.T < r.RestartAt
					if !down {
						t.OpsPerSec = base * (1 + 0.1*math.Sin(float64(i+mi)))
						t.P99 = r.P99 * (1 + 0.2*math.Cos(float64(i)))
						t.AnomaliesPerSec = float64(mi * (i % 5))
						t.StableAnomaliesPerSec = float64(mi * (i % 3))
					} else {
						t.ErrPerSec = base / 2
					}
					t.LockAnomaliesPerSec = float64(mi / 3)
					t.LockWaitShare = 0.1 * float64(mi) * (1 + 0.5*math.Sin(float64(i)))
					r.Series = append(r.Series, t)
				}
				out = append(out, r)
			}
		}
	}
	return out
}

// TestPlotsWritten writes the plots of synthetic results into temporary
// folders, or under $TXBENCH_PLOT_DIR to look at them.
func TestPlotsWritten(t *testing.T) {
	modes := []string{"2pc", "2pc-holder", "2pc-grpc", "saga", "none"}
	wls := []workload{{Name: "transfer", DBs: 2}, {Name: "order", DBs: 3}}
	o := &cmpOptions{modes: modes, workers: []int{8, 1}}

	t.Run("full", func(t *testing.T) {
		dir := plotTestDir(t)
		names, err := writePlots(dir, o, wls, plotTestResults(modes))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"throughput", "p99", "anomalies", "timeline-transfer", "timeline-order"}
		if !slices.Equal(names, want) {
			t.Fatalf("names %v, want %v", names, want)
		}
		plotCheckFiles(t, dir, names)
	})

	t.Run("empty series and zeros", func(t *testing.T) {
		// Old results: no series, every value 0; and a mode without runs.
		var results []cmpResult
		for _, wl := range wls {
			for _, m := range modes[:4] {
				for _, workers := range []int{1, 8} {
					results = append(results, cmpResult{Workload: wl.Name, Mode: m, Workers: workers})
				}
			}
		}
		dir := plotTestDir(t)
		names, err := writePlots(dir, o, wls, results)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"throughput", "p99", "anomalies"} // no series: no timelines
		if !slices.Equal(names, want) {
			t.Fatalf("names %v, want %v", names, want)
		}
		plotCheckFiles(t, dir, names)
	})

	t.Run("one mode without series", func(t *testing.T) {
		results := plotTestResults(modes)
		for i := range results {
			if results[i].Mode == "saga" {
				results[i].Series = nil
			}
		}
		dir := plotTestDir(t)
		names, err := writePlots(dir, o, wls, results)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(names, "timeline-order") {
			t.Fatalf("names %v lack timeline-order", names)
		}
		plotCheckFiles(t, dir, names)
	})

	t.Run("one worker count", func(t *testing.T) {
		var results []cmpResult
		for _, r := range plotTestResults(modes) {
			if r.Workers == 8 {
				results = append(results, r)
			}
		}
		dir := plotTestDir(t)
		names, err := writePlots(dir, &cmpOptions{modes: modes, workers: []int{8}}, wls[:1], results)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"anomalies", "timeline-transfer"}
		if !slices.Equal(names, want) {
			t.Fatalf("names %v, want %v", names, want)
		}
		plotCheckFiles(t, dir, names)
	})
}

// plotTestDir is a temporary folder, or a folder under $TXBENCH_PLOT_DIR
// named after the test, to look at the plots.
func plotTestDir(t *testing.T) string {
	d := os.Getenv("TXBENCH_PLOT_DIR")
	if d == "" {
		return t.TempDir()
	}
	d = filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// plotCheckFiles checks that every name has a PNG that decodes to a
// sizeable image and an SVG that is well-formed XML.
func plotCheckFiles(t *testing.T, dir string, names []string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatal("no plots written")
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s.png: %v", n, err)
		}
		if sz := img.Bounds().Size(); sz.X < 600 || sz.Y < 400 {
			t.Errorf("%s.png is only %v", n, sz)
		}

		b, err = os.ReadFile(filepath.Join(dir, n+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s.svg has no <svg", n)
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		for {
			_, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s.svg is not well-formed XML: %v", n, err)
			}
		}
	}
}
