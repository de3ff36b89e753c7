// Command e2e measures failover on a real node (make e2e): a LeaderLock workload and the same
// job under client-go leader election run as pods of one kubelet; the harness makes the holder
// go away in several ways and measures, from the jobs' own timestamps, how long no job ran
// (job gap) or two ran at once (overlap), when the new and the demoted holders' downward-API
// files changed and when the leader-only Service switched. The LeaderLock handovers run in
// blocks with the controller's resync on and off in turn (A/B, switched by `helm upgrade`), and
// the pod watch counts the resync's extra pod writes. It then checks node and controller faults
// change no holder, writes its section of BENCHMARKS.md with a CDF plot, and prints one
// `E2E ...` line.
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
	clusterDir, nodeDir          string
	nodes                        []*node
	image, busybox, electorImage string
	apiHost, apiPort             string
	graceful, kills, notready    int
	clientgoHandovers, abBlocks  int
	chart, chartValues           string
	resyncOn, resyncOff          string
	out, plot                    string
	skipFaults                   bool
	phases                       string
	// The node-loss phase: rounds of each fault, the cap on an old job nothing stops, and the
	// tuned rounds (not defaults) with their spec.nodeLostAfter.
	nodeHangs, nodeCrashes, kubeletCrashes int
	overlapCap                             time.Duration
	// renewalRounds: hang and kubelet-crash rounds each with renewDeadlineSeconds renewDeadline.
	renewalRounds, renewDeadline    int
	tunedRounds, tunedNodeLostAfter int
	setup                           string        // what hack/e2e.sh measured of the set-up
	goImage                         string        // examples/go-controller's image
	goGraceful, goKills             int           // its handovers per variant
	goIdle                          time.Duration // its idle window
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.clusterDir, "cluster-dir", os.Getenv("LEADERLOCK_CLUSTER_DIR"), "hack/cluster.sh run dir")
	flag.StringVar(&c.nodeDir, "node-dir", os.Getenv("LEADERLOCK_NODE_DIR"), "the first node's hack/node.sh dir (job logs, chart values)")
	nodeDirs := flag.String("node-dirs", os.Getenv("LEADERLOCK_NODE_DIRS"), "every node's hack/node.sh dir, space-separated (default: -node-dir)")
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
	flag.StringVar(&c.phases, "phases", "leaderlock,clientgo,go,nodeloss", "which phases to run (go: examples/go-controller, LeaderLock drop-in vs Lease; nodeloss needs two nodes)")
	flag.StringVar(&c.goImage, "go-image", "leaderlock.dev/go-controller:local", "examples/go-controller image")
	flag.IntVar(&c.goGraceful, "go-graceful", 20, "Go controller handovers by deleting the leader pod, per election")
	flag.IntVar(&c.goKills, "go-kills", 20, "Go controller handovers by killing the leader's container, per election")
	flag.DurationVar(&c.goIdle, "go-idle", time.Minute, "the Go controllers' idle window (0: none)")
	flag.IntVar(&c.nodeHangs, "node-hangs", 20, "node-loss rounds freezing the second node")
	flag.IntVar(&c.nodeCrashes, "node-crashes", 20, "node-loss rounds killing every process of the second node")
	flag.IntVar(&c.kubeletCrashes, "kubelet-crashes", 10, "node-loss rounds killing the second node's kubelet alone")
	flag.DurationVar(&c.overlapCap, "overlap-cap", 30*time.Second, "how long a kubelet crash round waits for the old job to stop")
	flag.IntVar(&c.renewalRounds, "renewal-rounds", 10, "hang and kubelet-crash rounds each with the LeaderLock's renewDeadlineSeconds set")
	flag.IntVar(&c.renewDeadline, "renew-deadline", 10, "renewDeadlineSeconds of the renewal rounds")
	flag.IntVar(&c.tunedRounds, "node-tuned", 0, "extra hang and crash rounds each with a tuned kubelet (not defaults: never the headline)")
	flag.IntVar(&c.tunedNodeLostAfter, "tuned-node-lost-after", 4, "nodeLostAfterSeconds of the tuned rounds")
	flag.StringVar(&c.setup, "setup", "", "the set-up's times, as hack/e2e.sh measured them (for the report)")
	flag.Parse()
	if c.nodeDir == "" || c.image == "" || c.apiHost == "" || c.chart == "" {
		fail("-node-dir, -image, -api-host and -chart are required (run through hack/e2e.sh)")
	}
	if *nodeDirs == "" {
		*nodeDirs = c.nodeDir
	}
	c.nodes = loadNodes(strings.Fields(*nodeDirs))
	for _, n := range c.nodes {
		n.capture()
	}
	if c.chartValues == "" {
		c.chartValues = filepath.Join(c.nodeDir, "chart-values.yaml")
	}
	if c.abBlocks < 1 || c.graceful < 0 || c.kills < 0 || c.notready < 0 || c.clientgoHandovers < 0 ||
		c.nodeHangs < 0 || c.nodeCrashes < 0 || c.kubeletCrashes < 0 || c.tunedRounds < 0 || c.renewalRounds < 0 || c.goGraceful < 0 || c.goKills < 0 {
		fail("-ab-blocks must be at least 1 and the handover and round counts not negative")
	}
	return c
}

func main() {
	c := parseFlags()
	start := time.Now()
	r := &results{kubelet: kubeletVersion(), kubeletConfig: kubeletConfig(c.nodeDir), resyncOn: c.resyncOn, blocks: c.abBlocks}
	setupCPU := setupCPUText(c)
	if hasPhase(c.phases, "leaderlock") {
		leaderLockPhase(c, r, start)
	}
	if hasPhase(c.phases, "clientgo") {
		clientGoPhase(c, r)
	}
	r.duration = time.Since(start) // the job workloads' time; the later phases report their own
	if hasPhase(c.phases, "go") {
		r.goc = runGoControllers(c)
		r.violations += r.goc.violations
	}
	if hasPhase(c.phases, "nodeloss") {
		r.loss = nodeLossPhase(c, &r.violations)
		r.loss.setup = strings.TrimSpace(c.setup + " " + setupCPU)
	}
	writeReport(c, r)
	fmt.Println(r.summary())
	if r.violations > 0 || (r.loss != nil && r.loss.sameNode() > 0) {
		os.Exit(1)
	}
}

// leaderLockPhase: the LeaderLock handovers in A/B blocks, then the faults that must change no
// holder.
func leaderLockPhase(c config, r *results, start time.Time) {
	h := newLeaderLockRun(c, "e2e-leaderlock", 3)
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

// clientGoPhase: the same job under client-go election, leader pod deleted.
func clientGoPhase(c config, r *results) {
	g := newElectorRun(c, "e2e-clientgo", 3)
	for i := 0; i < c.clientgoHandovers; i++ {
		r.add("clientgo", g.handover())
		logf("client-go handovers: %d of %d", i+1, c.clientgoHandovers)
	}
	r.violations += g.violations()
	g.close()
}

// writeReport writes the sections of BENCHMARKS.md the phases that ran measured: a run of
// later phases alone leaves the job workloads' section and plot as they are.
func writeReport(c config, r *results) {
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
	if r.loss != nil {
		writeSection(c.out, lossSectionBegin, lossSectionEnd, r.loss.markdown(r.kubelet, r.summary()))
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
