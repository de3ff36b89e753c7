package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// nodeLossPhase runs the node-loss rounds (nodeloss.go): the default ones, then those with
// the LeaderLock's opt-in renewal deadline, then, only when asked, those with a tuned kubelet;
// it adds the checker's violations to *violations.
func nodeLossPhase(c config, violations *int) *lossResults {
	start := time.Now()
	r := newNodeLossRun(c, c.overlapCap)
	cpu0 := nodeCPUNow(c.nodes)
	kinds := lossKinds(c.nodeHangs, c.nodeCrashes, c.kubeletCrashes)
	r.run(kinds, start)
	res := &lossResults{rounds: len(kinds), overlapCap: c.overlapCap, victim: r.victim.Name, keep: r.keep.Name,
		nodeLostAfter: controllerNodeLostAfter()}
	if c.renewalRounds > 0 {
		r.patchLeaderLock(settingRenewal, fmt.Sprintf(`{"spec":{"renewDeadlineSeconds":%d}}`, c.renewDeadline))
		rounds := lossKinds(c.renewalRounds, 0, c.renewalRounds)
		r.run(rounds, start)
		r.patchLeaderLock("", `{"spec":{"renewDeadlineSeconds":null}}`)
		res.rounds += len(rounds)
		res.renewDeadline = c.renewDeadline
	}
	if c.tunedRounds > 0 {
		r.tune(c.tunedNodeLostAfter)
		rounds := lossKinds(c.tunedRounds, c.tunedRounds, 0)
		r.run(rounds, start)
		r.untune()
		res.rounds += len(rounds)
		res.tunedLostAfter = c.tunedNodeLostAfter
	}
	res.duration = time.Since(start)
	res.samples = r.samples
	res.cpu = nodeCPUSince(c.nodes, cpu0, res.duration)
	*violations += r.violations()
	r.close()
	return res
}

// patchLeaderLock merge-patches the workload's LeaderLock and names the rounds' setting.
func (r *nodeLossRun) patchLeaderLock(setting, patch string) {
	mustKubectl("patch", "leaderlock", "ledger", "-n", r.ll.ns, "--type", "merge", "-p", patch)
	r.setting = setting
	logf("LeaderLock patched: %s", patch)
}

// tunedLeaseSeconds is the tuned kubelet's nodeLeaseDurationSeconds: it renews its Lease every
// quarter of it, 2.5 s, instead of the default 10 s (of 40 s).
const tunedLeaseSeconds = 10

// tune restarts every node's kubelet renewing its Lease every 2.5 s and gives the LeaderLock
// nodeLostAfterSeconds: what a faster heartbeat buys, never a published default. Every node:
// a threshold below some kubelet's renewal interval suspects that node between two ordinary
// renewals (docs/contract.md §3.2), as a trial run with the first node at its defaults showed.
func (r *nodeLossRun) tune(nodeLostAfter int) {
	for _, n := range r.c.nodes {
		k := n.procs["kubelet"]
		i := argIndex(k.argv, "--config")
		data, err := os.ReadFile(k.argv[i])
		if err != nil {
			fail("read the kubelet's config: %v", err)
		}
		tuned := filepath.Join(n.Dir, "kubelet-tuned.yaml")
		if err := os.WriteFile(tuned, append(data, []byte(fmt.Sprintf("nodeLeaseDurationSeconds: %d\n", tunedLeaseSeconds))...), 0o644); err != nil {
			fail("%v", err)
		}
		n.defaultConfig, k.argv[i] = k.argv[i], tuned
		setKubelet(n, tunedLeaseSeconds)
	}
	logf("tuned: every kubelet renews its Lease every %.1f s", float64(tunedLeaseSeconds)/4)
	r.patchLeaderLock(settingTuned, fmt.Sprintf(`{"spec":{"nodeLostAfterSeconds":%d}}`, nodeLostAfter))
}

// untune puts the default kubelets and the LeaderLock's default back.
func (r *nodeLossRun) untune() {
	r.patchLeaderLock("", `{"spec":{"nodeLostAfterSeconds":null}}`)
	for _, n := range r.c.nodes {
		k := n.procs["kubelet"]
		k.argv[argIndex(k.argv, "--config")] = n.defaultConfig
		setKubelet(n, 40)
	}
}

// setKubelet restarts n's kubelet and waits until its Lease has the duration wanted.
func setKubelet(n *node, leaseSeconds int) {
	n.restartProc("kubelet")
	waitFor(fmt.Sprintf("node %s's Lease with leaseDurationSeconds %d", n.Name, leaseSeconds), moveBound, func() bool {
		out, err := kubectl("get", "lease", "-n", "kube-node-lease", n.Name, "-o", "jsonpath={.spec.leaseDurationSeconds}")
		return err == nil && strings.TrimSpace(out) == strconv.Itoa(leaseSeconds) && n.ready()
	})
}

// argIndex is the index of the value of flag in argv ("--flag value" or "--flag=value" is not
// used by hack/node.sh: the value is the next word).
func argIndex(argv []string, flag string) int {
	for i, a := range argv[:len(argv)-1] {
		if a == flag {
			return i + 1
		}
	}
	fail("%s not in %v", flag, argv)
	return 0
}

// controllerNodeLostAfter describes the controller's node-Lease setting as deployed, for the
// report: absent from the CRD when this build has none.
func controllerNodeLostAfter() string {
	crd, err := kubectl("get", "crd", "leaderlocks.leaderlock.dev", "-o", "json")
	if err != nil || !strings.Contains(crd, "nodeLostAfter") {
		return "absent (this build has none: failover waits for the node-lifecycle controller)"
	}
	var args []string
	for _, p := range controllerPodsNow() {
		args = p.Args
	}
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--node-lost-after="); ok {
			return "`--node-lost-after=" + v + "`"
		}
	}
	return "at its default (15 s)"
}

// nodeCPUNow is each node's CPU time so far.
func nodeCPUNow(nodes []*node) []time.Duration {
	var out []time.Duration
	for _, n := range nodes {
		out = append(out, n.cpu())
	}
	return out
}

// nodeCPUSince is each node's CPU time since before (nodeCPUNow), over a stretch of d.
func nodeCPUSince(nodes []*node, before []time.Duration, d time.Duration) []nodeCPU {
	var out []nodeCPU
	for i, n := range nodes {
		out = append(out, nodeCPU{Name: n.Name, Used: n.cpu() - before[i], Any: d})
	}
	return out
}

// setupCPUText says how much CPU the set-up took by the time the harness starts: the control
// plane's servers (from their pid files) and each node (its cgroup root: kubelet, containerd,
// the chart's pods).
func setupCPUText(c config) string {
	var cp time.Duration
	files, _ := filepath.Glob(filepath.Join(c.clusterDir, "*.pid"))
	for _, f := range files {
		if pid, err := strconv.Atoi(readTrim(f)); err == nil {
			cp += processCPU(pid)
		}
	}
	parts := []string{fmt.Sprintf("control plane %.1f s", cp.Seconds())}
	for _, n := range c.nodes {
		parts = append(parts, fmt.Sprintf("node %s %.1f s", n.Name, n.cpu().Seconds()))
	}
	return "CPU used when the harness started: " + strings.Join(parts, ", ") + "."
}

// processCPU is a process's user and system time (the kernel's 100 Hz ticks), its reaped
// children's included.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime (fields 14–17)
		v, _ := strconv.ParseInt(fields[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
