package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// lossResults is what the node-loss phase reports: its samples and the setting it ran under.
type lossResults struct {
	samples        map[string][]lossSample
	rounds         int
	duration       time.Duration
	overlapCap     time.Duration
	victim, keep   string
	nodeLostAfter  string // the controller's --node-lost-after as deployed ("" : its default)
	tunedLostAfter string // spec.nodeLostAfter of the tuned rounds ("" : none ran)
	cpu            []nodeCPU
	setup          string // the set-up's times and CPU
}

// nodeCPU is one node's CPU time (every process in its cgroup root) over a stretch of the run.
type nodeCPU struct {
	Name      string
	Used, Any time.Duration // CPU time used; the stretch's wall time
}

func (c nodeCPU) cores() float64 { return c.Used.Seconds() / c.Any.Seconds() }

// values picks one measure of some rows, in milliseconds, sorted.
func (l *lossResults) values(pick func(lossSample) (time.Duration, bool), keys ...string) []float64 {
	var v []float64
	for _, k := range keys {
		for _, s := range l.samples[k] {
			if d, ok := pick(s); ok {
				v = append(v, float64(d)/float64(time.Millisecond))
			}
		}
	}
	sort.Float64s(v)
	return v
}

func (l *lossResults) count(f func(lossSample) bool, keys ...string) (hits, all int) {
	for _, k := range keys {
		for _, s := range l.samples[k] {
			all++
			if f(s) {
				hits++
			}
		}
	}
	return hits, all
}

func lossFromFault(s lossSample) (time.Duration, bool) { return s.FromFault, s.Moved }
func lossAnnotated(s lossSample) (time.Duration, bool) { return s.Annotated, s.HasAnnotated }
func lossOverlap(s lossSample) (time.Duration, bool)   { return s.Overlap, s.Moved }
func lossBack(s lossSample) (time.Duration, bool)      { return s.Back, true }
func lossAfterKubelet(s lossSample) (time.Duration, bool) {
	return s.AfterKubelet, s.HasAfterKubelet
}

// sameNode is the LeaderLock moves to another pod of the lost node, over every round.
func (l *lossResults) sameNode() int {
	n := 0
	for k, s := range l.samples {
		if strings.Contains(k, "leaderlock/") {
			for _, x := range s {
				n += x.SameNode
			}
		}
	}
	return n
}

// summary is the node-loss part of the `E2E` line: default kubelets and controller only.
func (l *lossResults) summary() string {
	ll := l.values(lossFromFault, lossKey("leaderlock", lossHang, false), lossKey("leaderlock", lossCrash, false))
	cg := l.values(lossFromFault, lossKey("clientgo", lossHang, false), lossKey("clientgo", lossCrash, false))
	kub := lossKey("leaderlock", lossKubelet, false)
	capped, all := l.count(func(s lossSample) bool { return s.Moved && !s.Stopped }, kub)
	notMoved, _ := l.count(func(s lossSample) bool { return !s.Moved }, lossKey("leaderlock", lossHang, false),
		lossKey("leaderlock", lossCrash, false), kub)
	return fmt.Sprintf("node_loss_rounds=%d node_loss_p50_ms=%s node_loss_p99_ms=%s clientgo_node_loss_p99_ms=%s thaw_overlap_max_ms=%s clientgo_thaw_overlap_max_ms=%s kubelet_crash_overlap_p50_ms=%s kubelet_crash_capped=%d/%d node_loss_same_node_successors=%d node_loss_not_moved=%d",
		l.rounds, fmtMs(pct(ll, 50)), fmtMs(pct(ll, 99)), fmtMs(pct(cg, 99)),
		fmtMs(last(l.values(lossOverlap, lossKey("leaderlock", lossHang, false)))),
		fmtMs(last(l.values(lossOverlap, lossKey("clientgo", lossHang, false)))),
		fmtMs(pct(l.values(lossOverlap, kub), 50)), capped, all, l.sameNode(), notMoved)
}

const (
	lossSectionBegin = "<!-- make e2e node loss: begin -->"
	lossSectionEnd   = "<!-- make e2e node loss: end -->"
)

var lossTitles = map[string]string{
	lossHang:    "node hung (every process frozen), thawed after both moved",
	lossCrash:   "node crashed (every process SIGKILLed), restarted after both moved",
	lossKubelet: "kubelet alone SIGKILLed, its containers run on",
}

// markdown is the node-loss section of BENCHMARKS.md; line is the run's `E2E` line.
func (l *lossResults) markdown(kubelet, line string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## On two real nodes: a node lost (`make e2e`)\n\n", lossSectionBegin)
	fmt.Fprintf(&b, "Two kubelets %s **with their default configuration** (node Lease of 40 s renewed every 10 s) and kube-controller-manager's node-lifecycle controller at its defaults (50 s grace, 5 s period), each node with its own containerd, on this machine. ", kubelet)
	fmt.Fprintf(&b, "Both workloads at once, four pods each spread two per node: LeaderLock (the chart's controller, `--node-lost-after` %s; its two replicas on node %s) and the same job under client-go leader election in the pods (LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s). ", orText(l.nodeLostAfter, "at its default"), l.keep)
	fmt.Fprintf(&b, "Before each round both leaders are put on node %s (LeaderLock's with a Handover, client-go's by deleting its leader pod until a pod there wins), then that node is lost; %d rounds in %s.\n\n", l.victim, l.rounds, l.duration.Round(time.Second))
	b.WriteString("Times in ms from the fault, from the jobs' own timestamps. *Fault → new job*: the new leader's job starts on the other node. *Annotation*: a pod there is annotated `leader` (LeaderLock). *Old job beside the new one*: after a thaw, thaw → the old leader's job stopped on its own; after a kubelet crash, the new job's start → the old job's stop, waited for at most ")
	fmt.Fprintf(&b, "%s (then counted as that cap: it was still running). *Same-node successors*: another pod of the lost node annotated `leader` after the fault (a fencing token spent on a dead pod: must be 0). *Node back*: thaw or restart → the node Ready and every pod of both workloads Ready with one job each.\n\n", l.overlapCap)
	b.WriteString("| node lost by | workload | n | moved | fault → new job p50 | p90 | p99 | max | annotation p50 | p99 | old job beside the new one p50 | max | stopped on its own | same-node successors | kubelet back → old job stopped max | node back p50 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, tuned := range []bool{false, true} {
		for _, kind := range []string{lossHang, lossCrash, lossKubelet} {
			for _, wl := range []string{"leaderlock", "clientgo"} {
				l.row(&b, wl, kind, tuned)
			}
		}
	}
	if l.tunedLostAfter != "" {
		fmt.Fprintf(&b, "\n*Tuned* rows are **not defaults** and give no published figure: node %s's kubelet with `nodeLeaseDurationSeconds: 10` (its Lease renewed every 2.5 s) and the LeaderLock with `spec.nodeLostAfter: %s`, to show what a faster heartbeat buys.\n", l.victim, l.tunedLostAfter)
	}
	if l.setup != "" {
		fmt.Fprintf(&b, "\nSet-up (control plane, both nodes, images, chart): %s\n", l.setup)
	}
	if len(l.cpu) > 0 {
		b.WriteString("\nCPU of each node over the phase (every process in its cgroup root: kubelet, containerd, shims, the eight pods and, on the first node, the controller): ")
		var parts []string
		for _, c := range l.cpu {
			parts = append(parts, fmt.Sprintf("%s %.0f s in %s (%.2f of a core)", c.Name, c.Used.Seconds(), c.Any.Round(time.Second), c.cores()))
		}
		b.WriteString(strings.Join(parts, "; ") + ".\n")
	}
	fmt.Fprintf(&b, "\nThe node-loss fields of the `E2E` line come from the default rows: `node_loss_*` LeaderLock's hangs and crashes together, `clientgo_node_loss_p99_ms` client-go's, `thaw_overlap_max_ms` the longest the old job ran after a thaw, `kubelet_crash_*` the kubelet-only crashes (`capped`: still running at the cap).\n")
	fmt.Fprintf(&b, "\n```\n%s\n```\n%s\n", line, lossSectionEnd)
	return b.String()
}

func (l *lossResults) row(b *strings.Builder, wl, kind string, tuned bool) {
	k := lossKey(wl, kind, tuned)
	n := len(l.samples[k])
	if n == 0 {
		return
	}
	title := lossTitles[kind]
	if tuned {
		title = "**tuned:** " + title
	}
	name := map[string]string{"leaderlock": "LeaderLock", "clientgo": "client-go"}[wl]
	moved, _ := l.count(func(s lossSample) bool { return s.Moved }, k)
	ff, an := l.values(lossFromFault, k), l.values(lossAnnotated, k)
	ov := l.values(lossOverlap, k)
	stopped, _ := l.count(func(s lossSample) bool { return s.Moved && s.Stopped }, k)
	overlapCells := []string{fmtMs(pct(ov, 50)), fmtMs(last(ov)), fmt.Sprintf("%d of %d", stopped, moved)}
	if kind == lossCrash || moved == 0 {
		overlapCells = []string{"–", "–", "–"}
	}
	same := "–"
	if wl == "leaderlock" {
		x, _ := l.count(func(s lossSample) bool { return s.SameNode > 0 }, k)
		same = fmt.Sprint(x)
	}
	fmt.Fprintf(b, "| %s | %s | %d | %d of %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", title, name, n, moved, n,
		fmtMs(pct(ff, 50)), fmtMs(pct(ff, 90)), fmtMs(pct(ff, 99)), fmtMs(last(ff)), fmtMs(pct(an, 50)), fmtMs(pct(an, 99)),
		strings.Join(overlapCells, " | "), same, fmtMs(last(l.values(lossAfterKubelet, k))), fmtMs(pct(l.values(lossBack, k), 50)))
}

func orText(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return "`" + s + "`"
}
