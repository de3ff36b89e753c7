package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// sample is one measured handover; durations are relative to the old job's stop (for a crash,
// the moment the container was killed).
type sample struct {
	Gap, Overlap, File, Slice, Annotation time.Duration
	HasFile, HasSlice, HasAnnotation      bool
	// OldAnnotation, OldFile: the demoted holder's annotation and downward-API file stopped
	// saying leader (a deleted pod's file is often gone before it changes: then unseen).
	OldAnnotation, OldFile       time.Duration
	HasOldAnnotation, HasOldFile bool
	// FromFault: the fault (delete, kill, probe made to fail) → the new job's start.
	FromFault time.Duration
	// ResyncWrites: pod updates during the handover whose only change of ours was the
	// controller's resync key; ResyncMissing: a pod whose leadership changed got no resync
	// within the harness's bound (resync on only).
	ResyncWrites  int
	ResyncMissing bool
	// Restarted: the old holder's job started again with its old token (a container kill).
	Restarted bool
}

// workloadRun is one workload's namespace, job log and safety bookkeeping.
type workloadRun struct {
	c        config
	ns, app  string
	joblog   string
	replicas int
	killed   []jobEvent // containers the harness killed: their job stopped then, unlogged
	lastTok  uint64
	badToken int
	extra    int // job starts in another pod than the new holder: no handover caused them
	// restarts: the old holder's job started again in the same pod with its old token (a
	// crashed container restarted before the controller's demotion reached its file).
	restarts int
	stop     chan struct{}
}

func (w *workloadRun) events() []jobEvent {
	ev := append(readJobLog(w.joblog), w.killed...)
	sortEvents(ev)
	return ev
}

// steady waits until every replica is Ready and exactly one job runs; returns its pod.
func (w *workloadRun) steady(extraCheck func(holder pod) bool) pod {
	var holder pod
	waitFor("a steady "+w.app+" (all Ready, one job)", 180*time.Second, func() bool {
		p, ok := w.steadyOnce(extraCheck)
		holder = p
		return ok
	})
	return holder
}

// steadyOnce: every replica is Ready and exactly one job runs, in the pod returned, which
// passes extraCheck.
func (w *workloadRun) steadyOnce(extraCheck func(holder pod) bool) (pod, bool) {
	pods := listPods(w.ns, w.app)
	if len(pods) != w.replicas {
		return pod{}, false
	}
	for _, p := range pods {
		if !p.Ready || p.Deleting {
			return pod{}, false
		}
	}
	run := running(w.events())
	if len(run) != 1 {
		return pod{}, false
	}
	for _, p := range pods {
		if _, ok := run[p.Name]; ok {
			return p, extraCheck == nil || extraCheck(p)
		}
	}
	return pod{}, false
}

// fileBound is how long the harness waits for anything that follows a downward-API file: with
// the kubelet's default syncFrequency (1 min) a change it lost arrives at the pod's next periodic
// sync, up to 90 s later, and the half of the run with the resync off must still complete.
const fileBound = 150 * time.Second

// measure waits for a job start in another pod than old after t, and the old job's stop.
func (w *workloadRun) measure(old pod, t time.Duration, oldStopAt time.Duration) (newStart, oldStop jobEvent) {
	waitFor("a new job to start", fileBound, func() bool {
		for _, e := range w.events() {
			if e.Start && e.Pod != old.Name && e.At >= t {
				newStart = e
				return true
			}
		}
		return false
	})
	if oldStopAt > 0 {
		return newStart, jobEvent{Pod: old.Name, At: oldStopAt}
	}
	waitFor("the old job to stop", fileBound, func() bool {
		for _, e := range w.events() {
			if !e.Start && e.Pod == old.Name && e.At >= t {
				oldStop = e
				return true
			}
		}
		return false
	})
	w.noteToken(newStart)
	return newStart, oldStop
}

// noteToken checks that a new LeaderLock job's fencing token grew (client-go has none).
func (w *workloadRun) noteToken(newStart jobEvent) {
	if newStart.Token <= w.lastTok && w.app == "ledger-worker" {
		w.badToken++
		logf("fencing token did not grow: %d after %d (%s)", newStart.Token, w.lastTok, newStart.Pod)
	}
	w.lastTok = newStart.Token
}

// settle classifies the job events of one handover window [from, to): every start but the new
// holder's is either the old holder restarting with its old token or a violation; overlap is
// the total time at least two jobs ran, replaying the window from "old job running".
func (w *workloadRun) settle(old string, oldToken uint64, newStart jobEvent, from, to time.Duration) (overlap time.Duration) {
	run := map[string]bool{old: true}
	last := from
	for _, e := range w.events() {
		if e.At < from || e.At >= to {
			continue
		}
		if len(run) >= 2 {
			overlap += e.At - last
		}
		last = e.At
		if !e.Start {
			delete(run, e.Pod)
			continue
		}
		run[e.Pod] = true
		switch {
		case e == newStart:
		case e.Pod == old && e.Token == oldToken:
			w.restarts++
		default:
			w.extra++
			logf("job start without a handover: %+v", e)
		}
	}
	return overlap
}

// countStarts is the number of job starts in [from, to).
func (w *workloadRun) countStarts(from, to time.Duration) int {
	n := 0
	for _, e := range w.events() {
		if e.Start && e.At >= from && e.At < to {
			n++
		}
	}
	return n
}

func newWorkloadRun(c config, ns, app string, replicas int) *workloadRun {
	w := &workloadRun{c: c, ns: ns, app: app, replicas: replicas, joblog: filepath.Join(c.nodeDir, "joblog", ns), stop: make(chan struct{})}
	// A namespace and job log left by an earlier run on a kept cluster would mix into this one.
	mustKubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s")
	_ = os.RemoveAll(w.joblog)
	if err := os.MkdirAll(w.joblog, 0o755); err != nil {
		fail("%v", err)
	}
	mustKubectl("create", "namespace", ns)
	waitFor("the namespace's default ServiceAccount", 60*time.Second, func() bool {
		_, err := kubectl("get", "sa", "default", "-n", ns)
		return err == nil
	})
	return w
}

func apply(manifest string) {
	cmd := exec.Command("kubectl", "apply", "-f", "-")
	cmd.Stdin = stringReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		fail("kubectl apply: %v: %s", err, out)
	}
}

// leaderLockRun is the LeaderLock workload with its watchers.
type leaderLockRun struct {
	*workloadRun
	roles  *roleWatch
	slices *sliceWatch
	// resyncAfter: the chart's controller.resyncAfter the controller runs with now.
	resyncAfter string
	// moved: chart upgrades across which the holder or its job changed (violations).
	moved int
}

func newLeaderLockRun(c config, ns string, replicas int) *leaderLockRun {
	w := newWorkloadRun(c, ns, "ledger-worker", replicas)
	apply(leaderlockWorkload(w.ns, c.image, c.busybox, w.joblog, w.replicas))
	h := &leaderLockRun{workloadRun: w, roles: newRoleWatch(w.ns, c.nodes), slices: newSliceWatch(w.ns, "ledger-leader", w.stop)}
	_, h.resyncAfter = controllerDeployment()
	h.steadyHolder()
	return h
}

// steadyHolder: one job, and the Service holds its pod only.
func (h *leaderLockRun) steadyHolder() pod {
	return h.steady(h.isSteadyHolder)
}

func (h *leaderLockRun) isSteadyHolder(p pod) bool {
	return p.Role == "leader" && h.slices.current() == p.IP
}

// handover makes the holder go away in one of three ways and measures it; resync says whether
// the controller runs with its resync (the harness only reads it: setResync switches).
func (h *leaderLockRun) handover(kind string, resync bool) sample {
	old := h.steadyHolder()
	oldToken := running(h.events())[old.Name]
	restarts := h.restarts
	t := now()
	var killedAt time.Duration
	switch kind {
	case "graceful":
		mustKubectl("delete", "pod", "-n", h.ns, old.Name, "--wait=false")
	case "crash":
		killedAt = now()
		n := nodeNamed(h.c.nodes, old.Node)
		if n == nil {
			fail("pod %s runs on node %q, which the harness does not know", old.Name, old.Node)
		}
		out, err := exec.Command("ctr", "-a", n.Socket, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", old.ContainerID).CombinedOutput()
		if err != nil {
			fail("ctr tasks kill %s: %v: %s", old.ContainerID, err, out)
		}
		h.killed = append(h.killed, jobEvent{Pod: old.Name, At: killedAt})
	case "notready":
		mustKubectl("exec", "-n", h.ns, old.Name, "-c", "worker", "--", "touch", "/tmp/unready")
	}
	newStart, oldStop := h.measure(old, t, killedAt)
	s := sample{Gap: newStart.At - oldStop.At, FromFault: newStart.At - t}
	if oldStop.At > newStart.At {
		s.Overlap, s.Gap = oldStop.At-newStart.At, 0
	}
	if ft, ok := h.roles.fileTurnedLeader(newStart.Pod, t); ok {
		s.File, s.HasFile = ft-oldStop.At, true
	}
	if at, ok := h.roles.annotationTurnedLeader(newStart.Pod, t); ok {
		s.Annotation, s.HasAnnotation = at-oldStop.At, true
	}
	var newIP string
	for _, p := range listPods(h.ns, h.app) {
		if p.Name == newStart.Pod {
			newIP = p.IP
		}
	}
	poll(30*time.Second, func() bool {
		st, ok := h.slices.switchedTo(newIP, t)
		if ok {
			s.Slice, s.HasSlice = st-oldStop.At, true
		}
		return ok
	})
	switch kind {
	case "notready":
		mustKubectl("exec", "-n", h.ns, old.Name, "-c", "worker", "--", "rm", "/tmp/unready")
	case "crash":
		// The demoted holder's file is what stops a job its restarted container may have
		// started again: wait for it (bounded) so that the overlap and the file's lag are
		// measured, not cut short by the pod's deletion.
		h.waitFileLeft(old.Name, t)
		// The kubelet restarts a killed container with a back-off that doubles on every kill
		// (10 s … 5 min): replace the pod so the next rounds do not wait on CrashLoopBackOff.
		mustKubectl("delete", "pod", "-n", h.ns, old.Name, "--wait=false")
	}
	h.steadyHolder()
	if resync {
		s.ResyncMissing = !h.waitResynced(t, old.Name, newStart.Pod)
	}
	end := now()
	if o := h.settle(old.Name, oldToken, newStart, t, end); o > s.Overlap {
		s.Overlap = o
	}
	if at, ok := h.roles.annotationLeftLeader(old.Name, t); ok {
		s.OldAnnotation, s.HasOldAnnotation = at-oldStop.At, true
	}
	if ft, ok := h.roles.fileLeftLeader(old.Name, t); ok {
		s.OldFile, s.HasOldFile = ft-oldStop.At, true
	}
	s.ResyncWrites = h.roles.resyncWrites(t, end)
	s.Restarted = h.restarts > restarts
	h.reportSlow(kind, resync, old.Name, newStart.Pod, t, s)
	return s
}

// waitFileLeft waits, at most fileBound, for pod's file to stop saying leader after t.
func (h *leaderLockRun) waitFileLeft(pod string, t time.Duration) {
	left := poll(fileBound, func() bool {
		_, ok := h.roles.fileLeftLeader(pod, t)
		return ok
	})
	if !left {
		logf("the demoted holder %s's file still says leader %s after the fault", pod, fileBound)
	}
}

// resyncBound is how long past the resync delay the harness waits for a resync to show.
const resyncBound = 30 * time.Second

// waitResynced waits until every pod whose leadership changed since t has had its resync (or
// is gone), so that a handover's resync writes are counted with it and never land in the next
// one; false when one did not show within the resync delay plus resyncBound.
func (h *leaderLockRun) waitResynced(t time.Duration, pods ...string) bool {
	delay, err := time.ParseDuration(h.resyncAfter)
	if err != nil {
		delay = 0
	}
	done := poll(delay+resyncBound, func() bool {
		for _, p := range pods {
			if !h.roles.resynced(p, t) {
				return false
			}
		}
		return true
	})
	if !done {
		logf("no resync seen within %s for one of %v", delay+resyncBound, pods)
	}
	return done
}

// lateLimit separates the kubelet's normal projection (its sync waits for the next 1 s runtime
// relist, then two 100 ms volume-manager loops) from a lost remount.
const lateLimit = 2 * time.Second

// reportSlow names, with the wall-clock time of the fault, a handover where a file lagged its
// annotation by over 2 s or the jobs overlapped by over 2 s, so the kubelet's log can be read
// around it.
func (h *leaderLockRun) reportSlow(kind string, resync bool, old, new string, fault time.Duration, s sample) {
	newLag, newOK := newFileLag(s)
	oldLag, oldOK := oldFileLag(s)
	if (newOK && newLag > lateLimit) || (oldOK && oldLag > lateLimit) || s.Overlap > lateLimit {
		at := time.Now().Add(-(now() - fault)).UTC().Format("15:04:05.000")
		logf("slow %s handover, resync %s (fault at %s): %s -> %s, new holder's file %v after its annotation, demoted holder's %v, overlap %v",
			kind, onOff(resync), at, old, new, lagText(newLag, newOK), lagText(oldLag, oldOK), s.Overlap)
	}
}

func lagText(d time.Duration, ok bool) string {
	if !ok {
		return "unseen"
	}
	return d.String()
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func (h *leaderLockRun) violations() int {
	h.roles.mu.Lock()
	defer h.roles.mu.Unlock()
	n := h.roles.twoLeaders + h.badToken + h.extra + h.moved
	if n > 0 {
		logf("violations: two leaders %d, token not grown %d, job starts without a handover %d, holder changed across a chart upgrade %d",
			h.roles.twoLeaders, h.badToken, h.extra, h.moved)
	}
	return n
}

func (h *leaderLockRun) close() {
	close(h.roles.stop)
	close(h.stop)
	_, _ = kubectl("delete", "namespace", h.ns, "--wait=false")
}

// electorRun is the same job under client-go leader election.
type electorRun struct{ *workloadRun }

func newElectorRun(c config, ns string, replicas int) *electorRun {
	w := newWorkloadRun(c, ns, "elector-worker", replicas)
	apply(electorWorkload(w.ns, c.electorImage, w.joblog, c.apiHost, c.apiPort, w.replicas))
	g := &electorRun{w}
	g.steady(nil)
	return g
}

func (g *electorRun) handover() sample {
	old := g.steady(nil)
	oldToken := running(g.events())[old.Name]
	t := now()
	mustKubectl("delete", "pod", "-n", g.ns, old.Name, "--wait=false")
	newStart, oldStop := g.measure(old, t, 0)
	s := sample{Gap: newStart.At - oldStop.At, FromFault: newStart.At - t}
	if oldStop.At > newStart.At {
		s.Overlap, s.Gap = oldStop.At-newStart.At, 0
	}
	g.steady(nil)
	if o := g.settle(old.Name, oldToken, newStart, t, now()); o > s.Overlap {
		s.Overlap = o
	}
	return s
}

func (g *electorRun) violations() int { return g.extra }

func (g *electorRun) close() {
	close(g.stop)
	_, _ = kubectl("delete", "namespace", g.ns, "--wait=false")
}
