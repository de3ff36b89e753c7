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
	// FromFault: the fault (delete, kill, probe made to fail) → the new job's start.
	FromFault time.Duration
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
		pods := listPods(w.ns, w.app)
		if len(pods) != w.replicas {
			return false
		}
		for _, p := range pods {
			if !p.Ready || p.Deleting {
				return false
			}
		}
		run := running(w.events())
		if len(run) != 1 {
			return false
		}
		for _, p := range pods {
			if _, ok := run[p.Name]; ok {
				holder = p
				return extraCheck == nil || extraCheck(p)
			}
		}
		return false
	})
	return holder
}

// newStart waits for a job start in another pod than old after t, and the old job's stop.
func (w *workloadRun) measure(old pod, t time.Duration, oldStopAt time.Duration) (newStart, oldStop jobEvent) {
	waitFor("a new job to start", 90*time.Second, func() bool {
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
	waitFor("the old job to stop", 90*time.Second, func() bool {
		for _, e := range w.events() {
			if !e.Start && e.Pod == old.Name && e.At >= t {
				oldStop = e
				return true
			}
		}
		return false
	})
	if newStart.Token <= w.lastTok && w.app == "ledger-worker" {
		w.badToken++
	}
	w.lastTok = newStart.Token
	return newStart, oldStop
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
}

func newLeaderLockRun(c config) *leaderLockRun {
	w := newWorkloadRun(c, "e2e-leaderlock", "ledger-worker", 3)
	apply(leaderlockWorkload(w.ns, c.image, c.busybox, w.joblog, w.replicas))
	h := &leaderLockRun{workloadRun: w, roles: newRoleWatch(w.ns, c.nodeDir), slices: newSliceWatch(w.ns, "ledger-leader", w.stop)}
	h.steadyHolder()
	return h
}

// steadyHolder: one job, and the Service holds its pod only.
func (h *leaderLockRun) steadyHolder() pod {
	return h.steady(func(p pod) bool { return p.Role == "leader" && h.slices.current() == p.IP })
}

func (h *leaderLockRun) handover(kind string) sample {
	old := h.steadyHolder()
	oldToken := running(h.events())[old.Name]
	t := now()
	var killedAt time.Duration
	switch kind {
	case "graceful":
		mustKubectl("delete", "pod", "-n", h.ns, old.Name, "--wait=false")
	case "crash":
		killedAt = now()
		out, err := exec.Command("ctr", "-a", h.c.containerd, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", old.ContainerID).CombinedOutput()
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
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st, ok := h.slices.switchedTo(newIP, t); ok {
			s.Slice, s.HasSlice = st-oldStop.At, true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	switch kind {
	case "notready":
		mustKubectl("exec", "-n", h.ns, old.Name, "-c", "worker", "--", "rm", "/tmp/unready")
	case "crash":
		// The kubelet restarts a killed container with a back-off that doubles on every kill
		// (10 s … 5 min): replace the pod so the next rounds do not wait on CrashLoopBackOff.
		mustKubectl("delete", "pod", "-n", h.ns, old.Name, "--wait=false")
	}
	h.steadyHolder()
	if o := h.settle(old.Name, oldToken, newStart, t, now()); o > s.Overlap {
		s.Overlap = o
	}
	h.reportSlow(kind, old.Name, newStart.Pod, t, s)
	return s
}

// reportSlow names, with the wall-clock time of the fault, a handover whose file lagged its
// annotation or whose jobs overlapped by over 2 s, so the kubelet's log can be read around it.
func (h *leaderLockRun) reportSlow(kind, old, new string, fault time.Duration, s sample) {
	lag := s.File - s.Annotation
	if (s.HasFile && s.HasAnnotation && lag > 2*time.Second) || s.Overlap > 2*time.Second {
		at := time.Now().Add(-(now() - fault)).UTC().Format("15:04:05.000")
		logf("slow %s handover (fault at %s): %s -> %s, file %v after annotation, overlap %v", kind, at, old, new, lag, s.Overlap)
	}
}

func (h *leaderLockRun) violations() int {
	h.roles.mu.Lock()
	defer h.roles.mu.Unlock()
	if n := h.roles.twoLeaders + h.badToken + h.extra; n > 0 {
		logf("violations: two leaders %d, token not grown %d, job starts without a handover %d", h.roles.twoLeaders, h.badToken, h.extra)
	}
	return h.roles.twoLeaders + h.badToken + h.extra
}

func (h *leaderLockRun) close() {
	close(h.roles.stop)
	close(h.stop)
	_, _ = kubectl("delete", "namespace", h.ns, "--wait=false")
}

// electorRun is the same job under client-go leader election.
type electorRun struct{ *workloadRun }

func newElectorRun(c config) *electorRun {
	w := newWorkloadRun(c, "e2e-clientgo", "elector-worker", 3)
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
