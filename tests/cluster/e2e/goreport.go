package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// goResults is the Go phase's samples and idle figures.
type goResults struct {
	samples    map[string][]goSample // "<variant>/<graceful|crash>"
	idle       map[string]idleFigures
	idleWindow time.Duration
	// extra, badToken: per variant, see goRun.
	extra, badToken map[string]int
	violations      int
	duration        time.Duration
}

func newGoResults(idleWindow time.Duration) *goResults {
	return &goResults{samples: map[string][]goSample{}, idle: map[string]idleFigures{}, idleWindow: idleWindow,
		extra: map[string]int{}, badToken: map[string]int{}}
}

func goGap(s goSample) time.Duration       { return s.Gap }
func goOverlap(s goSample) time.Duration   { return s.Overlap }
func goFromFault(s goSample) time.Duration { return s.FromFault }

// ms picks one measure of some rows, in milliseconds, sorted.
func (r *goResults) ms(pick func(goSample) time.Duration, keys ...string) []float64 {
	var v []float64
	for _, k := range keys {
		for _, s := range r.samples[k] {
			v = append(v, float64(pick(s))/float64(time.Millisecond))
		}
	}
	sort.Float64s(v)
	return v
}

func (r *goResults) unseen(key string) int {
	n := 0
	for _, s := range r.samples[key] {
		if s.StopUnseen {
			n++
		}
	}
	return n
}

func (r *goResults) handovers() int {
	n := 0
	for _, s := range r.samples {
		n += len(s)
	}
	return n
}

// fields are the Go phase's part of the E2E line.
func (r *goResults) fields() string {
	var b strings.Builder
	for _, v := range goVariants {
		g, c := v.Name+"/graceful", v.Name+"/crash"
		fmt.Fprintf(&b, " go_%[1]s_gap_p99_ms=%[2]s go_%[1]s_crash_p99_ms=%[3]s go_%[1]s_overlap_max_ms=%[4]s go_%[1]s_idle_writes_per_min=%[5]s",
			v.Name, fmtMs(pct(r.ms(goGap, g), 99)), fmtMs(pct(r.ms(goGap, c), 99)), fmtMs(last(r.ms(goOverlap, g, c))), r.idleText(v.Name))
	}
	return b.String()
}

// idleText is a variant's apiserver writes per minute while idle: the larger of the example's
// own write requests and the changes of objects in its namespace ("–" without an idle window).
func (r *goResults) idleText(variant string) string {
	f, ok := r.idle[variant]
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.0f", f.perMinute(max(f.Writes, f.changes())))
}

var goKindTitles = map[string]string{
	"graceful": "leader pod deleted",
	"crash":    "leader container killed (SIGKILL)",
}

const (
	goSectionBegin = "<!-- make e2e go: begin -->"
	goSectionEnd   = "<!-- make e2e go: end -->"
)

func (r *goResults) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## On a real node: a Go controller, LeaderLock drop-in vs Lease election (`make e2e`)\n\n", goSectionBegin)
	fmt.Fprintf(&b, "`examples/go-controller` (a controller-runtime v0.24 manager reconciling %d ConfigMaps) as two Deployments of %d replicas on the same node; `make e2e` runs them after the job workloads above: "+
		"one elected through LeaderLock with `leaderelection.ResourceLock` and the timing contract §3.7 recommends (LeaseDuration 2 s, RenewDeadline 1 s, RetryPeriod 250 ms), "+
		"one through controller-runtime's own Lease election with its defaults (15 s, 10 s, 2 s; `LeaderElectionReleaseOnCancel` off, as kubebuilder scaffolds it). "+
		"Same image, same readiness probe (kubebuilder's: `/readyz`, 5 s delay, every 10 s), the two variants' handovers alternating; %d handovers in %s.\n\n",
		goInputs, goReplicas, r.handovers(), r.duration.Round(time.Second))
	b.WriteString("Times in ms from the managers' own log lines (wall clock), read from the kubelet's log files on the node. *Gap*: the old manager stopped leading (its `stopped leading` line on SIGTERM; for a killed container, the kill) → the new leader's first reconcile; *overlap*: two managers leading at once (from one's `leading` line or first reconcile to the other's end); *fault → first reconcile*: from the delete or the kill.\n\n")
	b.WriteString("| election | handover | n | gap p50 | p90 | p99 | max | overlap max | fault → first reconcile p50 | p99 |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, v := range goVariants {
		for _, kind := range []string{"graceful", "crash"} {
			k := v.Name + "/" + kind
			g, f := r.ms(goGap, k), r.ms(goFromFault, k)
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", v.Title, goKindTitles[kind], len(r.samples[k]),
				fmtMs(pct(g, 50)), fmtMs(pct(g, 90)), fmtMs(pct(g, 99)), fmtMs(pct(g, 100)), fmtMs(last(r.ms(goOverlap, k))),
				fmtMs(pct(f, 50)), fmtMs(pct(f, 99)))
		}
	}
	unseen := 0
	for k := range r.samples {
		unseen += r.unseen(k)
	}
	if unseen > 0 {
		fmt.Fprintf(&b, "\nIn %d graceful handovers the deleted leader's `stopped leading` line was gone with its pod's log before the harness read it; their gap counts from the delete.\n", unseen)
	}
	if len(r.idle) > 0 {
		b.WriteString("\n**While idle** (both variants steady, no handover, the same window): *the example's requests* are its own API requests, from client-go's `rest_client_requests_total` on each replica, summed over the three; *object changes* are every change of a Lease, Pod, Event, ConfigMap or LeaderLock in the variant's namespace, by any writer, replayed from a watch between the resourceVersions listed at the window's two ends.\n\n")
		b.WriteString("| election | window | the example's writes /min | the example's requests /min (all) | object changes /min | of which Leases |\n|---|---|---|---|---|---|\n")
		for _, v := range goVariants {
			f, ok := r.idle[v.Name]
			if !ok {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f |\n", v.Title, f.Window.Round(time.Second),
				f.perMinute(f.Writes), f.perMinute(f.Requests), f.perMinute(f.changes()), f.perMinute(f.Changes["leases"]))
		}
	}
	fmt.Fprintf(&b, "\nSafety (drop-in only; the Lease election promises neither): a term whose fencing token did not grow %d, a third manager leading during a handover %d. Lease: a third manager leading %d.\n",
		r.badToken["dropin"], r.extra["dropin"], r.extra["lease"])
	fmt.Fprintf(&b, "\n`E2E` fields: `go_<dropin|lease>_gap_p99_ms` (leader pod deleted), `_crash_p99_ms`, `_overlap_max_ms` (both kinds), `_idle_writes_per_min` (the larger of the example's writes and the namespace's object changes).\n\n```\n%s\n```\n%s\n",
		strings.TrimSpace(r.fields()), goSectionEnd)
	return b.String()
}
