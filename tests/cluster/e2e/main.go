// Command e2e measures failover on a real node (make e2e): a LeaderLock workload and the same
// job under client-go leader election run as pods of one kubelet; the harness makes the holder
// go away in several ways and measures, from the jobs' own timestamps, how long no job ran
// (job gap) or two ran at once (overlap), when the new and the demoted holders' downward-API
// files changed and when the leader-only Service switched. The LeaderLock handovers run in
// blocks with the controller's resync on and off in turn (A/B, switched by `helm upgrade`), and
// the pod watch counts the resync's extra pod writes. It then checks node and controller faults
// change no holder, writes its section of BENCHMARKS.md with a CDF plot, and prints one
// `E2E ...` line. The go phase (gocontroller.go) then runs examples/go-controller elected through
// LeaderLock and through controller-runtime's Lease side by side, in a section of its own.
//
// It expects the chart installed and the images imported (hack/e2e.sh does both).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const lockName = "ledger-writer"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

// poll checks f every 20 ms until it returns true (then true) or d has passed (false).
func poll(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// waitFor polls f every 20 ms until it returns true, failing the run after d.
func waitFor(what string, d time.Duration, f func() bool) {
	if !poll(d, f) {
		fail("timed out after %s waiting for %s", d, what)
	}
}

type config struct {
	clusterDir, nodeDir, containerd string
	image, busybox, electorImage    string
	apiHost, apiPort                string
	graceful, kills, notready       int
	clientgoHandovers, abBlocks     int
	chart, chartValues              string
	resyncOn, resyncOff             string
	out, plot                       string
	skipFaults                      bool
	phases                          string
	goImage                         string        // examples/go-controller's image
	goGraceful, goKills             int           // its handovers per variant
	goIdle                          time.Duration // its idle window
}

func main() {
	var c config
	flag.StringVar(&c.clusterDir, "cluster-dir", os.Getenv("LEADERLOCK_CLUSTER_DIR"), "hack/cluster.sh run dir")
	flag.StringVar(&c.nodeDir, "node-dir", os.Getenv("LEADERLOCK_NODE_DIR"), "hack/node.sh dir")
	flag.StringVar(&c.containerd, "containerd", os.Getenv("CONTAINERD_ADDRESS"), "containerd socket")
	flag.StringVar(&c.image, "image", "", "leaderlock image")
	flag.StringVar(&c.busybox, "busybox", "leaderlock.dev/busybox:local", "workload image")
	flag.StringVar(&c.electorImage, "elector-image", "leaderlock.dev/elector:local", "client-go elector image")
	flag.StringVar(&c.apiHost, "api-host", os.Getenv("LEADERLOCK_POD_APISERVER_HOST"), "apiserver address for pods")
	flag.StringVar(&c.apiPort, "api-port", os.Getenv("LEADERLOCK_POD_APISERVER_PORT"), "apiserver port for pods")
	flag.IntVar(&c.graceful, "graceful", 200, "LeaderLock handovers by deleting the leader pod")
	flag.IntVar(&c.kills, "kills", 40, "LeaderLock handovers by killing the leader's container")
	flag.IntVar(&c.notready, "notready", 40, "LeaderLock handovers by failing the leader's readiness probe")
	flag.IntVar(&c.abBlocks, "ab-blocks", 4, "blocks the LeaderLock handovers are split into, resync on and off in turn (on first)")
	flag.IntVar(&c.clientgoHandovers, "clientgo-handovers", 40, "graceful handovers under client-go election")
	flag.StringVar(&c.chart, "chart", "", "the installed chart's directory, for helm upgrade")
	flag.StringVar(&c.chartValues, "chart-values", "", "the values file the chart was installed with (default: NODE_DIR/chart-values.yaml)")
	flag.StringVar(&c.resyncOn, "resync-on", "2s", "controller.resyncAfter for the resync-on blocks")
	flag.StringVar(&c.resyncOff, "resync-off", "0", "controller.resyncAfter for the resync-off blocks")
	flag.StringVar(&c.out, "out", "", "BENCHMARKS.md to update (empty: print only)")
	flag.StringVar(&c.plot, "plot", "", "PNG file for the job-gap CDF")
	flag.BoolVar(&c.skipFaults, "skip-faults", false, "skip the kubelet/containerd/controller faults")
	flag.StringVar(&c.phases, "phases", "leaderlock,clientgo,go", "which workloads to measure (go: examples/go-controller, LeaderLock drop-in vs Lease)")
	flag.StringVar(&c.goImage, "go-image", "leaderlock.dev/go-controller:local", "examples/go-controller image")
	flag.IntVar(&c.goGraceful, "go-graceful", 20, "Go controller handovers by deleting the leader pod, per election")
	flag.IntVar(&c.goKills, "go-kills", 20, "Go controller handovers by killing the leader's container, per election")
	flag.DurationVar(&c.goIdle, "go-idle", time.Minute, "the Go controllers' idle window (0: none)")
	flag.Parse()
	if c.nodeDir == "" || c.containerd == "" || c.image == "" || c.apiHost == "" || c.chart == "" {
		fail("-node-dir, -containerd, -image, -api-host and -chart are required (run through hack/e2e.sh)")
	}
	if c.chartValues == "" {
		c.chartValues = filepath.Join(c.nodeDir, "chart-values.yaml")
	}
	if c.abBlocks < 1 || c.graceful < 0 || c.kills < 0 || c.notready < 0 || c.clientgoHandovers < 0 || c.goGraceful < 0 || c.goKills < 0 {
		fail("-ab-blocks must be at least 1 and the handover counts not negative")
	}
	start := time.Now()
	r := &results{kubelet: kubeletVersion(), kubeletConfig: kubeletConfig(c.nodeDir), resyncOn: c.resyncOn, blocks: c.abBlocks}

	if strings.Contains(c.phases, "leaderlock") {
		h := newLeaderLockRun(c)
		blocks := abSchedule(c.graceful, c.kills, c.notready, c.abBlocks)
		total, done := c.graceful+c.kills+c.notready, 0
		for i, b := range blocks {
			if f, ok := h.setResync(b.On); ok {
				r.faults = append(r.faults, f)
			}
			for _, kind := range b.Kinds {
				r.add(rowKey(kind, b.On), h.handover(kind, b.On))
				done++
				if done%10 == 0 || done == total {
					logf("leaderlock handovers: %d of %d (block %d of %d, resync %s), %s", done, total, i+1, len(blocks), onOff(b.On), time.Since(start).Round(time.Second))
				}
			}
		}
		if !c.skipFaults {
			// The faults run with the chart as installed: resync on.
			if f, ok := h.setResync(true); ok {
				r.faults = append(r.faults, f)
			}
			r.faults = append(r.faults, h.faults()...)
		}
		r.resyncWritesOutside = h.roles.resyncWrites(0, now()) - r.resyncWritesInHandovers()
		r.violations += h.violations()
		h.close()
	}
	if strings.Contains(c.phases, "clientgo") {
		g := newElectorRun(c)
		for i := 0; i < c.clientgoHandovers; i++ {
			r.add("clientgo", g.handover())
			logf("client-go handovers: %d of %d", i+1, c.clientgoHandovers)
		}
		r.violations += g.violations()
		g.close()
	}

	r.duration = time.Since(start) // the job workloads' time; the Go phase reports its own
	if hasPhase(c.phases, "go") {
		r.goc = runGoControllers(c)
		r.violations += r.goc.violations
	}

	// A run of the Go phase alone leaves the job workloads' section and plot as they are.
	if r.handovers() > 0 {
		if c.plot != "" {
			if err := r.plotCDF(c.plot); err != nil {
				fail("plot: %v", err)
			}
		}
		writeSection(c.out, sectionBegin, sectionEnd, r.markdown(filepath.Base(c.plot)))
	}
	if r.goc != nil {
		writeSection(c.out, goSectionBegin, goSectionEnd, r.goc.markdown())
	}
	fmt.Println(r.summary())
	if r.violations > 0 {
		os.Exit(1)
	}
}

// writeSection puts section between its markers in out, or prints it when out is empty.
func writeSection(out, begin, end, section string) {
	if out == "" {
		fmt.Fprintln(os.Stderr, section)
		return
	}
	if err := replaceMarked(out, begin, end, section); err != nil {
		fail("write %s: %v", out, err)
	}
}

func kubeletVersion() string {
	out := mustKubectl("get", "node", "-o", "jsonpath={.items[0].status.nodeInfo.kubeletVersion}")
	return strings.TrimSpace(out)
}

// kubeletConfig says how the node's kubelet differs from the kubelet's defaults in what bounds
// a lost downward-API update: "default", or "syncFrequency=V" when its config file sets one
// (hack/node.sh writes it; the apiserver does not proxy to a node on loopback).
func kubeletConfig(nodeDir string) string {
	data, err := os.ReadFile(filepath.Join(nodeDir, "kubelet.yaml"))
	if err != nil {
		fail("reading the kubelet's config: %v", err)
	}
	return kubeletConfigOf(string(data))
}

func kubeletConfigOf(yaml string) string {
	for _, line := range strings.Split(yaml, "\n") {
		if v, ok := strings.CutPrefix(line, "syncFrequency:"); ok {
			return "syncFrequency=" + strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return "default"
}
