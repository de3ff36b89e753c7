package main

import (
	"bytes"
	"io"
	"sort"
	"strings"
	"time"
)

func sortEvents(ev []jobEvent) {
	sort.SliceStable(ev, func(i, j int) bool { return ev[i].At < ev[j].At })
}

func stringReader(s string) io.Reader { return bytes.NewReader([]byte(s)) }

// faultResult is one fault and whether the lock's holder stayed put through it.
type faultResult struct {
	Name          string
	HolderChanged bool
	Took          time.Duration
}

// faults: a kubelet restart and a containerd restart on the holder's node, and the active
// controller pod's deletion, must each leave the holder and its job alone.
func (h *leaderLockRun) faults() []faultResult {
	var out []faultResult
	for _, f := range []struct {
		name string
		do   func(n *node)
	}{
		{"kubelet restart", func(n *node) { h.waitPastRestartGrace(); n.restartProc("kubelet") }},
		{"containerd restart", func(n *node) { n.restartProc("containerd") }},
		{"active controller pod deleted", func(*node) { h.deleteActiveController() }},
	} {
		holder := h.steadyHolder()
		n := nodeNamed(h.c.nodes, holder.Node)
		if n == nil {
			fail("the holder %s runs on node %q, which the harness does not know", holder.Name, holder.Node)
		}
		t := now()
		start := time.Now()
		f.do(n)
		waitFor("every node Ready after "+f.name, 120*time.Second, func() bool { return allReady(h.c.nodes) })
		// Let a full probe and sync round pass, then the holder and its job must be the same.
		time.Sleep(5 * time.Second)
		after := h.steadyHolder()
		changed := after.Name != holder.Name || h.countStarts(t, now()) != 0
		if changed {
			h.extra++
		}
		out = append(out, faultResult{Name: f.name, HolderChanged: changed, Took: time.Since(start)})
		logf("%s: holder %s -> %s", f.name, holder.Name, after.Name)
	}
	return out
}

// kubeletRestartGrace: a restarted kubelet keeps the readiness of a container that started at
// least this long before it; a younger container is NotReady until its first probe, which
// rightly demotes a holder (the kubelet's prober, feature ChangeContainerStatusOnKubeletRestart
// off by default since 1.35). The fault is about the kubelet going away, not about that.
const kubeletRestartGrace = 10 * time.Second

// waitPastRestartGrace waits until every worker container is older than kubeletRestartGrace
// (the rounds before the faults replace pods).
func (h *leaderLockRun) waitPastRestartGrace() {
	waitFor("every container older than the kubelet's restart grace", 60*time.Second, func() bool {
		for _, p := range listPods(h.ns, h.app) {
			if p.StartedAt.IsZero() || time.Since(p.StartedAt) < kubeletRestartGrace+time.Second {
				return false
			}
		}
		return true
	})
}

// deleteActiveController deletes the controller replica whose leaderlock_active is 1 and waits
// for the standby to become active.
func (h *leaderLockRun) deleteActiveController() {
	pods := controllerPods()
	active := ""
	for _, p := range pods {
		if controllerActive(p) {
			active = p
		}
	}
	if active == "" {
		fail("no active controller replica among %v", pods)
	}
	mustKubectl("delete", "pod", "-n", "leaderlock-system", active, "--wait=false")
	waitFor("the standby controller replica to become active", 60*time.Second, func() bool {
		for _, p := range controllerPods() {
			if p != active && controllerActive(p) {
				return true
			}
		}
		return false
	})
}

func controllerPods() []string {
	out, _ := kubectl("get", "pods", "-n", "leaderlock-system", "-l", "app.kubernetes.io/name=leaderlock",
		"--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}")
	return strings.Fields(out)
}

func controllerActive(pod string) bool {
	// /readyz on the probes' port says active or standby; /metrics would need a bearer token,
	// which the apiserver's pod proxy does not pass on.
	out, err := kubectl("get", "--raw", "/api/v1/namespaces/leaderlock-system/pods/"+pod+":8080/proxy/readyz")
	return err == nil && strings.TrimSpace(out) == "ok: active"
}
