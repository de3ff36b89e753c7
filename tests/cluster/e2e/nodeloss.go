package main

import (
	"fmt"
	"time"
)

// The node-loss phase (issue 23): both workloads at once, four pods each, spread two per node,
// and the second node lost again and again, each time with both leaders on it (the controller
// replicas stay on the first node, so what is measured is the workload's failover alone):
//
//	hang     every process of the node frozen (a hung machine: nothing runs, nothing talks);
//	         thawed once both workloads have a job on the first node
//	crash    every process of the node SIGKILLed (kubelet, containerd, shims, containers);
//	         containerd and the kubelet started again once both moved
//	kubelet  the node's kubelet alone SIGKILLed: its containers run on, with nobody to tell
//	         them they were demoted; started again after the cap
//
// From the jobs' own timestamps: fault → the new leader's job on the first node; after a thaw,
// how long the old leader's job ran beside the new one before it stopped on its own; after a
// kubelet crash, how long the old job ran beside the new one (at most the cap) and how soon it
// stopped once the kubelet was back. Every leader annotation after the fault is checked: none
// may land on another pod of the lost node.

// The fault kinds.
const (
	lossHang    = "hang"
	lossCrash   = "crash"
	lossKubelet = "kubelet"
)

// moveBound is how long a round waits for a workload to move off the lost node: the
// node-lifecycle controller's grace period (50 s) and its 5 s period, with room to spare.
const moveBound = 180 * time.Second

// lossSample is one workload's side of one round.
type lossSample struct {
	// Moved: a job started on another node within moveBound; FromFault: fault → that start.
	Moved     bool
	FromFault time.Duration
	// Annotated: fault → a pod on another node annotated leader (LeaderLock).
	Annotated    time.Duration
	HasAnnotated bool
	// SameNode: other pods of the lost node annotated leader after the fault (LeaderLock).
	SameNode int
	// Stopped: the old leader's job stopped on its own: after the thaw (hang), within the cap
	// (kubelet). Overlap: thaw → its stop (hang); new job's start → its stop, the cap when it
	// did not (kubelet).
	Stopped bool
	Overlap time.Duration
	// OldStop: fault → the old job's stop, when it stopped on its own with the kubelet dead.
	OldStop    time.Duration
	HasOldStop bool
	// AfterKubelet: the kubelet started again → the old job's stop (kubelet).
	AfterKubelet    time.Duration
	HasAfterKubelet bool
	// Back: thaw or restart → the node Ready and every pod of both workloads back.
	Back time.Duration
}

// nodeLossRun is the phase's state: both workloads, the node lost and the one kept.
type nodeLossRun struct {
	c            config
	ll           *leaderLockRun
	cg           *electorRun
	victim, keep *node
	// overlapCap bounds the wait for an old job that nothing stops (kubelet crash).
	overlapCap time.Duration
	// setting names the rounds' setting: "" (defaults), settingRenewal, settingTuned.
	setting  string
	samples  map[string][]lossSample // lossKey(workload, kind, tuned)
	podNodes map[string]string       // pod -> node, filled as pods are seen
}

// The settings rounds run under besides the defaults.
const (
	// settingRenewal: the LeaderLock opts in to renewDeadlineSeconds (a user's choice; the
	// kubelets and kube-controller-manager keep their defaults).
	settingRenewal = "renewal"
	// settingTuned: the lost node's kubelet renews its Lease faster and the LeaderLock's
	// nodeLostAfterSeconds is shorter: not defaults, never a headline figure.
	settingTuned = "tuned"
)

// lossKey names a row: a workload's rounds of one kind under one setting.
func lossKey(workload, kind, setting string) string {
	if setting != "" {
		return setting + "/" + workload + "/" + kind
	}
	return workload + "/" + kind
}

func newNodeLossRun(c config, overlapCap time.Duration) *nodeLossRun {
	if len(c.nodes) < 2 {
		fail("the node-loss phase needs two nodes (LEADERLOCK_NODES=2; hack/e2e.sh starts them)")
	}
	r := &nodeLossRun{c: c, keep: c.nodes[0], victim: c.nodes[1], overlapCap: overlapCap,
		samples: map[string][]lossSample{}, podNodes: map[string]string{}}
	r.ll = newLeaderLockRun(c, "e2e-nodeloss", 4)
	r.cg = newElectorRun(c, "e2e-nodeloss-clientgo", 4)
	return r
}

// nodeOf is the node pod w's pod runs on ("" when it is gone).
func (r *nodeLossRun) nodeOf(w *workloadRun, name string) string {
	if n, ok := r.podNodes[name]; ok {
		return n
	}
	for _, p := range listPods(w.ns, w.app) {
		if p.Node != "" {
			r.podNodes[p.Name] = p.Node
		}
	}
	return r.podNodes[name]
}

// round runs one fault of kind and records both workloads' samples.
func (r *nodeLossRun) round(kind string) {
	llOld, cgOld := r.prepare()
	extra := r.ll.extra + r.cg.extra
	llTok, cgTok := running(r.ll.events())[llOld.Name], running(r.cg.events())[cgOld.Name]
	logf("losing node %s (%s): LeaderLock's leader %s, client-go's %s", r.victim.Name, kind, llOld.Name, cgOld.Name)
	t := now()
	switch kind {
	case lossHang:
		r.victim.freeze()
	case lossCrash:
		r.victim.crash()
		// Their jobs died with the node, unlogged.
		r.ll.killed = append(r.ll.killed, jobEvent{Pod: llOld.Name, At: t})
		r.cg.killed = append(r.cg.killed, jobEvent{Pod: cgOld.Name, At: t})
	case lossKubelet:
		r.victim.killKubelet()
	}
	var ll, cg lossSample
	llNew := r.awaitMove(r.ll.workloadRun, t, &ll)
	if kind == lossKubelet {
		// client-go's leader renews its Lease itself: a dead kubelet does not move it. Whether
		// it moved is read after the LeaderLock side is done (at least the cap later).
		r.measureKubelet(llOld, t, llNew, &ll)
		cg.Moved = r.movedSince(r.cg.workloadRun, t)
	} else {
		cgNew := r.awaitMove(r.cg.workloadRun, t, &cg)
		_ = cgNew
	}
	// From here the node comes back: thawed, or its processes started again. (Taken before the
	// thaw: the first job lines may come within a millisecond of it.)
	back, backWall := now(), time.Now()
	switch kind {
	case lossHang:
		r.victim.thaw()
		r.measureThaw(r.ll.workloadRun, llOld.Name, t, back, &ll)
		r.measureThaw(r.cg.workloadRun, cgOld.Name, t, back, &cg)
	case lossCrash:
		r.victim.bringBack()
	case lossKubelet:
		r.victim.bringBack()
		if stop, ok := r.stopAfter(r.ll.workloadRun, llOld.Name, t, fileBound); ok && !ll.Stopped {
			ll.AfterKubelet, ll.HasAfterKubelet = stop-back, true
		}
	}
	r.awaitBack(kind == lossCrash, backWall)
	ll.Back = now() - back
	cg.Back = ll.Back
	ll.SameNode = r.sameNodeSuccessors(llOld.Name, t)
	end := now()
	if llNew.Start {
		r.ll.settle(llOld.Name, llTok, llNew, t, end)
	}
	if kind == lossHang {
		// The old elector exited on its lost Lease; replace its pod so the next rounds do not
		// wait out the kubelet's restart back-off.
		mustKubectl("delete", "pod", "-n", r.cg.ns, cgOld.Name, "--wait=false")
	}
	r.cg.settleSince(cgOld.Name, cgTok, t, end)
	if r.ll.extra+r.cg.extra > extra || ll.SameNode > 0 || !ll.Moved || !cg.Moved && kind != lossKubelet {
		r.timeline(t, end)
	}
	r.samples[lossKey("leaderlock", kind, r.setting)] = append(r.samples[lossKey("leaderlock", kind, r.setting)], ll)
	r.samples[lossKey("clientgo", kind, r.setting)] = append(r.samples[lossKey("clientgo", kind, r.setting)], cg)
	logf("node %s %s: LeaderLock moved %v in %s (annotated %s, same-node successors %d, overlap %s%s), client-go moved %v in %s (overlap %s), node back in %s",
		r.victim.Name, kind, ll.Moved, ll.FromFault.Round(10*time.Millisecond), ll.Annotated.Round(10*time.Millisecond), ll.SameNode,
		ll.Overlap.Round(10*time.Millisecond), capText(kind, ll), cg.Moved, cg.FromFault.Round(10*time.Millisecond),
		cg.Overlap.Round(10*time.Millisecond), ll.Back.Round(100*time.Millisecond))
}

func capText(kind string, s lossSample) string {
	if kind != lossKubelet {
		return ""
	}
	if !s.Stopped {
		return ", still running at the cap"
	}
	return ""
}

// timeline logs what the round's window held, relative to the fault: every job line of both
// workloads and every LeaderLock pod annotated leader, with its node.
func (r *nodeLossRun) timeline(t, end time.Duration) {
	logf("round timeline (ms from the fault):")
	for _, w := range []*workloadRun{r.ll.workloadRun, r.cg.workloadRun} {
		for _, e := range w.events() {
			if e.At >= t-time.Second && e.At < end {
				what := "stop"
				if e.Start {
					what = fmt.Sprintf("start (token %d)", e.Token)
				}
				logf("  %7d  %s job %s on %s: %s", (e.At-t)/time.Millisecond, w.app, e.Pod, r.nodeOf(w, e.Pod), what)
			}
		}
	}
	for _, turn := range r.ll.roles.turnsSince(t) {
		logf("  %7d  %s on %s annotated leader", (turn.At-t)/time.Millisecond, turn.Pod, r.nodeOf(r.ll.workloadRun, turn.Pod))
	}
}

// prepare waits until both nodes are Ready and both workloads steady, and puts both leaders on
// the node to lose: client-go's by deleting its pods on the other node until a pod on this one
// wins, LeaderLock's with a Handover to a pod there.
func (r *nodeLossRun) prepare() (llOld, cgOld pod) {
	waitFor("every node Ready", moveBound, func() bool { return allReady(r.c.nodes) })
	r.cgLeaderTo(r.victim.Name)
	llOld = r.ll.steadyHolder()
	if llOld.Node != r.victim.Name {
		llOld = r.ll.handoverTo(r.victim.Name)
	}
	return llOld, r.cg.steady(nil)
}

// cgLeaderTo moves client-go's leadership to a pod on node: with the leader's node cordoned,
// the leader's pod and the other pods of its node are deleted together (the leader releases its
// Lease, ReleaseOnCancel), so that the only candidates are on node. (Without the cordon their
// replacements often won: a new elector tries at once, a waiting one only every 2–4.4 s.)
func (r *nodeLossRun) cgLeaderTo(nodeName string) {
	g := r.cg
	old := g.steady(nil)
	if old.Node == nodeName {
		return
	}
	var del []string
	for _, p := range listPods(g.ns, g.app) {
		if p.Node == old.Node {
			del = append(del, p.Name)
		}
	}
	mustKubectl("cordon", old.Node)
	t := now()
	mustKubectl(append([]string{"delete", "pod", "-n", g.ns, "--wait=false"}, del...)...)
	newStart, _ := g.measure(old, t, 0)
	mustKubectl("uncordon", old.Node)
	if n := r.nodeOf(g.workloadRun, newStart.Pod); n != nodeName {
		fail("client-go's leadership moved from %s to %s on node %s, not to node %s", old.Name, newStart.Pod, n, nodeName)
	}
	g.steady(nil)
}

// awaitMove waits, at most moveBound, for w's job to start on another node than the victim
// after t, and fills s with it; for LeaderLock also when the annotation moved there.
func (r *nodeLossRun) awaitMove(w *workloadRun, t time.Duration, s *lossSample) jobEvent {
	var got jobEvent
	s.Moved = poll(moveBound, func() bool {
		for _, e := range w.events() {
			if e.Start && e.At >= t && r.nodeOf(w, e.Pod) == r.keep.Name {
				got = e
				return true
			}
		}
		return false
	})
	if !s.Moved {
		logf("%s: no job started on node %s within %s of losing node %s", w.app, r.keep.Name, moveBound, r.victim.Name)
		return got
	}
	s.FromFault = got.At - t
	w.noteToken(got)
	if w.app == r.ll.app {
		for _, turn := range r.ll.roles.turnsSince(t) {
			if r.nodeOf(w, turn.Pod) == r.keep.Name {
				s.Annotated, s.HasAnnotated = turn.At-t, true
				break
			}
		}
	}
	return got
}

// movedSince: a job started in w after t on the kept node.
func (r *nodeLossRun) movedSince(w *workloadRun, t time.Duration) bool {
	for _, e := range w.events() {
		if e.Start && e.At >= t && r.nodeOf(w, e.Pod) == r.keep.Name {
			return true
		}
	}
	return false
}

// stopAfter waits, at most bound, for pod's job to stop at or after t.
func (r *nodeLossRun) stopAfter(w *workloadRun, pod string, t, bound time.Duration) (time.Duration, bool) {
	var at time.Duration
	ok := poll(bound, func() bool {
		for _, e := range w.events() {
			if !e.Start && e.Pod == pod && e.At >= t {
				at = e.At
				return true
			}
		}
		return false
	})
	return at, ok
}

// measureThaw: after the thaw the old leader's job must stop on its own; how long it ran.
// A stop is looked for from the fault, not the thaw: nothing runs while the node is frozen, but
// the jobs' clock has 10 ms steps, so a stop right at the thaw (a lapsed renewal deadline) may
// be logged up to 10 ms before it.
func (r *nodeLossRun) measureThaw(w *workloadRun, old string, fault, thawed time.Duration, s *lossSample) {
	stop, ok := r.stopAfter(w, old, fault, fileBound)
	s.Stopped = ok
	if ok {
		s.Overlap = max(stop-thawed, 0)
	} else {
		logf("%s: the old leader %s's job still runs %s after the thaw", w.app, old, fileBound)
	}
}

// measureKubelet: with the kubelet dead, nothing tells the old leader's job it was demoted;
// only its renewal deadline, when the LeaderLock sets one, stops it. How long it ran beside the
// new one (0 when it stopped first), waited for at most the cap after the new job's start.
func (r *nodeLossRun) measureKubelet(old pod, t time.Duration, newStart jobEvent, s *lossSample) {
	if !s.Moved {
		return
	}
	left := r.overlapCap - (now() - newStart.At)
	stop, ok := r.stopAfter(r.ll.workloadRun, old.Name, t, max(left, 0))
	s.Stopped = ok
	if ok {
		s.OldStop, s.HasOldStop = stop-t, true
		s.Overlap = max(stop-newStart.At, 0)
	} else {
		s.Overlap = r.overlapCap
	}
}

// awaitBack waits until the lost node is Ready again and both workloads are steady.
// With restarted, every container of the node must have started again since then (its pods
// may still look Ready in the API from before the crash).
func (r *nodeLossRun) awaitBack(restarted bool, since time.Time) {
	waitFor("node "+r.victim.Name+" Ready again", moveBound, r.victim.ready)
	since = since.Truncate(time.Second) // the API's startedAt has whole seconds
	if restarted {
		for _, w := range []*workloadRun{r.ll.workloadRun, r.cg.workloadRun} {
			waitFor("the pods of node "+r.victim.Name+" running again", moveBound, func() bool {
				for _, p := range listPods(w.ns, w.app) {
					if p.Node == r.victim.Name && (!p.Ready || p.StartedAt.Before(since)) {
						return false
					}
				}
				return true
			})
		}
	}
	r.ll.steadyHolder()
	r.cg.steady(nil)
}

// sameNodeSuccessors counts the other pods of the lost node annotated leader after t.
func (r *nodeLossRun) sameNodeSuccessors(old string, t time.Duration) int {
	n := 0
	for _, turn := range r.ll.roles.turnsSince(t) {
		if turn.Pod != old && r.nodeOf(r.ll.workloadRun, turn.Pod) == r.victim.Name {
			logf("the lock moved to %s, another pod of the lost node %s", turn.Pod, r.victim.Name)
			n++
		}
	}
	return n
}

// handoverTo moves the LeaderLock workload's lock to a standby on node with a Handover and
// waits until that pod's job runs; returns the new holder.
func (h *leaderLockRun) handoverTo(nodeName string) pod {
	holder := h.steadyHolder()
	target := ""
	for _, p := range listPods(h.ns, h.app) {
		if p.Node == nodeName && p.Name != holder.Name && p.Ready && !p.Deleting {
			target = p.Name
			break
		}
	}
	if target == "" {
		fail("no Ready standby on node %s to hand the lock to", nodeName)
	}
	t := now()
	apply(fmt.Sprintf(`apiVersion: leaderlock.dev/v1alpha1
kind: Handover
metadata: {name: to-%s-%d, namespace: %s}
spec: {leaderLock: ledger, lock: %s, to: %s, ifHolder: %s}
`, target, t/time.Millisecond, h.ns, lockName, target, holder.Name))
	oldToken := running(h.events())[holder.Name]
	newStart, _ := h.measure(holder, t, 0)
	if newStart.Pod != target {
		fail("after the Handover to %s the job started in %s", target, newStart.Pod)
	}
	var after pod
	waitFor("the lock handed over to "+target, fileBound, func() bool {
		p, ok := h.steadyOnce(h.isSteadyHolder)
		after = p
		return ok && p.Name == target
	})
	h.settle(holder.Name, oldToken, newStart, t, now())
	return after
}

// settleSince is settle for a round whose new job may not have started (client-go after a
// kubelet crash): the window's starts are classified the same way.
func (w *workloadRun) settleSince(old string, oldToken uint64, t, end time.Duration) {
	var first jobEvent
	for _, e := range w.events() {
		if e.Start && e.At >= t && e.At < end && e.Pod != old {
			first = e
			break
		}
	}
	w.settle(old, oldToken, first, t, end)
}

// lossKinds lays out the rounds: hangs, crashes and kubelet crashes interleaved evenly.
func lossKinds(hangs, crashes, kubelets int) []string {
	return interleave([]string{lossHang, lossCrash, lossKubelet}, []int{hangs, crashes, kubelets})
}

// run runs every round.
func (r *nodeLossRun) run(kinds []string, start time.Time) {
	for i, k := range kinds {
		r.round(k)
		if (i+1)%5 == 0 || i+1 == len(kinds) {
			logf("node-loss rounds: %d of %d, %s", i+1, len(kinds), time.Since(start).Round(time.Second))
		}
	}
}

func (r *nodeLossRun) violations() int { return r.ll.violations() + r.cg.violations() }

func (r *nodeLossRun) close() {
	r.ll.close()
	r.cg.close()
}
