// Command e2e measures failover on a real node (make e2e): a LeaderLock workload and the same
// job under client-go leader election run as pods of one kubelet; the harness makes the holder
// go away in several ways and measures, from the jobs' own timestamps, how long no job ran
// (job gap) or two ran at once (overlap), when the new holder's downward-API file changed and
// when the leader-only Service switched. It then checks node and controller faults change no
// holder, writes its section of BENCHMARKS.md with a CDF plot, and prints one `E2E ...` line.
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

// waitFor polls f every 20 ms until it returns true, failing the run after d.
func waitFor(what string, d time.Duration, f func() bool) {
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			fail("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type config struct {
	clusterDir, nodeDir, containerd string
	image, busybox, electorImage    string
	apiHost, apiPort                string
	handovers, clientgoHandovers    int
	out, plot                       string
	skipFaults                      bool
	phases                          string
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
	flag.IntVar(&c.handovers, "handovers", 20, "handovers of each kind (graceful, crash, notready)")
	flag.IntVar(&c.clientgoHandovers, "clientgo-handovers", 20, "graceful handovers under client-go election")
	flag.StringVar(&c.out, "out", "", "BENCHMARKS.md to update (empty: print only)")
	flag.StringVar(&c.plot, "plot", "", "PNG file for the job-gap CDF")
	flag.BoolVar(&c.skipFaults, "skip-faults", false, "skip the kubelet/containerd/controller faults")
	flag.StringVar(&c.phases, "phases", "leaderlock,clientgo", "which workloads to measure")
	flag.Parse()
	if c.nodeDir == "" || c.containerd == "" || c.image == "" || c.apiHost == "" {
		fail("-node-dir, -containerd, -image and -api-host are required (run through hack/e2e.sh)")
	}
	start := time.Now()
	r := &results{kubelet: kubeletVersion(), syncFreq: kubeletSyncFrequency(c.nodeDir)}

	if strings.Contains(c.phases, "leaderlock") {
		h := newLeaderLockRun(c)
		for i := 0; i < c.handovers; i++ {
			r.add("graceful", h.handover("graceful"))
			r.add("crash", h.handover("crash"))
			r.add("notready", h.handover("notready"))
			logf("leaderlock handovers: %d of %d rounds", i+1, c.handovers)
		}
		if !c.skipFaults {
			r.faults = h.faults()
		}
		r.violations += h.violations()
		r.restarts = h.restarts
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

	r.duration = time.Since(start)
	if c.plot != "" {
		if err := r.plotCDF(c.plot); err != nil {
			fail("plot: %v", err)
		}
	}
	section := r.markdown(filepath.Base(c.plot))
	if c.out != "" {
		if err := replaceSection(c.out, section); err != nil {
			fail("write %s: %v", c.out, err)
		}
	} else {
		fmt.Fprintln(os.Stderr, section)
	}
	fmt.Println(r.summary())
	if r.violations > 0 {
		os.Exit(1)
	}
}

func kubeletVersion() string {
	out := mustKubectl("get", "node", "-o", "jsonpath={.items[0].status.nodeInfo.kubeletVersion}")
	return strings.TrimSpace(out)
}

// kubeletSyncFrequency is the node's `syncFrequency`, read from the kubelet's config file
// (hack/node.sh writes it; the apiserver does not proxy to a node on loopback).
func kubeletSyncFrequency(nodeDir string) string {
	data, err := os.ReadFile(filepath.Join(nodeDir, "kubelet.yaml"))
	if err != nil {
		fail("reading the kubelet's config: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syncFrequency:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "1m (the default)"
}
