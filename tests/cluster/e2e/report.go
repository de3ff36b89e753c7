package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// results gathers every sample by kind: graceful, crash, notready (LeaderLock) and clientgo.
type results struct {
	kubelet    string
	syncFreq   string // the kubelet's syncFrequency: what bounds a lost downward-API update
	samples    map[string][]sample
	faults     []faultResult
	violations int
	restarts   int // crashes after which the old holder's job restarted before its demotion
	duration   time.Duration
}

var kinds = []struct{ key, title string }{
	{"graceful", "LeaderLock: leader pod deleted (graceful)"},
	{"crash", "LeaderLock: leader container killed (SIGKILL)"},
	{"notready", "LeaderLock: leader's readiness probe fails, process lives"},
	{"clientgo", "client-go leader election: leader pod deleted (ReleaseOnCancel)"},
}

func (r *results) add(kind string, s sample) {
	if r.samples == nil {
		r.samples = map[string][]sample{}
	}
	r.samples[kind] = append(r.samples[kind], s)
}

func (r *results) handovers() int {
	n := 0
	for _, s := range r.samples {
		n += len(s)
	}
	return n
}

// values picks one measure of one kind, in milliseconds, sorted.
func (r *results) values(kind string, pick func(sample) (time.Duration, bool)) []float64 {
	var v []float64
	for _, s := range r.samples[kind] {
		if d, ok := pick(s); ok {
			v = append(v, float64(d)/float64(time.Millisecond))
		}
	}
	sort.Float64s(v)
	return v
}

func gap(s sample) (time.Duration, bool)        { return s.Gap, true }
func overlap(s sample) (time.Duration, bool)    { return s.Overlap, true }
func file(s sample) (time.Duration, bool)       { return s.File, s.HasFile }
func slice(s sample) (time.Duration, bool)      { return s.Slice, s.HasSlice }
func fromFault(s sample) (time.Duration, bool)  { return s.FromFault, true }
func annotation(s sample) (time.Duration, bool) { return s.Annotation, s.HasAnnotation }

// lateFile is how long the new holder's file lagged its annotation.
func lateFile(s sample) (time.Duration, bool) {
	return s.File - s.Annotation, s.HasFile && s.HasAnnotation
}

// lateFileLimit separates the kubelet's normal projection (its sync waits for the next 1 s
// runtime relist, then two 100 ms volume-manager loops) from a lost remount, which waits for
// the pod's next periodic sync.
const lateFileLimit = 2 * time.Second

// lateFiles counts the LeaderLock handovers whose new holder's file lagged its annotation by
// more than lateFileLimit, and the longest lag.
func (r *results) lateFiles() (n, of int, longest time.Duration) {
	for _, k := range []string{"graceful", "crash", "notready"} {
		for _, s := range r.samples[k] {
			if d, ok := lateFile(s); ok {
				of++
				if d > lateFileLimit {
					n++
				}
				longest = max(longest, d)
			}
		}
	}
	return n, of, longest
}

// pct is the nearest-rank percentile of sorted values (NaN when empty).
func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

func fmtMs(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

func (r *results) summary() string {
	overlapMax := 0.0
	for _, k := range []string{"graceful", "crash", "notready"} {
		if v := r.values(k, overlap); len(v) > 0 {
			overlapMax = math.Max(overlapMax, v[len(v)-1])
		}
	}
	var sl []float64
	for _, k := range []string{"graceful", "crash", "notready"} {
		sl = append(sl, r.values(k, slice)...)
	}
	sort.Float64s(sl)
	g := r.values("graceful", gap)
	return fmt.Sprintf("E2E kubelet=%s handovers=%d job_gap_p50_ms=%s job_gap_p99_ms=%s crash_p99_ms=%s notready_p99_ms=%s overlap_max_ms=%s service_switch_p99_ms=%s clientgo_job_gap_p99_ms=%s violations=%d",
		r.kubelet, r.handovers(), fmtMs(pct(g, 50)), fmtMs(pct(g, 99)),
		fmtMs(pct(r.values("crash", gap), 99)), fmtMs(pct(r.values("notready", fromFault), 99)),
		fmtMs(overlapMax), fmtMs(pct(sl, 99)), fmtMs(pct(r.values("clientgo", gap), 99)), r.violations)
}

const (
	sectionBegin = "<!-- make e2e: begin -->"
	sectionEnd   = "<!-- make e2e: end -->"
)

func (r *results) markdown(plotFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## On a real node: failover as the workload sees it (`make e2e`)\n\n", sectionBegin)
	fmt.Fprintf(&b, "kubelet %s (`syncFrequency` %s) and containerd on this machine, three pods per workload, the chart's two controller replicas; %d handovers in %s. ", r.kubelet, r.syncFreq, r.handovers(), r.duration.Round(time.Second))
	b.WriteString("Times in ms, from the jobs' own timestamps (the kernel's boot-time clock, 10 ms resolution), each relative to the old job's stop — for a killed container, the kill. ")
	b.WriteString("*Job gap*: old job stopped → new job started (0 when they overlapped); *overlap*: both jobs ran; *annotation*: the harness's pod watch sees the new holder annotated `leader`; *file*: the new holder's downward-API file shows `leader` (polled on the node every 5 ms); *Service*: the leader-only Service's EndpointSlice holds only the new holder (file and Service are negative when they came before the old job stopped); *fault → new job*: from the delete, the kill or the probe made to fail.\n\n")
	b.WriteString("| handover | n | job gap p50 | p90 | p99 | max | overlap max | annotation p50 | file p50 | file p99 | Service p50 | Service p99 | fault → new job p50 | p99 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range kinds {
		g := r.values(k.key, gap)
		o := r.values(k.key, overlap)
		f := r.values(k.key, file)
		s := r.values(k.key, slice)
		maxO := math.NaN()
		if len(o) > 0 {
			maxO = o[len(o)-1]
		}
		ff := r.values(k.key, fromFault)
		a := r.values(k.key, annotation)
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k.title, len(r.samples[k.key]),
			fmtMs(pct(g, 50)), fmtMs(pct(g, 90)), fmtMs(pct(g, 99)), fmtMs(pct(g, 100)), fmtMs(maxO), fmtMs(pct(a, 50)),
			fmtMs(pct(f, 50)), fmtMs(pct(f, 99)), fmtMs(pct(s, 50)), fmtMs(pct(s, 99)), fmtMs(pct(ff, 50)), fmtMs(pct(ff, 99)))
	}
	if len(r.faults) > 0 {
		b.WriteString("\n| fault | holder changed | took |\n|---|---|---|\n")
		for _, f := range r.faults {
			fmt.Fprintf(&b, "| %s | %v | %s |\n", f.Name, f.HolderChanged, f.Took.Round(100*time.Millisecond))
		}
	}
	if n, of, longest := r.lateFiles(); of > 0 {
		fmt.Fprintf(&b, "\nThe new holder's file lagged its annotation by more than %s in %d of %d LeaderLock handovers (longest %s). A lag that long is the kubelet losing the change: the file then waits for the pod's next periodic sync, at most 1.5 × `syncFrequency` (README, \"When the kubelet loses a role change\").\n", lateFileLimit, n, of, longest.Round(10*time.Millisecond))
	}
	if n := len(r.samples["crash"]); n > 0 {
		fmt.Fprintf(&b, "\nAfter %d of %d container kills the kubelet restarted the container before the controller's demotion reached its file, so the old holder's job started again with its old fencing token until the demotion arrived (counted in the overlap column, not as a violation: the pod still held the lock).\n", r.restarts, n)
	}
	fmt.Fprintf(&b, "\nSafety violations (two pods annotated `leader` at once, a fencing token that did not grow, a job start without a handover): **%d**.\n", r.violations)
	if plotFile != "" {
		fmt.Fprintf(&b, "\n![Job gap CDF: LeaderLock and client-go](%s)\n", plotFile)
	}
	fmt.Fprintf(&b, "\n```\n%s\n```\n%s\n", r.summary(), sectionEnd)
	return b.String()
}

// replaceSection puts section into the file between the markers, or appends it.
func replaceSection(path, section string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(data)
	if i, j := strings.Index(s, sectionBegin), strings.Index(s, sectionEnd); i >= 0 && j > i {
		s = s[:i] + strings.TrimSuffix(section, "\n") + s[j+len(sectionEnd):]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + section
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// plotCDF draws the job-gap distribution of every kind (log-scaled time axis).
func (r *results) plotCDF(path string) error {
	p := plot.New()
	p.Title.Text = "Job gap on a real node: old job stopped → new job started"
	p.X.Label.Text = "job gap (ms, log scale)"
	p.Y.Label.Text = "fraction of handovers"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top = true
	p.Legend.Left = true
	colors := []color.RGBA{{0x1f, 0x77, 0xb4, 255}, {0xd6, 0x27, 0x28, 255}, {0xff, 0x7f, 0x0e, 255}, {0x2c, 0xa0, 0x2c, 255}}
	for i, k := range kinds {
		v := r.values(k.key, gap)
		if len(v) == 0 {
			continue
		}
		pts := make(plotter.XYs, 0, 2*len(v))
		for j, x := range v {
			x = math.Max(x, 1) // log axis: a gap under 1 ms (or an overlap) is drawn at 1 ms
			pts = append(pts, plotter.XY{X: x, Y: float64(j) / float64(len(v))}, plotter.XY{X: x, Y: float64(j+1) / float64(len(v))})
		}
		line, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		line.Color = colors[i%len(colors)]
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (n=%d)", k.title, len(v)), line)
	}
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}
