package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
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

// faults: a kubelet restart, a containerd restart and the active controller pod's deletion
// must each leave the holder and its job alone.
func (h *leaderLockRun) faults() []faultResult {
	var out []faultResult
	for _, f := range []struct {
		name string
		do   func()
	}{
		{"kubelet restart", func() { h.waitPastRestartGrace(); h.restart("kubelet", "") }},
		{"containerd restart", func() { h.restart("containerd", h.runtimeCgroup()) }},
		{"active controller pod deleted", h.deleteActiveController},
	} {
		holder := h.steadyHolder()
		t := now()
		start := time.Now()
		f.do()
		waitFor("the node Ready after "+f.name, 120*time.Second, func() bool {
			out, err := kubectl("get", "node", "-o", "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status}")
			return err == nil && strings.TrimSpace(out) == "True"
		})
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

// runtimeCgroup is where hack/node.sh starts containerd, so its shims stay findable.
func (h *leaderLockRun) runtimeCgroup() string {
	slot, err := os.ReadFile(filepath.Join(h.c.nodeDir, "slot"))
	if err != nil {
		fail("read node slot: %v", err)
	}
	return "/sys/fs/cgroup/pids/leaderlock-" + strings.TrimSpace(string(slot)) + "/runtime"
}

// restart stops the process recorded in the cluster dir's NAME.pid and starts it again with
// the same command line, parent-death signal and log, recording the new pid for the teardown.
func (h *leaderLockRun) restart(name, cgroup string) {
	pidFile := filepath.Join(h.c.clusterDir, name+".pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		fail("read %s: %v", pidFile, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	argv := readCmdline(pid)
	if len(argv) == 0 {
		fail("no command line for %s (pid %d)", name, pid)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	waitFor(name+" to exit", 30*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
	logFile, err := os.OpenFile(filepath.Join(h.c.clusterDir, name+".log"), os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fail("%v", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fail("restart %s: %v", name, err)
	}
	if cgroup != "" {
		if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			fail("move %s into %s: %v", name, cgroup, err)
		}
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		fail("%v", err)
	}
	go func() { _ = cmd.Wait() }()
}

// readCmdline is a process's argv, from /proc.
func readCmdline(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
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
