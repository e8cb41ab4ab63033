package main

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The plots of the compare report, drawn with gonum.org/v1/plot: every
// figure is written twice, as PNG (for a quick look, and where SVG is not
// shown) and as SVG.

// plotModeOrder is the order modes appear in, in every plot.
var plotModeOrder = []string{"2pc", "2pc-holder", "2pc-grpc", "saga", "none"}

// plotModeStyles gives every mode a color, a dash pattern and a glyph, the
// same in every plot; the dashes and glyphs keep the modes apart in
// grayscale.
var plotModeStyles = map[string]plotModeStyle{
	"2pc":        {color: plotRGB(0x1f77b4), glyph: draw.CircleGlyph{}},
	"2pc-holder": {color: plotRGB(0x2ca02c), dashes: []vg.Length{vg.Points(8), vg.Points(3)}, glyph: draw.SquareGlyph{}},
	"2pc-grpc":   {color: plotRGB(0x9467bd), dashes: []vg.Length{vg.Points(8), vg.Points(2), vg.Points(2), vg.Points(2)}, glyph: draw.TriangleGlyph{}},
	"saga":       {color: plotRGB(0xff7f0e), dashes: []vg.Length{vg.Points(4), vg.Points(2)}, glyph: draw.PyramidGlyph{}},
	"none":       {color: plotRGB(0x7f7f7f), dashes: []vg.Length{vg.Points(1.5), vg.Points(2)}, glyph: draw.CrossGlyph{}},
}

// plotSpareStyles are for modes not in plotModeStyles.
var plotSpareStyles = []plotModeStyle{
	{color: plotRGB(0x8c564b), dashes: []vg.Length{vg.Points(6), vg.Points(2), vg.Points(1.5), vg.Points(2)}, glyph: draw.RingGlyph{}},
	{color: plotRGB(0xe377c2), dashes: []vg.Length{vg.Points(2), vg.Points(4)}, glyph: draw.PlusGlyph{}},
	{color: plotRGB(0xbcbd22), dashes: []vg.Length{vg.Points(10), vg.Points(4)}, glyph: draw.BoxGlyph{}},
}

type plotModeStyle struct {
	color  color.Color
	dashes []vg.Length
	glyph  draw.GlyphDrawer
}

var (
	plotKillColor    = plotRGB(0xd62728) // the database server killed
	plotRestartColor = plotRGB(0x17becf) // and restarted
	plotStableColor  = plotRGB(0xb2182b) // plain reader: a real partial state
	plotRacedColor   = plotRGB(0xf4a582) // plain reader: raced a commit between its own queries
	plotLockingColor = plotRGB(0x2166ac) // locking reader
	plotGridColor    = color.Gray{Y: 0xe0}
)

// plotFont is the face of all text: sans serif reads better on screen.
var plotFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

const (
	plotDPI        = 150
	plotWidth      = 8 * vg.Inch
	plotGridRowH   = 3.6 * vg.Inch // a row of panels against workers
	plotTimelineH  = 2.3 * vg.Inch // a timeline panel
	plotTitleSize  = 15
	plotLegendSize = 10
)

// writePlots writes the report's plots to dir, each as PNG and SVG, and returns
// the base names written (without extension), in the order the summary should show them.
func writePlots(dir string, o *cmpOptions, wls []workload, results []cmpResult) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	modes, workers := plotModesWorkers(o, results)
	var figs []*plotFigure
	if len(workers) > 1 && len(wls) > 0 {
		figs = append(figs,
			plotWorkersFigure("throughput", "Throughput against workers", "committed operations/s", modes, workers, wls, results,
				func(r cmpResult) float64 { return r.TPS }),
			plotWorkersFigure("p99", "Latency p99 against workers", "p99 latency (ms)", modes, workers, wls, results,
				func(r cmpResult) float64 { return r.P99 }))
	}
	if len(workers) > 0 && len(wls) > 0 {
		figs = append(figs, plotAnomaliesFigure(modes, workers[len(workers)-1], wls, results))
		for _, w := range wls {
			if f := plotTimelineFigure(modes, workers[len(workers)-1], w, results); f != nil {
				figs = append(figs, f)
			}
		}
	}
	var names []string
	for _, f := range figs {
		if err := f.save(dir); err != nil {
			return names, fmt.Errorf("plot %s: %w", f.name, err)
		}
		names = append(names, f.name)
	}
	return names, nil
}

// plotModesWorkers returns the modes to draw, in plotModeOrder first, and the
// worker counts, ascending; from the options, or from the results without.
func plotModesWorkers(o *cmpOptions, results []cmpResult) (modes []string, workers []int) {
	var given []string
	if o != nil {
		given = o.modes
		workers = append(workers, o.workers...)
	}
	if len(given) == 0 {
		for _, r := range results {
			given = append(given, r.Mode)
		}
	}
	if len(workers) == 0 {
		for _, r := range results {
			workers = append(workers, r.Workers)
		}
	}
	for _, m := range plotModeOrder {
		if slices.Contains(given, m) {
			modes = append(modes, m)
		}
	}
	for _, m := range given {
		if !slices.Contains(modes, m) {
			modes = append(modes, m)
		}
	}
	slices.Sort(workers)
	return modes, slices.Compact(workers)
}

// plotStyleOf returns the mode's style; modes is every mode drawn, so that
// a mode without a fixed style gets the same spare one in every plot.
func plotStyleOf(mode string, modes []string) plotModeStyle {
	if s, ok := plotModeStyles[mode]; ok {
		return s
	}
	n := 0
	for _, m := range modes {
		if m == mode {
			break
		}
		if _, ok := plotModeStyles[m]; !ok {
			n++
		}
	}
	return plotSpareStyles[n%len(plotSpareStyles)]
}

func (s plotModeStyle) line(width vg.Length) draw.LineStyle {
	return draw.LineStyle{Color: s.color, Width: width, Dashes: s.dashes}
}

func (s plotModeStyle) glyphStyle() draw.GlyphStyle {
	return draw.GlyphStyle{Color: s.color, Radius: vg.Points(3.5), Shape: s.glyph}
}

// plotWorkersFigure draws one panel per workload: val against workers, a line
// with points per mode.
func plotWorkersFigure(name, title, unit string, modes []string, workers []int, wls []workload, results []cmpResult, val func(cmpResult) float64) *plotFigure {
	f := &plotFigure{name: name, title: title}
	for _, m := range modes {
		s := plotStyleOf(m, modes)
		f.legend = append(f.legend, plotLegendEntry{label: m, thumbs: []plot.Thumbnailer{plotThumb{line: s.line(vg.Points(2)), glyph: s.glyphStyle(), hasGlyph: true}}})
	}
	logX := workers[0] >= 1 && workers[len(workers)-1] >= 8*workers[0]
	var ticks []plot.Tick
	for _, w := range workers {
		ticks = append(ticks, plot.Tick{Value: float64(w), Label: fmt.Sprint(w)})
	}
	var panels []*plot.Plot
	for _, w := range wls {
		p := plotPanel(w.Name, "workers", unit, true)
		if logX {
			p.X.Scale = plot.LogScale{}
			p.X.Label.Text = "workers (log scale)"
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.X.Min, p.X.Max = float64(workers[0]), float64(workers[len(workers)-1])
		for _, m := range modes {
			var xys plotter.XYs
			for _, wk := range workers {
				if r, ok := find(results, w.Name, m, wk); ok && plotFinite(val(r)) {
					xys = append(xys, plotter.XY{X: float64(wk), Y: val(r)})
				}
			}
			plotAddLine(p, xys, plotStyleOf(m, modes), true)
		}
		plotFloorY(p, 1)
		panels = append(panels, p)
	}
	f.grid, f.height = plotGrid(panels, plotGridRowH)
	return f
}

// plotAnomaliesFigure draws, at the highest worker count, one panel per
// workload with the modes along X and, per mode, the plain reader's rate
// (stacked: real partial states, then reads that raced a commit between
// their own queries) beside the locking reader's.
func plotAnomaliesFigure(modes []string, workers int, wls []workload, results []cmpResult) *plotFigure {
	f := &plotFigure{
		name:  "anomalies",
		title: fmt.Sprintf("Reads that saw money missing or doubled, %d %s", workers, plotIf(workers == 1, "worker", "workers")),
	}
	cols := min(len(wls), 3)
	f.width = max(plotWidth, vg.Length(cols)*3.6*vg.Inch)
	// The bars' width: half of a mode's share of a panel's data area.
	dataW := f.width/vg.Length(cols) - 0.9*vg.Inch
	barW := max(dataW/vg.Length(max(len(modes), 1))*0.36, vg.Points(3))
	outline := draw.LineStyle{Color: color.Black, Width: vg.Points(0.5)}
	small := plotText(7)
	small.XAlign, small.YAlign = draw.XCenter, draw.YBottom

	var panels []*plot.Plot
	for _, w := range wls {
		p := plotPanel(w.Name, "", "% of the reader's reads", false)
		p.X.Tick.Label.Font.Size = vg.Points(9)
		if len(modes) > 0 {
			p.NominalX(modes...)
		}
		p.X.Min, p.X.Max = -0.5, float64(len(modes))-0.5
		stable := make(plotter.Values, len(modes))
		raced := make(plotter.Values, len(modes))
		locking := make(plotter.Values, len(modes))
		var plainLab, lockLab, missing plotter.XYLabels
		for i, m := range modes {
			r, ok := find(results, w.Name, m, workers)
			if !ok {
				missing.XYs = append(missing.XYs, plotter.XY{X: float64(i)})
				missing.Labels = append(missing.Labels, "no run")
				continue
			}
			stable[i] = plotPct(r.StableRate)
			raced[i] = max(plotPct(r.AnomalyRate)-stable[i], 0)
			locking[i] = plotPct(r.LockAnomalyRate)
			plainLab.XYs = append(plainLab.XYs, plotter.XY{X: float64(i), Y: stable[i] + raced[i]})
			plainLab.Labels = append(plainLab.Labels, plotPctLabel(stable[i]+raced[i]))
			lockLab.XYs = append(lockLab.XYs, plotter.XY{X: float64(i), Y: locking[i]})
			lockLab.Labels = append(lockLab.Labels, plotPctLabel(locking[i]))
		}
		if len(modes) > 0 {
			bs, _ := plotter.NewBarChart(stable, barW)
			br, _ := plotter.NewBarChart(raced, barW)
			bl, _ := plotter.NewBarChart(locking, barW)
			bs.Color, bs.LineStyle, bs.Offset = plotStableColor, outline, -barW/2
			br.Color, br.LineStyle = plotRacedColor, outline
			br.StackOn(bs)
			bl.Color, bl.LineStyle, bl.Offset = plotLockingColor, outline, barW/2
			p.Add(bs, br, bl)
			gray := small
			gray.Color = plotModeStyles["none"].color
			for _, l := range []struct {
				xys plotter.XYLabels
				dx  vg.Length
				sty text.Style
			}{{plainLab, -barW / 2, small}, {lockLab, barW / 2, small}, {missing, 0, gray}} {
				if len(l.xys.XYs) == 0 {
					continue
				}
				lab, err := plotter.NewLabels(l.xys)
				if err != nil {
					continue
				}
				for i := range lab.TextStyle {
					lab.TextStyle[i] = l.sty
				}
				lab.Offset = vg.Point{X: l.dx, Y: vg.Points(1.5)}
				p.Add(lab)
			}
		}
		p.Y.Min = 0
		plotFloorY(p, 1)
		p.Y.Max *= 1.08 // room for the labels above the bars
		panels = append(panels, p)
	}
	f.grid, f.height = plotGrid(panels, plotGridRowH)
	f.legend = []plotLegendEntry{
		{label: "plain reader: real partial state", thumbs: []plot.Thumbnailer{plotBoxThumb{plotStableColor}}},
		{label: "plain reader: between its own queries", thumbs: []plot.Thumbnailer{plotBoxThumb{plotRacedColor}}},
		{label: "locking reader", thumbs: []plot.Thumbnailer{plotBoxThumb{plotLockingColor}}},
	}
	return f
}

// plotTimelineFigure draws the workload's runs at the given worker count over
// time, four panels sharing the time axis; nil when no run has a series.
func plotTimelineFigure(modes []string, workers int, w workload, results []cmpResult) *plotFigure {
	var runs []cmpResult
	var haveSeries bool
	for _, m := range modes {
		if r, ok := find(results, w.Name, m, workers); ok {
			runs = append(runs, r)
			haveSeries = haveSeries || len(r.Series) > 0
		}
	}
	if !haveSeries {
		return nil
	}
	f := &plotFigure{
		name:  "timeline-" + plotFileName(w.Name),
		title: fmt.Sprintf("%s over time, %d %s", w.Name, workers, plotIf(workers == 1, "worker", "workers")),
	}
	panels := []*plot.Plot{
		plotPanel("Committed operations per second", "", "ops/s", true),
		plotPanel("Latency p99 of the operations committed in each interval", "", "p99 (ms)", true),
		plotPanel("Plain reader: reads per second that saw a real partial state", "", "reads/s", true),
		plotPanel("Locking reader: share of the time spent waiting for locks", "", "% of the time", true),
	}
	vals := []func(tick) (float64, bool){
		func(t tick) (float64, bool) { return t.OpsPerSec, true },
		func(t tick) (float64, bool) { return t.P99, t.OpsPerSec > 0 || t.P99 > 0 }, // nothing committed: no p99
		func(t tick) (float64, bool) { return t.StableAnomaliesPerSec, true },
		func(t tick) (float64, bool) { return plotPct(t.LockWaitShare), true },
	}
	var tmax float64
	for _, r := range runs {
		s := plotStyleOf(r.Mode, modes)
		label := r.Mode
		if len(r.Series) == 0 {
			label += " (no series)"
		}
		f.legend = append(f.legend, plotLegendEntry{label: label, thumbs: []plot.Thumbnailer{plotThumb{line: s.line(vg.Points(2))}}})
		for _, t := range r.Series {
			tmax = max(tmax, t.T+r.SeriesStep)
		}
		tmax = max(tmax, r.Seconds, r.KillAt, r.RestartAt)
		for i, p := range panels {
			// A line per stretch of the series where the value is defined.
			var seg plotter.XYs
			for _, t := range r.Series {
				v, ok := vals[i](t)
				if !ok || !plotFinite(v) {
					plotAddLine(p, seg, s, false)
					seg = nil
					continue
				}
				seg = append(seg, plotter.XY{X: t.T + r.SeriesStep/2, Y: v})
			}
			plotAddLine(p, seg, s, false)
		}
	}
	kills, restarts := plotEvents(runs)
	if len(kills) > 0 {
		f.legend = append(f.legend, plotLegendEntry{label: "database killed", thumbs: []plot.Thumbnailer{plotThumb{line: plotEventLine(plotKillColor)}}})
		f.title += ", a database server killed and restarted"
	}
	if len(restarts) > 0 {
		f.legend = append(f.legend, plotLegendEntry{label: "restarted", thumbs: []plot.Thumbnailer{plotThumb{line: plotEventLine(plotRestartColor)}}})
	}
	if tmax <= 0 {
		tmax = 1
	}
	for i, p := range panels {
		for j, x := range kills {
			p.Add(&plotVLine{x: x, style: plotEventLine(plotKillColor), label: plotIf(i == 0 && j == 0, "killed", ""), left: true})
		}
		for j, x := range restarts {
			p.Add(&plotVLine{x: x, style: plotEventLine(plotRestartColor), label: plotIf(i == 0 && j == 0, "restarted", "")})
		}
		p.X.Min, p.X.Max = 0, tmax
		p.Y.Min = 0
		plotFloorY(p, 1)
		if i == len(panels)-1 {
			p.X.Label.Text = "time (s) from the start of the measured run"
		}
	}
	f.grid = [][]*plot.Plot{{panels[0]}, {panels[1]}, {panels[2]}, {panels[3]}}
	f.height = vg.Length(len(panels)) * plotTimelineH
	return f
}

// plotEvents returns the distinct kill and restart times of the runs.
func plotEvents(runs []cmpResult) (kills, restarts []float64) {
	add := func(xs []float64, x float64) []float64 {
		if x <= 0 || !plotFinite(x) {
			return xs
		}
		for _, y := range xs {
			if math.Abs(x-y) < 0.05 {
				return xs
			}
		}
		return append(xs, x)
	}
	for _, r := range runs {
		if r.KillAt > 0 {
			kills = add(kills, r.KillAt)
			restarts = add(restarts, r.RestartAt)
		}
	}
	slices.Sort(kills)
	slices.Sort(restarts)
	return kills, restarts
}

func plotEventLine(c color.Color) draw.LineStyle {
	return draw.LineStyle{Color: c, Width: vg.Points(1.5)}
}

// plotAddLine adds xys as a line in the mode's style, with points when
// glyphs is set; a stretch of one point gets a point anyway.
func plotAddLine(p *plot.Plot, xys plotter.XYs, s plotModeStyle, glyphs bool) {
	if len(xys) == 0 {
		return
	}
	if len(xys) > 1 {
		l, err := plotter.NewLine(xys)
		if err != nil {
			return
		}
		l.LineStyle = s.line(vg.Points(2))
		if !glyphs {
			l.LineStyle.Width = vg.Points(1.5)
		}
		p.Add(l)
	}
	if glyphs || len(xys) == 1 {
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return
		}
		sc.GlyphStyle = s.glyphStyle()
		if !glyphs {
			sc.GlyphStyle.Radius = vg.Points(1.5)
		}
		p.Add(sc)
	}
}

// plotPanel returns a panel with the report's fonts, a white background and
// a light grid, with vertical lines when vgrid is set.
func plotPanel(title, xLabel, yLabel string, vgrid bool) *plot.Plot {
	p := plot.New()
	p.BackgroundColor = color.White
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(plotFont, 11)
	p.Title.Padding = vg.Points(4)
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(plotFont, 10)
		a.Tick.Label.Font = font.From(plotFont, 9)
	}
	p.X.Label.Text, p.Y.Label.Text = xLabel, yLabel
	p.X.Tick.Marker, p.Y.Tick.Marker = plotTicks{n: 8}, plotTicks{n: 5}
	g := plotter.NewGrid()
	g.Vertical.Color, g.Horizontal.Color = plotGridColor, plotGridColor
	g.Vertical.Width, g.Horizontal.Width = vg.Points(0.5), vg.Points(0.5)
	if !vgrid {
		g.Vertical.Color = nil
	}
	p.Add(g)
	return p
}

// plotFloorY starts Y at 0 and gives it at least floor at the top, so that
// a panel of zeros still has an axis.
func plotFloorY(p *plot.Plot, floor float64) {
	p.Y.Min = 0
	if !(p.Y.Max >= floor) { // also -Inf: nothing added
		p.Y.Max = floor
	}
}

// plotGrid lays panels out in up to three columns, returning the grid and
// its height.
func plotGrid(panels []*plot.Plot, rowH vg.Length) ([][]*plot.Plot, vg.Length) {
	if len(panels) == 0 {
		return nil, rowH
	}
	cols := min(len(panels), 3)
	rows := (len(panels) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range panels {
		grid[i/cols][i%cols] = p
	}
	return grid, vg.Length(rows) * rowH
}

// plotFigure is one image: a title, a legend and a grid of panels.
type plotFigure struct {
	name          string
	title         string
	legend        []plotLegendEntry
	grid          [][]*plot.Plot // rows of panels; nil panels are left empty
	width, height vg.Length      // height: of the grid alone
}

type plotLegendEntry struct {
	label  string
	thumbs []plot.Thumbnailer
}

// save writes the figure as name.png and name.svg in dir. gonum/plot
// panics on some input it cannot draw: that is an error here, so that a
// long run's other results still get written.
func (f *plotFigure) save(dir string) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("drawing: %v", p)
		}
	}()
	w := f.width
	if w == 0 {
		w = plotWidth
	}
	h := f.headerHeight(w) + f.height
	png := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(plotDPI), vgimg.UseBackgroundColor(color.White))
	f.draw(draw.New(png), w)
	if err := plotWriteFile(filepath.Join(dir, f.name+".png"), vgimg.PngCanvas{Canvas: png}); err != nil {
		return err
	}
	svg := vgsvg.New(w, h)
	f.draw(draw.New(svg), w)
	var b bytes.Buffer
	if _, err := svg.WriteTo(&b); err != nil {
		return err
	}
	// The fonts are not embedded (that would take half a megabyte per
	// file): name the fonts with Liberation Sans's metrics as fallbacks, so
	// that text laid out with its metrics still fits where it is missing.
	out := bytes.ReplaceAll(b.Bytes(), []byte("font-family:Liberation Sans;"), []byte("font-family:'Liberation Sans',Arimo,Arial,Helvetica,sans-serif;"))
	return os.WriteFile(filepath.Join(dir, f.name+".svg"), out, 0o644)
}

func plotWriteFile(name string, c io.WriterTo) (err error) {
	out, err := os.Create(name)
	if err != nil {
		return err
	}
	defer func() {
		if e := out.Close(); err == nil {
			err = e
		}
	}()
	_, err = c.WriteTo(out)
	return err
}

const (
	plotMargin   vg.Length = 8 // points
	plotThumbW   vg.Length = 24
	plotEntryGap vg.Length = 16
)

// legendRows splits the legend into rows that fit the width.
func (f *plotFigure) legendRows(width vg.Length) [][]plotLegendEntry {
	sty := plotText(plotLegendSize)
	var rows [][]plotLegendEntry
	var x vg.Length
	for _, e := range f.legend {
		ew := plotThumbW + sty.Width(" "+e.label) + plotEntryGap
		if len(rows) == 0 || x+ew > width-2*plotMargin {
			rows = append(rows, nil)
			x = 0
		}
		rows[len(rows)-1] = append(rows[len(rows)-1], e)
		x += ew
	}
	return rows
}

func (f *plotFigure) headerHeight(width vg.Length) vg.Length {
	h := plotMargin + plotText(plotTitleSize).Height(f.title) + plotMargin
	h += vg.Length(len(f.legendRows(width))) * plotLegendRowH()
	return h + plotMargin/2
}

func plotLegendRowH() vg.Length { return plotText(plotLegendSize).Height("Mg") * 1.5 }

// draw draws the figure on c, width wide.
func (f *plotFigure) draw(c draw.Canvas, width vg.Length) {
	c.SetColor(color.White)
	c.Fill(c.Rectangle.Path())

	title := plotText(plotTitleSize)
	title.XAlign, title.YAlign = draw.XCenter, draw.YTop
	y := c.Max.Y - plotMargin
	c.FillText(title, vg.Point{X: (c.Min.X + c.Max.X) / 2, Y: y}, f.title)
	y -= title.Height(f.title) + plotMargin

	// The legend, rows centred under the title.
	sty := plotText(plotLegendSize)
	sty.YAlign = draw.YCenter
	rowH := plotLegendRowH()
	for _, row := range f.legendRows(width) {
		var rw vg.Length
		for _, e := range row {
			rw += plotThumbW + sty.Width(" "+e.label) + plotEntryGap
		}
		x := (c.Min.X+c.Max.X)/2 - (rw-plotEntryGap)/2
		mid := y - rowH/2
		for _, e := range row {
			icon := draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
				Min: vg.Point{X: x, Y: mid - rowH/3},
				Max: vg.Point{X: x + plotThumbW, Y: mid + rowH/3},
			}}
			for _, t := range e.thumbs {
				t.Thumbnail(&icon)
			}
			c.FillText(sty, vg.Point{X: x + plotThumbW, Y: mid}, " "+e.label)
			x += plotThumbW + sty.Width(" "+e.label) + plotEntryGap
		}
		y -= rowH
	}
	y -= plotMargin / 2

	if len(f.grid) == 0 {
		return
	}
	area := c
	area.Max.Y = y
	tiles := draw.Tiles{
		Rows: len(f.grid), Cols: len(f.grid[0]),
		PadTop: vg.Points(2), PadBottom: plotMargin, PadLeft: plotMargin, PadRight: 2 * plotMargin,
		PadX: 2 * plotMargin, PadY: 2 * plotMargin,
	}
	canvases := plot.Align(f.grid, tiles, area)
	for i, row := range f.grid {
		for j, p := range row {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
}

func plotText(size float64) text.Style {
	return text.Style{
		Color:   color.Black,
		Font:    font.From(plotFont, vg.Points(size)),
		Handler: plot.DefaultTextHandler,
	}
}

// plotThumb is a legend thumbnail: a line, and a glyph in its middle.
type plotThumb struct {
	line     draw.LineStyle
	glyph    draw.GlyphStyle
	hasGlyph bool
}

func (t plotThumb) Thumbnail(c *draw.Canvas) {
	y := c.Center().Y
	c.StrokeLine2(t.line, c.Min.X, y, c.Max.X, y)
	if t.hasGlyph {
		c.DrawGlyphNoClip(t.glyph, c.Center())
	}
}

// plotBoxThumb is a legend thumbnail for bars: a filled box.
type plotBoxThumb struct{ color color.Color }

func (t plotBoxThumb) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{
		{X: c.Min.X + c.Size().X/6, Y: c.Min.Y}, {X: c.Min.X + c.Size().X/6, Y: c.Max.Y},
		{X: c.Max.X - c.Size().X/6, Y: c.Max.Y}, {X: c.Max.X - c.Size().X/6, Y: c.Min.Y},
	}
	c.FillPolygon(t.color, pts)
	c.StrokeLines(draw.LineStyle{Color: color.Black, Width: vg.Points(0.5)}, append(pts, pts[0]))
}

// plotVLine is a vertical line across a panel at x, with an optional label
// at the top, left of the line when left is set.
type plotVLine struct {
	x     float64
	style draw.LineStyle
	label string
	left  bool
}

func (l *plotVLine) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	x := trX(l.x)
	if !c.ContainsX(x) {
		return
	}
	c.StrokeLine2(l.style, x, c.Min.Y, x, c.Max.Y)
	if l.label == "" {
		return
	}
	sty := plotText(8)
	sty.Color = l.style.Color
	sty.YAlign = draw.YTop
	dx := vg.Points(3)
	if l.left {
		sty.XAlign = draw.XRight
		dx = -dx
	}
	c.FillText(sty, vg.Point{X: x + dx, Y: c.Max.Y - vg.Points(2)}, l.label)
}

// plotTicks marks an axis at round values, about n of them, labelled
// without trailing zeros.
type plotTicks struct{ n int }

func (t plotTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) || !plotFinite(lo) || !plotFinite(hi) {
		return nil
	}
	raw := (hi - lo) / float64(max(t.n, 2))
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	prec := max(0, -int(math.Floor(math.Log10(step)))+1)
	var ticks []plot.Tick
	for i := math.Ceil(lo/step - 1e-9); i*step <= hi+step*1e-9; i++ {
		v := i * step
		l := strconv.FormatFloat(v, 'f', prec, 64)
		if strings.Contains(l, ".") {
			l = strings.TrimRight(strings.TrimRight(l, "0"), ".")
		}
		if l == "-0" {
			l = "0"
		}
		ticks = append(ticks, plot.Tick{Value: v, Label: l})
	}
	return ticks
}

func plotRGB(v uint32) color.Color {
	return color.RGBA{R: uint8(v >> 16), G: uint8(v >> 8), B: uint8(v), A: 0xff}
}

func plotFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// plotPct turns a share (0 to 1) into a percentage; NaN and infinities into 0.
func plotPct(v float64) float64 {
	if !plotFinite(v) {
		return 0
	}
	return 100 * v
}

func plotPctLabel(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 0.1:
		return "<0.1"
	case v < 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func plotIf(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

// plotFileName keeps letters, digits, '-' and '_' of a workload's name.
func plotFileName(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
	if s == "" {
		return "workload"
	}
	return s
}
