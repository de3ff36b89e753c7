package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The Go phase (issue 26): examples/go-controller, a controller-runtime manager reconciling
// ConfigMaps, runs as two Deployments of three replicas each, side by side on the node: one
// elected through LeaderLock (leaderlock.dev/go's ResourceLock, the "drop-in", with the timing
// contract §3.7 recommends) and one through controller-runtime's own Lease election with its
// defaults (15 s / 10 s / 2 s, no release on cancel). Their handovers alternate, so a slow
// stretch of the machine weighs on both alike; an idle window with both steady counts what each
// writes to the apiserver.

// goVariant is one election of the example.
type goVariant struct {
	Name     string // "dropin" or "lease": the E2E line's go_<name>_… fields
	Election string // the example's --election
	Title    string
}

var goVariants = []goVariant{
	{Name: "dropin", Election: "leaderlock", Title: "LeaderLock (`leaderelection.ResourceLock`, 2 s / 1 s / 250 ms)"},
	{Name: "lease", Election: "lease", Title: "controller-runtime Lease (defaults: 15 s / 10 s / 2 s)"},
}

// goLock is the LeaderLock lock (drop-in) and the Lease (lease) the example elects on.
const goLock = "go-controller"

// goInputs is how many ConfigMaps the harness gives each manager to reconcile.
const goInputs = 3

// goControllerWorkload is the example's Deployment with what it needs: a ServiceAccount and Role
// (ConfigMaps to read; Events; Leases for the lease variant only), ConfigMaps to reconcile, and
// for the drop-in a LeaderLock and the downward-API volume (README, "Go controllers"). The
// readiness probe is kubebuilder's scaffold (/readyz on :8081, 5 s delay, every 10 s).
func goControllerWorkload(ns, image, election, apiHost, apiPort string, replicas int) string {
	var b strings.Builder
	leaseRule, leaderLock, mount, volume := "", "", "", ""
	if election == "lease" {
		leaseRule = `
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]`
	} else {
		leaderLock = fmt.Sprintf(`---
apiVersion: leaderlock.dev/v1alpha1
kind: LeaderLock
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  selector:
    matchLabels: {app: %[2]s}
  locks:
  - name: %[2]s
`, ns, goLock)
		mount = `
        volumeMounts:
        - {name: leaderlock, mountPath: /etc/leaderlock, readOnly: true}`
		volume = `
      volumes:
      - name: leaderlock
        downwardAPI:
          items:
          - path: annotations
            fieldRef: {fieldPath: metadata.annotations}`
	}
	fmt.Fprintf(&b, `apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: %[2]s, namespace: %[1]s}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, update]%[3]s
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: %[2]s, namespace: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: %[2]s}
subjects:
- {kind: ServiceAccount, name: %[2]s, namespace: %[1]s}
`, ns, goLock, leaseRule)
	for i := 0; i < goInputs; i++ {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: input-%d, namespace: %s}\ndata: {n: \"%d\"}\n", i, ns, i)
	}
	b.WriteString(leaderLock)
	fmt.Fprintf(&b, `---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: %[6]d
  selector:
    matchLabels: {app: %[2]s}
  template:
    metadata:
      labels: {app: %[2]s}
    spec:
      serviceAccountName: %[2]s
      containers:
      - name: worker
        image: %[3]s
        imagePullPolicy: Never
        args: [--election=%[4]s, --lock=%[2]s, --metrics-bind-address=:8080]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - {name: KUBERNETES_SERVICE_HOST, value: "%[5]s"}
        - {name: KUBERNETES_SERVICE_PORT, value: "%[7]s"}
        readinessProbe:
          httpGet: {path: /readyz, port: 8081}
          initialDelaySeconds: 5
          periodSeconds: 10%[8]s
      terminationGracePeriodSeconds: 30%[9]s
`, ns, goLock, image, election, apiHost, replicas, apiPort, mount, volume)
	return b.String()
}

// goSample is one measured handover of the example. Times are from the processes' own log
// lines (wall clock), the kill's from the harness.
type goSample struct {
	// Gap: the old manager stopped leading (its "stopped leading" line; for a crash, the kill)
	// → the new leader's first reconcile; 0 when the new one started first.
	Gap time.Duration
	// Overlap: how long two managers were leading at once during the handover.
	Overlap time.Duration
	// FromFault: the delete or the kill → the new leader's first reconcile.
	FromFault time.Duration
	// StopUnseen: the deleted leader's "stopped leading" line was not seen (its pod's log was
	// gone first); Gap then counts from the delete.
	StopUnseen bool
}

// goRun is one variant's namespace, Deployment and log tail.
type goRun struct {
	c       config
	v       goVariant
	ns      string
	tail    *logTail
	stop    chan struct{}
	lastTok int64
	// badToken: a drop-in term whose fencing token did not grow; extra: a process that started
	// leading during a handover besides the new leader.
	badToken, extra int
}

const goReplicas = 3

func newGoRun(c config, v goVariant) *goRun {
	ns := "e2e-go-" + v.Name
	mustKubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s")
	mustKubectl("create", "namespace", ns)
	g := &goRun{c: c, v: v, ns: ns, tail: newLogTail(), stop: make(chan struct{})}
	for _, n := range c.nodes {
		go g.tail.follow(filepath.Join(n.Dir, "pod-logs"), ns, g.stop)
	}
	apply(goControllerWorkload(ns, c.goImage, v.Election, c.apiHost, c.apiPort, goReplicas))
	return g
}

// holder is the pod leading now and its process.
type holder struct {
	Pod  pod
	Proc proc
}

// steady waits until all replicas are Ready, none terminating, exactly one process leads (its
// "leading" line read) and it is the newest process of a live pod (for the drop-in: annotated
// leader).
func (g *goRun) steady() holder {
	var h holder
	waitFor("a steady "+g.ns+" (all Ready, one manager leading)", 180*time.Second, func() bool {
		pods := listPods(g.ns, goLock)
		if len(pods) != goReplicas {
			return false
		}
		for _, p := range pods {
			if !p.Ready || p.Deleting {
				return false
			}
		}
		procs := g.tail.snapshot()
		act := active(procs)
		if len(act) != 1 || act[0].Leading.IsZero() {
			return false
		}
		for _, p := range pods {
			if p.Name == act[0].Pod && currentKey(procs, p.Name) == act[0].Key {
				if g.v.Name == "dropin" && goRole(g.ns, p.Name) != "leader" {
					return false
				}
				h = holder{Pod: p, Proc: act[0]}
				return true
			}
		}
		return false
	})
	return h
}

// goRole is pod's leaderlock.dev/go-controller annotation.
func goRole(ns, pod string) string {
	out, _ := kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.metadata.annotations.leaderlock\\.dev/"+goLock+"}")
	return strings.TrimSpace(out)
}

// goBound is how long a handover may take: a Lease expires after 15 s, and a new pod's
// readiness probe starts after 5 s.
const goBound = 90 * time.Second

// handover deletes ("graceful") or kills ("crash") the leader and measures the new leader's
// first reconcile.
func (g *goRun) handover(kind string) goSample {
	old := g.steady()
	t := time.Now()
	switch kind {
	case "graceful":
		mustKubectl("delete", "pod", "-n", g.ns, old.Pod.Name, "--wait=false")
	case "crash":
		n := nodeNamed(g.c.nodes, old.Pod.Node)
		if n == nil {
			fail("pod %s runs on node %q, which the harness does not know", old.Pod.Name, old.Pod.Node)
		}
		out, err := exec.Command("ctr", "-a", n.Socket, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", old.Pod.ContainerID).CombinedOutput()
		if err != nil {
			fail("ctr tasks kill %s: %v: %s", old.Pod.ContainerID, err, out)
		}
		g.tail.endAt(old.Proc.Key, t)
	}
	var next proc
	waitFor(g.ns+": a new leader's first reconcile", goBound, func() bool {
		for _, p := range g.tail.snapshot() {
			if p.Key != old.Proc.Key && !p.FirstReconcile.Before(t) && !p.start().Before(t) {
				next = p
				return true
			}
		}
		return false
	})
	// Its first reconcile may come before its "leading" line, which carries the token.
	if !poll(10*time.Second, func() bool { return !g.procByKey(next.Key).Leading.IsZero() }) {
		logf("%s: %s reconciled but logged no \"leading\" line", g.ns, next.Key)
	}
	next = g.procByKey(next.Key)
	var s goSample
	oldStop := t
	if kind == "graceful" {
		if !poll(30*time.Second, func() bool { return !g.procByKey(old.Proc.Key).Stopped.IsZero() }) {
			s.StopUnseen = true
			g.tail.endAt(old.Proc.Key, t) // its term ended unseen: count it as ended at the delete
			logf("%s: %s's \"stopped leading\" line was not seen; its gap counts from the delete", g.ns, old.Proc.Key)
		} else {
			oldStop = g.procByKey(old.Proc.Key).Stopped
		}
	}
	s.FromFault = next.FirstReconcile.Sub(t)
	s.Gap = max(0, next.FirstReconcile.Sub(oldStop))
	g.checkToken(next)
	if kind == "crash" && next.Pod != old.Pod.Name {
		// As in the LeaderLock rounds: a pod killed again would wait out the kubelet's
		// CrashLoopBackOff; replace it.
		mustKubectl("delete", "pod", "-n", g.ns, old.Pod.Name, "--wait=false")
	}
	g.steady()
	procs := g.tail.snapshot()
	end := time.Now()
	s.Overlap = overlapWithin(procs, t.Add(-time.Second), end)
	for _, p := range procs {
		if p.Key != next.Key && p.Key != old.Proc.Key && !p.start().IsZero() && !p.start().Before(t) {
			g.extra++
			logf("%s: %s started leading during the handover %s -> %s", g.ns, p.Key, old.Proc.Key, next.Key)
		}
	}
	return s
}

func (g *goRun) procByKey(key string) proc {
	for _, p := range g.tail.snapshot() {
		if p.Key == key {
			return p
		}
	}
	return proc{}
}

// checkToken: under LeaderLock every term's fencing token is larger than the one before.
func (g *goRun) checkToken(p proc) {
	if g.v.Name != "dropin" {
		return
	}
	tok, err := strconv.ParseInt(p.Token, 10, 64)
	if err != nil || tok <= g.lastTok {
		g.badToken++
		logf("%s: %s leads with token %q after token %d", g.ns, p.Key, p.Token, g.lastTok)
	}
	if err == nil {
		g.lastTok = tok
	}
}

// violations: for the drop-in, a token that did not grow or a third manager leading; the Lease
// election promises neither, so its counts are reported only.
func (g *goRun) violations() int {
	if g.v.Name != "dropin" {
		return 0
	}
	return g.badToken + g.extra
}

func (g *goRun) close() {
	close(g.stop)
	_, _ = kubectl("delete", "namespace", g.ns, "--wait=false")
}

// runGoControllers runs the Go phase: both variants up, the idle window, then the handovers
// alternating between them.
func runGoControllers(c config) *goResults {
	start := time.Now()
	r := newGoResults(c.goIdle)
	runs := map[string]*goRun{}
	for _, v := range goVariants {
		runs[v.Name] = newGoRun(c, v)
	}
	for _, v := range goVariants {
		g := runs[v.Name]
		h := g.steady()
		g.checkToken(h.Proc)
	}
	if c.goIdle > 0 {
		r.idle = measureIdle(runs, c.goIdle)
	}
	var names []string
	var counts []int
	for _, v := range goVariants {
		names = append(names, v.Name+"/graceful", v.Name+"/crash")
		counts = append(counts, c.goGraceful, c.goKills)
	}
	order := interleave(names, counts)
	for i, key := range order {
		variant, kind, _ := strings.Cut(key, "/")
		r.samples[key] = append(r.samples[key], runs[variant].handover(kind))
		if (i+1)%10 == 0 || i+1 == len(order) {
			logf("go-controller handovers: %d of %d, %s", i+1, len(order), time.Since(start).Round(time.Second))
		}
	}
	for _, v := range goVariants {
		g := runs[v.Name]
		r.violations += g.violations()
		r.extra[v.Name], r.badToken[v.Name] = g.extra, g.badToken
		g.close()
	}
	r.duration = time.Since(start)
	return r
}

// hasPhase tells whether the comma-separated phases name phase.
func hasPhase(phases, phase string) bool {
	for _, p := range strings.Split(phases, ",") {
		if strings.TrimSpace(p) == phase {
			return true
		}
	}
	return false
}
