package main

// The multi-cluster phase: one lock shared by two clusters through one etcd (a second
// kube-apiserver of the same control plane, a controller per cluster with its own --cluster-id
// and root, a LeaderLock in each naming the same etcdKey). It measures a handover across the
// clusters, graceful and when the holder's cluster loses its controller, and checks the pair
// writes nothing to etcd while idle. It runs before the shared controller of the other phases
// starts: that one watches every namespace of the first cluster and would serve this phase's
// LeaderLock too.

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// multiResult holds the multi-cluster phase's figures (nil/"" = not measured).
type multiResult struct {
	graceful, cutoff *stats
	ttl              int
	idleSecs         int
	idleWrites       string
}

// multiCluster is one side of the pair: its API client, kubeconfig, identity, controller and
// pods watch, and its one candidate pod.
type multiCluster struct {
	k          *kube
	kubeconfig string
	id         string
	ctl        *controller
	gen        int
	t          *tracker
	pod        string
}

const multiNS, multiLock, multiKey = "bench-multi", "mc", "/shared/mc"

func multicluster() {
	handovers, cutoffs := envInt("BENCH_MULTI_HANDOVERS", 40), envInt("BENCH_MULTI_CUTOFFS", 6)
	r := &multiResult{ttl: envInt("BENCH_MULTI_TTL", 5), idleSecs: envInt("BENCH_MULTI_IDLE_SECONDS", 30)}
	res.multi = r
	logf("multicluster: a second kube-apiserver, a controller per cluster, one shared lock (ttlSeconds %d)", r.ttl)
	script := envStr("BENCH_CLUSTER_SCRIPT", "hack/cluster.sh")
	if out, err := exec.Command(script, "second-apiserver").CombinedOutput(); err != nil {
		fatalf("%s second-apiserver: %v: %s", script, err, out)
	}
	second := filepath.Join(cfg.clusterDir, "kubeconfig-second")
	kubectl("--kubeconfig", second, "apply", "--server-side", "--force-conflicts", "-f", cfg.crd)
	kubectl("--kubeconfig", second, "wait", "--for=condition=Established", "--timeout=60s", "crd/leaderlocks.leaderlock.dev")
	e := startEtcd(cfg.etcdBinDir, "etcd-multi")
	sides := [2]*multiCluster{{k: k, kubeconfig: cfg.kubeconfig, id: "a"}, {k: newKube(second), kubeconfig: second, id: "b"}}
	for _, s := range sides {
		s.k.namespace(multiNS)
		s.t = s.k.track(multiNS, false)
		s.start(e.endpoint)
		must(s.k.sharedLeaderLock(multiNS, multiLock, multiKey, r.ttl))
	}
	pods := 0
	join := func(s *multiCluster, role string) {
		s.pod = fmt.Sprintf("%s-%d", s.id, pods)
		pods++
		must(s.k.readyPod(multiNS, s.pod, multiLock))
		s.waitRole(role, 60*time.Second)
	}
	join(sides[0], "leader")
	join(sides[1], "standby")

	rev0 := mustRevision(e.endpoint)
	time.Sleep(time.Duration(r.idleSecs) * time.Second) // the measurement window itself
	r.idleWrites = strconv.FormatInt(mustRevision(e.endpoint)-rev0, 10)
	logf("multicluster: %s etcd writes in %d s idle with both clusters running", r.idleWrites, r.idleSecs)

	// Graceful: the holder pod deleted in one cluster → the other cluster's pod leads; a new pod
	// queues where the holder was, so the next handover goes the other way.
	holder := 0
	var graceful []time.Duration
	for i := 0; i < handovers; i++ {
		from, to := sides[holder], sides[1-holder]
		t0 := time.Now()
		must(from.k.deletePod(multiNS, from.pod))
		graceful = append(graceful, to.waitRole("leader", 30*time.Second).Sub(t0))
		join(from, "standby")
		holder = 1 - holder
	}
	g := summarize(graceful)
	r.graceful = &g
	logf("multicluster graceful: n=%d p50=%.1fms p95=%.1fms p99=%.1fms", g.N, g.P50, g.P95, g.P99)

	// Cut off: the holder cluster's controller SIGKILLed; its lock lease expires in etcd and the
	// other cluster's pod leads. A new controller then reports the other cluster's holder.
	var cut []time.Duration
	for i := 0; i < cutoffs; i++ {
		from, to := sides[holder], sides[1-holder]
		t0 := time.Now()
		from.ctl.p.signal(syscall.SIGKILL)
		cut = append(cut, to.waitRole("leader", time.Duration(3*r.ttl+30)*time.Second).Sub(t0))
		<-from.ctl.p.done
		from.start(e.endpoint)
		from.waitRole("standby", 120*time.Second)
		holder = 1 - holder
	}
	c := summarize(cut)
	r.cutoff = &c
	logf("multicluster cut-off: n=%d p50=%.1fms p95=%.1fms p99=%.1fms max=%.1fms", c.N, c.P50, c.P95, c.P99, c.Max)

	// Leave nothing for the shared controller of the later phases: the LeaderLocks go while
	// their controllers still run (they remove the finalizers), then the controllers stop.
	for _, s := range sides {
		out, err := exec.Command("kubectl", "--kubeconfig", s.kubeconfig, "-n", multiNS, "delete", "leaderlock", multiLock, "--wait=true", "--timeout=60s").CombinedOutput()
		if err != nil {
			fatalf("deleting the multi-cluster LeaderLock of %s: %v: %s", s.id, err, out)
		}
	}
	for _, s := range sides {
		s.ctl.p.stop(syscall.SIGTERM, 15*time.Second)
		close(s.t.stop)
	}
}

// start runs this cluster's controller: its own identity, root and namespace, the shared prefix
// allowed; the next incarnation after a kill gets a new log.
func (s *multiCluster) start(endpoint string) {
	s.gen++
	s.ctl = startControllerAs(fmt.Sprintf("multi-%s-%d", s.id, s.gen), endpoint, s.kubeconfig,
		"--namespace", multiNS, "--cluster-id", s.id, "--etcd-prefix", "/"+s.id+"/", "--allowed-key-prefix", "/shared/")
	must(s.ctl.waitFor("active", 60*time.Second, func(c *controller) bool { return !c.activeAt.IsZero() }))
}

// waitRole waits until this cluster's pod carries role; returns when the watch showed it.
func (s *multiCluster) waitRole(role string, timeout time.Duration) time.Time {
	return s.ctl.waitTracker(s.t, fmt.Sprintf("%s/%s to be %s", s.id, s.pod, role), timeout, func(t *tracker) bool {
		return t.pods[s.pod][1] == role
	})
}
