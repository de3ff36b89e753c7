package main

// The scale phase: N LeaderLocks × 3 pods from empty, measured to convergence.

import (
	"fmt"
	"strings"
	"time"
)

// scaleResult holds one scale phase's figures, formatted as reported ("" = not measured).
type scaleResult struct {
	// seconds: pods created and Ready, LeaderLocks created, first create to convergence.
	podsS, createS, convergeS              string
	etcdWritesPerLock                      string
	apiRequests, apiWrites, apiWritesBy    string
	rssPodsMB, rssNowMB, rssPerLLKB, rssMB string
	ctlCPUS, apiCPUS, apiCores             string
}

func scale(etcds map[string]*etcd, ctl *controller, apiPid int, n int) {
	ns := "bench-scale-" + label(n)
	r := &scaleResult{}
	res.scales[n] = r
	logf("scale: %d LeaderLocks x 3 pods", n)
	k.namespace(ns)
	t := k.track(ns, false)
	t0 := time.Now()
	must(parallel(3*n, 32, func(i int) error {
		return k.readyPod(ns, fmt.Sprintf("l-%05d-%d", i/3, i%3), fmt.Sprintf("l-%05d", i/3))
	}))
	r.podsS = fmt.Sprintf("%.1f", time.Since(t0).Seconds())
	time.Sleep(2 * time.Second)
	rssPods := statusKB(ctl.p.pid(), "VmRSS")
	r.rssPodsMB = fmt.Sprintf("%.1f", rssPods/1024)
	endpoint := etcds["leaderlock"].endpoint
	rev0, m0, ctlCPU, apiCPU := mustRevision(endpoint), k.apiMetrics(), cpuSeconds(ctl.p.pid()), cpuSeconds(apiPid)
	t0 = time.Now()
	must(parallel(n, 32, func(i int) error { return k.leaderLock(ns, fmt.Sprintf("l-%05d", i)) }))
	r.createS = fmt.Sprintf("%.1f", time.Since(t0).Seconds())
	// Profiled once the harness's own creates are done: the apiserver then serves the controller.
	var profile chan map[string]float64
	if n == cfg.scales[len(cfg.scales)-1] { // the largest: its window is long enough
		profile = make(chan map[string]float64, 1)
		go func() {
			shares, err := k.apiserverProfile(time.Duration(cfg.profileSecs)*time.Second, "kube-apiserver-scale-"+label(n))
			if err != nil {
				logf("scale: no kube-apiserver CPU profile: %v", err)
			}
			profile <- shares
		}()
	}
	at := ctl.waitTracker(t, "every scale lock elected and every pod annotated", 1200*time.Second, func(t *tracker) bool {
		return t.annotated == 3*n && t.leaders == n && t.held == n
	})
	conv := at.Sub(t0)
	r.convergeS = fmt.Sprintf("%.1f", conv.Seconds())
	time.Sleep(2 * time.Second) // trailing writes (events) count too
	revs := mustRevision(endpoint) - rev0
	r.etcdWritesPerLock = fmt.Sprintf("%.2f", float64(revs)/float64(n))
	m1 := k.apiMetrics()
	ours := func(res string) bool {
		return strings.HasPrefix(res, "pods") || strings.HasPrefix(res, "leaderlocks") || strings.HasPrefix(res, "events")
	}
	writes, by := metricDelta(m0, m1, true, ours)
	all, _ := metricDelta(m0, m1, false, ours)
	// The harness itself issued n POST leaderlocks; everything else on these resources is the
	// controller's (the harness's informers were already watching).
	r.apiWrites = fmt.Sprintf("%.0f", writes-float64(n))
	r.apiRequests = fmt.Sprintf("%.0f", all-float64(n))
	by["POST leaderlocks"] -= float64(n)
	r.apiWritesBy = fmtByKey(by)
	r.ctlCPUS = fmt.Sprintf("%.1f", cpuSeconds(ctl.p.pid())-ctlCPU)
	r.apiCPUS = fmt.Sprintf("%.1f", cpuSeconds(apiPid)-apiCPU)
	r.rssMB = fmt.Sprintf("%.1f", statusKB(ctl.p.pid(), "VmHWM")/1024)
	rssNow := statusKB(ctl.p.pid(), "VmRSS")
	r.rssNowMB = fmt.Sprintf("%.1f", rssNow/1024)
	r.rssPerLLKB = fmt.Sprintf("%.1f", (rssNow-rssPods)/float64(n))
	r.apiCores = fmt.Sprintf("%.2f", (cpuSeconds(apiPid)-apiCPU)/conv.Seconds())
	if profile != nil {
		apiProfile, apiProfileOf = <-profile, label(n)
	}
	logf("scale: converged in %.1fs; %s etcd writes/lock; controller peak RSS %s MB, %s CPU s; apiserver %s CPU s",
		conv.Seconds(), r.etcdWritesPerLock, r.rssMB, r.ctlCPUS, r.apiCPUS)
	scaleTracker, scaleNS = t, ns
}

// The largest scale phase's LeaderLocks, for the restart phase, and its kube-apiserver profile.
var (
	scaleTracker *tracker
	scaleNS      string
	apiProfile   map[string]float64
	apiProfileOf string
)
