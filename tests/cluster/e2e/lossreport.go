package main

import (
	"fmt"
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
	renewDeadline  int    // renewDeadlineSeconds of the renewal rounds (0: none ran)
	tunedLostAfter int    // nodeLostAfterSeconds of the tuned rounds (0: none ran)
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
	return millis(l.samples, pick, keys...)
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
func lossOldStop(s lossSample) (time.Duration, bool) { return s.OldStop, s.HasOldStop }

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
	ll := l.values(lossFromFault, lossKey("leaderlock", lossHang, ""), lossKey("leaderlock", lossCrash, ""))
	cg := l.values(lossFromFault, lossKey("clientgo", lossHang, ""), lossKey("clientgo", lossCrash, ""))
	kub := lossKey("leaderlock", lossKubelet, "")
	capped, all := l.count(func(s lossSample) bool { return s.Moved && !s.Stopped }, kub)
	var notMoved int
	for k := range l.samples {
		if strings.Contains(k, "leaderlock/") {
			n, _ := l.count(func(s lossSample) bool { return !s.Moved }, k)
			notMoved += n
		}
	}
	out := fmt.Sprintf("node_loss_rounds=%d node_loss_p50_ms=%s node_loss_p99_ms=%s clientgo_node_loss_p99_ms=%s thaw_overlap_max_ms=%s clientgo_thaw_overlap_max_ms=%s kubelet_crash_overlap_p50_ms=%s kubelet_crash_capped=%d/%d node_loss_same_node_successors=%d node_loss_not_moved=%d",
		l.rounds, fmtMs(pct(ll, 50)), fmtMs(pct(ll, 99)), fmtMs(pct(cg, 99)),
		fmtMs(last(l.values(lossOverlap, lossKey("leaderlock", lossHang, "")))),
		fmtMs(last(l.values(lossOverlap, lossKey("clientgo", lossHang, "")))),
		fmtMs(pct(l.values(lossOverlap, kub), 50)), capped, all, l.sameNode(), notMoved)
	if l.renewDeadline > 0 {
		rh, rk := lossKey("leaderlock", lossHang, settingRenewal), lossKey("leaderlock", lossKubelet, settingRenewal)
		out += fmt.Sprintf(" renewal_deadline_s=%d renewal_overlap_max_ms=%s renewal_old_job_stop_max_ms=%s",
			l.renewDeadline, fmtMs(last(l.values(lossOverlap, rh, rk))), fmtMs(last(l.values(lossOldStop, rk))))
	}
	return out
}

const (
	lossSectionBegin = "<!-- make e2e node loss: begin -->"
	lossSectionEnd   = "<!-- make e2e node loss: end -->"
)

var lossTitles = map[string]string{
	lossHang:    "node hung (every process frozen)",
	lossCrash:   "node crashed (every process SIGKILLed)",
	lossKubelet: "kubelet alone SIGKILLed",
}

var workloadNames = map[string]string{"leaderlock": "LeaderLock", "clientgo": "client-go"}

// settingText names a setting in the tables.
func (l *lossResults) settingText(setting string) string {
	switch setting {
	case settingRenewal:
		return fmt.Sprintf("`renewDeadlineSeconds: %d`", l.renewDeadline)
	case settingTuned:
		return fmt.Sprintf("**tuned, not defaults:** Lease every 2.5 s, `nodeLostAfterSeconds: %d`", l.tunedLostAfter)
	}
	return "defaults"
}

// rowKeys lists the rows that ran, in table order: client-go only under the defaults (no
// LeaderLock setting changes it).
func (l *lossResults) rowKeys() (out [][3]string) {
	for _, setting := range []string{"", settingRenewal, settingTuned} {
		for _, kind := range []string{lossHang, lossCrash, lossKubelet} {
			for _, wl := range []string{"leaderlock", "clientgo"} {
				if (setting == "" || wl == "leaderlock") && len(l.samples[lossKey(wl, kind, setting)]) > 0 {
					out = append(out, [3]string{wl, kind, setting})
				}
			}
		}
	}
	return out
}

// markdown is the node-loss section of BENCHMARKS.md; line is the run's `E2E` line.
func (l *lossResults) markdown(kubelet, line string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n## On two real nodes: a node lost (`make e2e`)\n\n", lossSectionBegin)
	fmt.Fprintf(&b, "Two kubelets %s **with their default configuration** (node Lease of 40 s renewed every 10 s) and kube-controller-manager's node-lifecycle controller at its defaults (50 s grace, 5 s period), each node with its own containerd, on this machine. ", kubelet)
	fmt.Fprintf(&b, "Both job workloads at once, four pods each spread two per node: LeaderLock (the chart's controller, node-Lease detection %s; its two replicas on node %s) and the same job under client-go leader election in the pods (LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s). ", l.nodeLostAfter, l.keep)
	fmt.Fprintf(&b, "Before each round both leaders are put on node %s (LeaderLock's with a Handover, client-go's by deleting its leader pod until a pod there wins), then that node is lost: frozen with the cgroup freezer and thawed once both workloads moved; every process SIGKILLed and containerd and the kubelet started again once both moved; or its kubelet alone SIGKILLed and started again after the cap. %d rounds in %s.\n\n", l.victim, l.rounds, l.duration.Round(time.Second))
	b.WriteString("**Failover.** Times in ms from the fault, from the jobs' own timestamps. *Fault → new job*: the new leader's job starts on the other node. *Annotation*: a pod there is annotated `leader`. *Same-node successors*: rounds in which another pod of the lost node was annotated `leader` after the fault (a fencing token spent on a dead pod: must be 0). *Node back*: thaw or restart → the node Ready and every pod of both workloads Ready with one job each.\n\n")
	b.WriteString("| node lost by | setting | workload | n | moved | fault → new job p50 | p90 | p99 | max | annotation p50 | p99 | same-node successors | node back p50 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range l.rowKeys() {
		l.failoverRow(&b, k[0], k[1], k[2])
	}
	fmt.Fprintf(&b, "\n**The old leader's job.** A lost node's old leader cannot be told it was demoted while its node is frozen or its kubelet dead. *Stopped on its own*: rounds in which its job stopped without the harness killing it. *Fault → stopped*: with the kubelet dead, when it stopped. *Beside the new one*: after a thaw, thaw → its stop; with the kubelet dead, the new job's start → its stop (0 when it stopped first), waited for at most %s and then counted as that cap. *Kubelet back → stopped*: once the kubelet runs again.\n\n", l.overlapCap)
	b.WriteString("| node lost by | setting | workload | n | stopped on its own | fault → stopped p50 | max | beside the new one p50 | max | kubelet back → stopped max |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, k := range l.rowKeys() {
		if k[1] != lossCrash {
			l.oldJobRow(&b, k[0], k[1], k[2])
		}
	}
	if l.renewDeadline > 0 {
		fmt.Fprintf(&b, "\n`renewDeadlineSeconds: %d` rows: the LeaderLock opts in to renewals (docs/contract.md §3.1: the controller rewrites the leader's `leaderlock.dev/roles.renewed` every %d s, %.0f pod writes per minute per leading pod, against client-go's 30 Lease writes per minute per lock), and `leaderlock run` stops a leader's job once it saw no new mark for %d s; kubelets and kube-controller-manager keep their defaults.\n", l.renewDeadline, l.renewDeadline/3, 180/float64(l.renewDeadline), l.renewDeadline)
	}
	if l.tunedLostAfter > 0 {
		fmt.Fprintf(&b, "\n*Tuned* rows are **not defaults** and give no published figure: node %s's kubelet with `nodeLeaseDurationSeconds: 10` (its Lease renewed every 2.5 s) and the LeaderLock with `nodeLostAfterSeconds: %d`, to show what a faster heartbeat buys.\n", l.victim, l.tunedLostAfter)
	}
	if l.setup != "" {
		fmt.Fprintf(&b, "\nSet-up (control plane, both nodes, images, chart): %s\n", l.setup)
	}
	if len(l.cpu) > 0 {
		b.WriteString("\nCPU of each node over the phase (every process in its cgroup root: kubelet, containerd, shims, the pods and, on the first node, the controller): ")
		var parts []string
		for _, c := range l.cpu {
			parts = append(parts, fmt.Sprintf("%s %.0f s in %s (%.2f of a core)", c.Name, c.Used.Seconds(), c.Any.Round(time.Second), c.cores()))
		}
		b.WriteString(strings.Join(parts, "; ") + ".\n")
	}
	b.WriteString("\nThe node-loss fields of the `E2E` line come from the default rows: `node_loss_*` LeaderLock's hangs and crashes together, `clientgo_node_loss_p99_ms` client-go's, `thaw_overlap_max_ms` the longest an old job ran after a thaw, `kubelet_crash_*` the kubelet-only crashes (`capped`: still running at the cap); `renewal_*` the `renewDeadlineSeconds` rows (`old_job_stop`: fault → stopped with the kubelet dead).\n")
	fmt.Fprintf(&b, "\n```\n%s\n```\n%s\n", line, lossSectionEnd)
	return b.String()
}

func (l *lossResults) failoverRow(b *strings.Builder, wl, kind, setting string) {
	k := lossKey(wl, kind, setting)
	n := len(l.samples[k])
	moved, _ := l.count(func(s lossSample) bool { return s.Moved }, k)
	ff, an := l.values(lossFromFault, k), l.values(lossAnnotated, k)
	same := "–"
	if wl == "leaderlock" {
		x, _ := l.count(func(s lossSample) bool { return s.SameNode > 0 }, k)
		same = fmt.Sprint(x)
	}
	fmt.Fprintf(b, "| %s | %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", lossTitles[kind], l.settingText(setting), workloadNames[wl], n, moved,
		fmtMs(pct(ff, 50)), fmtMs(pct(ff, 90)), fmtMs(pct(ff, 99)), fmtMs(last(ff)), fmtMs(pct(an, 50)), fmtMs(pct(an, 99)),
		same, fmtMs(pct(l.values(lossBack, k), 50)))
}

func (l *lossResults) oldJobRow(b *strings.Builder, wl, kind, setting string) {
	k := lossKey(wl, kind, setting)
	moved, _ := l.count(func(s lossSample) bool { return s.Moved }, k)
	if moved == 0 {
		fmt.Fprintf(b, "| %s | %s | %s | %d | – (it kept the lock) | – | – | – | – | – |\n", lossTitles[kind], l.settingText(setting), workloadNames[wl], len(l.samples[k]))
		return
	}
	stopped, _ := l.count(func(s lossSample) bool { return s.Moved && s.Stopped }, k)
	st, ov := l.values(lossOldStop, k), l.values(lossOverlap, k)
	fmt.Fprintf(b, "| %s | %s | %s | %d | %d of %d | %s | %s | %s | %s | %s |\n", lossTitles[kind], l.settingText(setting), workloadNames[wl], moved, stopped, moved,
		fmtMs(pct(st, 50)), fmtMs(last(st)), fmtMs(pct(ov, 50)), fmtMs(last(ov)), fmtMs(last(l.values(lossAfterKubelet, k))))
}
