package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// The A/B of the run: the LeaderLock handovers come in blocks, the controller's resync on in
// the even ones and off in the odd ones (docs/contract.md §3.1), switched with `helm upgrade`
// of the installed chart between blocks.

// block is one stretch of handovers under one resync setting.
type block struct {
	On    bool
	Kinds []string // graceful, crash, notready, in the order they run
}

// abSchedule splits each kind's count over n blocks (the remainders one each to the first
// blocks, so both halves stay within one of each other) and spreads the kinds evenly inside
// each block, so that a slow stretch of the machine weighs on both halves alike.
func abSchedule(graceful, crash, notready, n int) []block {
	out := make([]block, n)
	for i := range out {
		share := func(total int) int {
			s := total / n
			if i < total%n {
				s++
			}
			return s
		}
		out[i] = block{On: i%2 == 0, Kinds: interleave([]string{"graceful", "crash", "notready"}, []int{share(graceful), share(crash), share(notready)})}
	}
	return out
}

// interleave lays out counts[i] of names[i] in one sequence: at each step the name furthest
// behind its even share goes next (ties: the first listed).
func interleave(names []string, counts []int) []string {
	total := 0
	for _, c := range counts {
		total += c
	}
	done := make([]int, len(counts))
	out := make([]string, 0, total)
	for step := 1; step <= total; step++ {
		best, bestLag := -1, 0.0
		for i, c := range counts {
			if done[i] == c {
				continue
			}
			lag := float64(c)*float64(step)/float64(total) - float64(done[i])
			if best < 0 || lag > bestLag {
				best, bestLag = i, lag
			}
		}
		done[best]++
		out = append(out, names[best])
	}
	return out
}

const (
	chartNS      = "leaderlock-system"
	chartRelease = "leaderlock"
	chartLabel   = "app.kubernetes.io/name=leaderlock"
)

// controllerPod is what the harness reads of a controller replica.
type controllerPod struct {
	Name        string
	Deleting    bool
	Ready       bool
	ResyncAfter string // its --resync-after ("": not given)
	Args        []string
}

func controllerPodsNow() []controllerPod {
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				Containers []struct {
					Args []string `json:"args"`
				} `json:"containers"`
			} `json:"spec"`
			Status struct {
				Conditions []struct{ Type, Status string }
			} `json:"status"`
		} `json:"items"`
	}
	out, err := kubectl("get", "pods", "-n", chartNS, "-l", chartLabel, "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &list) != nil {
		return nil
	}
	var pods []controllerPod
	for _, it := range list.Items {
		p := controllerPod{Name: it.Metadata.Name, Deleting: it.Metadata.DeletionTimestamp != nil}
		for _, c := range it.Status.Conditions {
			p.Ready = p.Ready || (c.Type == "Ready" && c.Status == "True")
		}
		for _, c := range it.Spec.Containers {
			if v, ok := resyncArg(c.Args); ok {
				p.ResyncAfter = v
			}
			p.Args = append(p.Args, c.Args...)
		}
		pods = append(pods, p)
	}
	return pods
}

// resyncArg is the value of a --resync-after=V argument.
func resyncArg(args []string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--resync-after="); ok {
			return v, true
		}
	}
	return "", false
}

// controllerDeployment is the installed chart's controller Deployment: its replicas and the
// --resync-after it gives the controller (the chart's default "2s" when absent).
func controllerDeployment() (replicas int, resyncAfter string) {
	var list struct {
		Items []struct {
			Spec struct {
				Replicas *int `json:"replicas"`
				Template struct {
					Spec struct {
						Containers []struct {
							Args []string `json:"args"`
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		} `json:"items"`
	}
	out := mustKubectl("get", "deployments", "-n", chartNS, "-l", chartLabel, "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 1 {
		fail("reading the controller's Deployment (want exactly one): %v", err)
	}
	d := list.Items[0].Spec
	replicas, resyncAfter = 1, "2s"
	if d.Replicas != nil {
		replicas = *d.Replicas
	}
	for _, c := range d.Template.Spec.Containers {
		if v, ok := resyncArg(c.Args); ok {
			resyncAfter = v
		}
	}
	return replicas, resyncAfter
}

// setResync switches the controller's resync on (c.resyncOn) or off (c.resyncOff) with `helm
// upgrade` of the installed release — its own values file, one value changed — when it is not
// so already. A rollout replaces both replicas and changes no holder: the holder, its token and
// its job must be the same after it, or it counts as a violation. Returns the upgrade as a fault
// row, ok false when none was needed. Either way it returns once the pods' resync keys match the
// setting (the new active replica writes or removes them at once), so no handover counts those
// writes.
func (h *leaderLockRun) setResync(on bool) (f faultResult, ok bool) {
	want := h.c.resyncOff
	if on {
		want = h.c.resyncOn
	}
	if h.resyncAfter != want {
		holder := h.steadyHolder()
		t, start := now(), time.Now()
		logf("helm upgrade: controller.resyncAfter %s -> %s (resync %s)", h.resyncAfter, want, onOff(on))
		out, err := runOut("helm", "upgrade", chartRelease, h.c.chart, "-n", chartNS, "-f", h.c.chartValues,
			"--set-string", "controller.resyncAfter="+want, "--wait", "--timeout", "180s")
		if err != nil {
			fail("helm upgrade: %v: %s", err, out)
		}
		h.resyncAfter = want
		h.waitRollout(want)
		after := h.steadyHolder()
		moved := after.Name != holder.Name || after.Token != holder.Token || h.countStarts(t, now()) != 0
		if moved {
			h.moved++
			logf("the chart upgrade moved the lock: %s (token %s) -> %s (token %s)", holder.Name, holder.Token, after.Name, after.Token)
		}
		f, ok = faultResult{Name: fmt.Sprintf("`helm upgrade`, resync %s (`controller.resyncAfter: %q`)", onOff(on), want), HolderChanged: moved, Took: time.Since(start)}, true
	}
	waitFor("the pods' resync keys to match resync "+onOff(on), 60*time.Second, func() bool {
		for _, p := range listPods(h.ns, h.app) {
			if (on && p.Role == "leader" && p.Resync == "") || (!on && p.Resync != "") {
				return false
			}
		}
		return true
	})
	return f, ok
}

// runOut runs a command and returns its combined output.
func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// waitRollout waits until every controller replica runs with --resync-after=want, none is
// terminating, all are Ready, and exactly one is active.
func (h *leaderLockRun) waitRollout(want string) {
	replicas, _ := controllerDeployment()
	waitFor("the controller's rollout with --resync-after="+want, 180*time.Second, func() bool {
		pods := controllerPodsNow()
		if len(pods) != replicas {
			return false
		}
		active := 0
		for _, p := range pods {
			if p.Deleting || !p.Ready || p.ResyncAfter != want {
				return false
			}
			if controllerActive(p.Name) {
				active++
			}
		}
		return active == 1
	})
}
