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

// results gathers every sample by row: each LeaderLock kind (graceful, crash, notready) with
// the controller's resync on and off, and client-go.
type results struct {
	kubelet       string
	kubeletConfig string // "default", or "syncFrequency=V" when the node's kubelet.yaml sets it
	resyncOn      string // controller.resyncAfter of the resync-on half
	blocks        int    // A/B blocks the LeaderLock handovers ran in
	samples       map[string][]sample
	faults        []faultResult // chart upgrades between blocks, then the faults
	violations    int
	loss          *lossResults // the node-loss phase (nil: it did not run)
	// resyncWritesOutside: resync writes outside every handover (the new active replica
	// bringing the holder's key to the new setting after a chart upgrade).
	resyncWritesOutside int
	duration            time.Duration
	goc                 *goResults // the Go phase (gocontroller.go); nil when it did not run
}

// goFields is the Go phase's part of the E2E line, "" when it did not run.
func (r *results) goFields() string {
	if r.goc == nil {
		return ""
	}
	return r.goc.fields()
}

// row is one line of the report.
type row struct {
	key, kind, title string
	resync           string // "on", "off", or "" (client-go)
}

// plotTitles are the legend's short names.
var plotTitles = map[string]string{
	"graceful": "LeaderLock, pod deleted",
	"crash":    "LeaderLock, container killed",
	"notready": "LeaderLock, probe fails",
	"clientgo": "client-go, pod deleted",
}

var kindTitles = map[string]string{
	"graceful": "leader pod deleted (graceful)",
	"crash":    "leader container killed (SIGKILL)",
	"notready": "leader's readiness probe fails, process lives",
}

func rowKey(kind string, on bool) string { return kind + "/" + onOff(on) }

var rows = func() []row {
	var out []row
	for _, k := range []string{"graceful", "crash", "notready"} {
		for _, on := range []bool{true, false} {
			out = append(out, row{key: rowKey(k, on), kind: k, title: "LeaderLock: " + kindTitles[k], resync: onOff(on)})
		}
	}
	return append(out, row{key: "clientgo", kind: "clientgo", title: "client-go leader election: leader pod deleted (ReleaseOnCancel)"})
}()

// half is the LeaderLock rows of one resync setting.
func half(on bool) []string {
	return []string{rowKey("graceful", on), rowKey("crash", on), rowKey("notready", on)}
}

func (r *results) add(key string, s sample) {
	if r.samples == nil {
		r.samples = map[string][]sample{}
	}
	r.samples[key] = append(r.samples[key], s)
}

func (r *results) handovers() int {
	n := 0
	for _, s := range r.samples {
		n += len(s)
	}
	return n
}

// values picks one measure of some rows, in milliseconds, sorted.
func (r *results) values(pick func(sample) (time.Duration, bool), keys ...string) []float64 {
	return millis(r.samples, pick, keys...)
}

// millis picks one measure of the rows of samples named by keys, in milliseconds, sorted.
func millis[S any](samples map[string][]S, pick func(S) (time.Duration, bool), keys ...string) []float64 {
	var v []float64
	for _, k := range keys {
		for _, s := range samples[k] {
			if d, ok := pick(s); ok {
				v = append(v, float64(d)/float64(time.Millisecond))
			}
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

// newFileLag is how long the new holder's file lagged its annotation.
func newFileLag(s sample) (time.Duration, bool) {
	return s.File - s.Annotation, s.HasFile && s.HasAnnotation
}

// oldFileLag is how long the demoted holder's file lagged its annotation.
func oldFileLag(s sample) (time.Duration, bool) {
	return s.OldFile - s.OldAnnotation, s.HasOldFile && s.HasOldAnnotation
}

// lateness counts, over some rows, the file changes seen with their annotation and those that
// came more than 2 s, 5 s and 10 s after it, with the longest lag.
type lateness struct {
	seen, over2, over5, over10 int
	longest                    time.Duration
}

func (r *results) late(lag func(sample) (time.Duration, bool), keys ...string) lateness {
	var l lateness
	for _, k := range keys {
		for _, s := range r.samples[k] {
			d, ok := lag(s)
			if !ok {
				continue
			}
			l.seen++
			if d > lateLimit {
				l.over2++
			}
			if d > 5*time.Second {
				l.over5++
			}
			if d > 10*time.Second {
				l.over10++
			}
			l.longest = max(l.longest, d)
		}
	}
	return l
}

// filesLate adds the new and the demoted holders' files of some rows.
func (r *results) filesLate(keys ...string) lateness {
	a, b := r.late(newFileLag, keys...), r.late(oldFileLag, keys...)
	return lateness{seen: a.seen + b.seen, over2: a.over2 + b.over2, over5: a.over5 + b.over5, over10: a.over10 + b.over10, longest: max(a.longest, b.longest)}
}

// resyncWrites is the resync writes counted in the handovers of some rows, and how many
// handovers those are.
func (r *results) resyncWrites(keys ...string) (writes, handovers int) {
	for _, k := range keys {
		for _, s := range r.samples[k] {
			writes += s.ResyncWrites
			handovers++
		}
	}
	return writes, handovers
}

func (r *results) resyncWritesInHandovers() int {
	n := 0
	for _, s := range r.samples {
		for _, x := range s {
			n += x.ResyncWrites
		}
	}
	return n
}

func perHandover(writes, handovers int) string {
	if handovers == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", float64(writes)/float64(handovers))
}

func (r *results) count(key string, f func(sample) bool) int {
	n := 0
	for _, s := range r.samples[key] {
		if f(s) {
			n++
		}
	}
	return n
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

func last(v []float64) float64 { return pct(v, 100) }

// summary is the one `E2E ...` line: the fields without a prefix are the resync-on half (the
// chart as shipped), off_… the other half, node_loss_… and the next ones the node-loss phase.
func (r *results) summary() string {
	loss := ""
	if r.loss != nil {
		loss = " " + r.loss.summary()
	}
	on, off := half(true), half(false)
	g := r.values(gap, rowKey("graceful", true))
	lateOn, lateOff := r.filesLate(on...), r.filesLate(off...)
	return fmt.Sprintf("E2E kubelet=%s kubelet_config=%s handovers=%d job_gap_p50_ms=%s job_gap_p99_ms=%s crash_p99_ms=%s notready_p99_ms=%s overlap_max_ms=%s service_switch_p99_ms=%s clientgo_job_gap_p99_ms=%s files_late_2s=%d files_late_10s=%d resync_writes_per_handover=%s off_job_gap_p99_ms=%s off_files_late_10s=%d%s%s violations=%d",
		r.kubelet, r.kubeletConfig, r.handovers(), fmtMs(pct(g, 50)), fmtMs(pct(g, 99)),
		fmtMs(pct(r.values(gap, rowKey("crash", true)), 99)), fmtMs(pct(r.values(fromFault, rowKey("notready", true)), 99)),
		fmtMs(last(r.values(overlap, on...))), fmtMs(pct(r.values(slice, on...), 99)), fmtMs(pct(r.values(gap, "clientgo"), 99)),
		lateOn.over2, lateOn.over10, perHandover(r.resyncWrites(on...)),
		fmtMs(pct(r.values(gap, rowKey("graceful", false)), 99)), lateOff.over10, r.goFields(), loss, r.violations)
}

const (
	sectionBegin = "<!-- make e2e: begin -->"
	sectionEnd   = "<!-- make e2e: end -->"
)

// kubeletText describes the node's kubelet for the report.
func (r *results) kubeletText() string {
	if r.kubeletConfig == "default" {
		return fmt.Sprintf("kubelet %s **with its default configuration** (no `syncFrequency` set: each pod's periodic sync every 1 min, plus up to 50 %% jitter)", r.kubelet)
	}
	return fmt.Sprintf("kubelet %s with **%s set in its config** — not the kubelet's default: these figures do not show what a default kubelet gives", r.kubelet, strings.Replace(r.kubeletConfig, "=", " ", 1))
}

func cell(l lateness) []string {
	if l.seen == 0 {
		return []string{"0", "–", "–", "–"}
	}
	return []string{fmt.Sprint(l.seen), fmt.Sprint(l.over2), fmt.Sprint(l.over10), fmtMs(float64(l.longest) / float64(time.Millisecond))}
}

func (r *results) markdown(plotFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## On a real node: failover as the workload sees it (`make e2e`)\n\n", sectionBegin)
	fmt.Fprintf(&b, "%s and containerd on this machine, three pods per workload, the chart's two controller replicas; %d handovers in %s.\n\n", r.kubeletText(), r.handovers(), r.duration.Round(time.Second))
	fmt.Fprintf(&b, "**The two halves.** *Resync on* is the chart as shipped, `controller.resyncAfter: %q`: after each change of what a pod leads the controller writes the pod once more, that long after, so that a kubelet that lost the change projects it again (docs/contract.md §3.1). *Resync off* is `controller.resyncAfter: \"0\"`: what the kubelet alone gives. The LeaderLock handovers ran in %d alternating blocks of the same run (on first; each kind spread evenly over the blocks), switched by `helm upgrade` of the installed chart with its own values and that one value changed (in the faults table: a rollout must leave the holder alone). client-go runs after them, as it always does.\n\n", r.resyncOn, r.blocks)
	b.WriteString("Times in ms, from the jobs' own timestamps (the kernel's boot-time clock, 10 ms resolution), each relative to the old job's stop — for a killed container, the kill. ")
	b.WriteString("*Job gap*: old job stopped → new job started (0 when they overlapped); *overlap*: both jobs ran; *annotation*: the harness's pod watch sees the new holder annotated `leader`; *file*: the new holder's downward-API file shows `leader` (polled on the node every 5 ms); *Service*: the leader-only Service's EndpointSlice holds only the new holder (file and Service are negative when they came before the old job stopped); *fault → new job*: from the delete, the kill or the probe made to fail.\n\n")
	b.WriteString("| handover | resync | n | job gap p50 | p90 | p99 | max | overlap max | annotation p50 | file p50 | file p99 | Service p50 | Service p99 | fault → new job p50 | p99 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range rows {
		g := r.values(gap, k.key)
		f := r.values(file, k.key)
		s := r.values(slice, k.key)
		ff := r.values(fromFault, k.key)
		a := r.values(annotation, k.key)
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k.title, orDash(k.resync), len(r.samples[k.key]),
			fmtMs(pct(g, 50)), fmtMs(pct(g, 90)), fmtMs(pct(g, 99)), fmtMs(pct(g, 100)), fmtMs(last(r.values(overlap, k.key))), fmtMs(pct(a, 50)),
			fmtMs(pct(f, 50)), fmtMs(pct(f, 99)), fmtMs(pct(s, 50)), fmtMs(pct(s, 99)), fmtMs(pct(ff, 50)), fmtMs(pct(ff, 99)))
	}
	b.WriteString("\n**Files and writes.** A file is *late* when it changed more than 2 s (or 10 s) after the harness's pod watch saw its annotation change: the kubelet's normal projection takes 0.1–1.2 s, and a change it loses waits for the pod's next sync (README, \"When the kubelet loses a role change\"). The new holder's file turns `leader`; the demoted holder's stops saying `leader` — seen when the pod lives long enough (a deleted leader's volume is often gone first). *Resync writes*: pod updates during the handover whose only change among the `leaderlock.dev/*` annotations was `leaderlock.dev/roles.resync` — the extra apiserver writes the resync costs; two pods' leadership changes in each handover.\n\n")
	b.WriteString("| handover | resync | new holder's file: seen | > 2 s | > 10 s | longest lag | demoted holder's file: seen | > 2 s | > 10 s | longest lag | resync writes per handover | old job restarted |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range rows {
		if k.resync == "" {
			continue
		}
		nf, of := cell(r.late(newFileLag, k.key)), cell(r.late(oldFileLag, k.key))
		restarted := "–"
		if k.kind == "crash" && len(r.samples[k.key]) > 0 {
			restarted = fmt.Sprintf("%d of %d", r.count(k.key, func(s sample) bool { return s.Restarted }), len(r.samples[k.key]))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", k.title, k.resync, strings.Join(nf, " | "), strings.Join(of, " | "),
			perHandover(r.resyncWrites(k.key)), restarted)
	}
	on, off := r.filesLate(half(true)...), r.filesLate(half(false)...)
	fmt.Fprintf(&b, "\nAll files, resync on: %d of %d later than 2 s, %d later than 5 s, %d later than 10 s (longest %s); resync off: %d of %d, %d, %d (longest %s).",
		on.over2, on.seen, on.over5, on.over10, on.longest.Round(10*time.Millisecond), off.over2, off.seen, off.over5, off.over10, off.longest.Round(10*time.Millisecond))
	w, n := r.resyncWrites(half(true)...)
	fmt.Fprintf(&b, " Resync writes: %d in %d handovers with resync on", w, n)
	if w, n := r.resyncWrites(half(false)...); n > 0 {
		fmt.Fprintf(&b, ", %d in %d with it off", w, n)
	}
	fmt.Fprintf(&b, "; %d outside the measured handovers (after the workload's first election, and the new active replica bringing the pods' keys to the new setting after each chart upgrade).", r.resyncWritesOutside)
	missing := 0
	for _, k := range half(true) {
		missing += r.count(k, func(s sample) bool { return s.ResyncMissing })
	}
	if missing > 0 {
		fmt.Fprintf(&b, " In %d handovers with resync on, a pod whose leadership changed showed no resync within %s of it.", missing, resyncBound)
	}
	b.WriteString(" *Old job restarted*: the kubelet restarted the killed container and the old holder's job started again with its old fencing token before the demotion reached its file (counted in the overlap column, not as a violation: the pod still held the lock).\n")
	if len(r.faults) > 0 {
		b.WriteString("\n| chart upgrade or fault | holder changed | took |\n|---|---|---|\n")
		for _, f := range r.faults {
			fmt.Fprintf(&b, "| %s | %v | %s |\n", f.Name, f.HolderChanged, f.Took.Round(100*time.Millisecond))
		}
	}
	fmt.Fprintf(&b, "\nSafety violations (two pods annotated `leader` at once, a fencing token that did not grow, a job start without a handover, a holder changed by a chart upgrade): **%d**.\n", r.violations)
	if plotFile != "" {
		fmt.Fprintf(&b, "\n![Job gap CDF: LeaderLock with the resync on (solid) and off (dashed), and client-go](%s)\n", plotFile)
	}
	fmt.Fprintf(&b, "\nThe `E2E` line: fields without a prefix are the resync-on half (`files_late_*` count new and demoted holders' files, `resync_writes_per_handover` its resync writes), `off_…` the resync-off half.\n")
	fmt.Fprintf(&b, "\n```\n%s\n```\n%s\n", r.summary(), sectionEnd)
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// replaceMarked puts section into the file between the markers begin and end, or appends it.
func replaceMarked(path, begin, end, section string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(data)
	if i, j := strings.Index(s, begin), strings.Index(s, end); i >= 0 && j > i {
		s = s[:i] + strings.TrimSuffix(section, "\n") + s[j+len(end):]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + section
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// plotCDF draws the job-gap distribution of every row (log-scaled time axis): one colour per
// kind, solid with the resync on, dashed with it off.
func (r *results) plotCDF(path string) error {
	p := plot.New()
	p.Title.Text = "Job gap on a real node: old job stopped → new job started"
	p.X.Label.Text = "job gap (ms, log scale)"
	p.Y.Label.Text = "fraction of handovers"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	// Bottom right: where a CDF leaves room.
	p.Legend.Top = false
	p.Legend.Left = false
	colors := map[string]color.RGBA{
		"graceful": {0x1f, 0x77, 0xb4, 255}, "crash": {0xd6, 0x27, 0x28, 255},
		"notready": {0xff, 0x7f, 0x0e, 255}, "clientgo": {0x2c, 0xa0, 0x2c, 255},
	}
	for _, k := range rows {
		v := r.values(gap, k.key)
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
		line.Color = colors[k.kind]
		line.Width = vg.Points(1.5)
		label := plotTitles[k.kind]
		if k.resync != "" {
			label += ", resync " + k.resync
		}
		if k.resync == "off" {
			line.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (n=%d)", label, len(v)), line)
	}
	p.Add(plotter.NewGrid())
	return p.Save(9*vg.Inch, 5.5*vg.Inch, path)
}
