package main

// The idle phase: write amplification of every system while nobody joins or leaves.

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// idleResult holds the idle phase's figures, formatted as reported ("" = not measured).
type idleResult struct {
	// etcd revisions per minute of each system's own etcd in window A.
	leaderlock, trylock, mutex string
	// client-go: the apiserver etcd's rate in window B, raw and less window A's baseline.
	clientgo, clientgoRaw, apiBaseline string
	// apiserver writes per minute on the resources each system uses, and by verb and resource.
	apiWritesLeaderlock, apiWritesLeaderlockBy, apiWritesClientgo, apiWritesClientgoBy string
	// CPU seconds: the controller in window A, the apiserver in windows A and B.
	ctlCPU, apiCPUA, apiCPUB string
}

func idle(etcds map[string]*etcd, ctl *controller, apiPid int) {
	r := &idleResult{}
	res.idle = r
	n := cfg.idleLocks
	logf("idle: %d locks x 3 candidates per system, %ds idle windows", n, cfg.idleSecs)

	// LeaderLock: n LeaderLocks of one lock each, 3 ready pods each.
	ns := "bench-idle"
	k.namespace(ns)
	t := k.track(ns, false)
	must(parallel(3*n, 16, func(i int) error {
		return k.readyPod(ns, fmt.Sprintf("l-%04d-%d", i/3, i%3), fmt.Sprintf("l-%04d", i/3))
	}))
	must(parallel(n, 16, func(i int) error { return k.leaderLock(ns, fmt.Sprintf("l-%04d", i)) }))
	ctl.waitTracker(t, "every idle lock elected", 300*time.Second, func(t *tracker) bool {
		return t.annotated == 3*n && t.leaders == n && t.held == n
	})
	logf("idle: LeaderLock elected %d holders", n)

	// TryLock loop: one process per lock, 3 polling candidates each (the incident's program).
	tryCh := make(chan line, 100000)
	var tryProcs, mutexProcs []*proc
	for i := 0; i < n; i++ {
		tryProcs = append(tryProcs, start(fmt.Sprintf("trylock-%d", i), tryCh, filepath.Join(cfg.etcdBinDir, "trylock"),
			"-endpoints", etcds["trylock"].endpoint, "-prefix", fmt.Sprintf("/bench/trylock/l-%04d", i),
			"-candidates", "3", "-interval", cfg.trylockInterval))
	}
	_, err := waitLines(tryCh, n, 180*time.Second, func(l line) bool { return strings.HasPrefix(l.text, "acquired") })
	must(err)
	logf("idle: TryLock loops hold %d locks", n)

	// etcd Mutex.Lock: one process per candidate (3 per lock), waiting on watches.
	muCh := make(chan line, 100000)
	for i := 0; i < n; i++ {
		for c := 0; c < 3; c++ {
			mutexProcs = append(mutexProcs, start(fmt.Sprintf("mutex-%d-%d", i, c), muCh, filepath.Join(cfg.etcdBinDir, "mutex"),
				"-endpoints", etcds["mutex"].endpoint, "-prefix", fmt.Sprintf("/bench/mutex/l-%04d", i), "-ttl", "15"))
		}
	}
	_, err = waitLines(muCh, n, 180*time.Second, func(l line) bool { return strings.HasPrefix(l.text, "acquired") })
	must(err)
	logf("idle: Mutex peers hold %d locks", n)
	time.Sleep(3 * time.Second) // let every waiter reach its watch

	// Window A: LeaderLock, TryLock and Mutex at once (separate etcds); the apiserver etcd's
	// delta in this window is the baseline of window B (the apiserver's own lease renewals).
	systems := []string{"leaderlock", "trylock", "mutex"}
	revA := map[string]int64{}
	for _, s := range systems {
		revA[s] = mustRevision(etcds[s].endpoint)
	}
	apiRevA, mA, ctlCPU, apiCPU := mustRevision(cfg.apiserverEtcd), k.apiMetrics(), cpuSeconds(ctl.p.pid()), cpuSeconds(apiPid)
	t0 := time.Now()
	time.Sleep(time.Duration(cfg.idleSecs) * time.Second)
	dA := time.Since(t0)
	perSystem := map[string]string{}
	for _, s := range systems {
		perSystem[s] = fmt.Sprintf("%.0f", perMin(float64(mustRevision(etcds[s].endpoint)-revA[s]), dA))
	}
	r.leaderlock, r.trylock, r.mutex = perSystem["leaderlock"], perSystem["trylock"], perSystem["mutex"]
	baseline := perMin(float64(mustRevision(cfg.apiserverEtcd)-apiRevA), dA)
	llWrites, llBy := metricDelta(mA, k.apiMetrics(), true, func(res string) bool {
		return strings.HasPrefix(res, "pods") || strings.HasPrefix(res, "leaderlocks") || strings.HasPrefix(res, "events")
	})
	r.apiBaseline = fmt.Sprintf("%.0f", baseline)
	r.apiWritesLeaderlock = fmt.Sprintf("%.0f", perMin(llWrites, dA))
	r.apiWritesLeaderlockBy = fmtByKey(llBy)
	r.ctlCPU = fmt.Sprintf("%.2f", cpuSeconds(ctl.p.pid())-ctlCPU)
	r.apiCPUA = fmt.Sprintf("%.2f", cpuSeconds(apiPid)-apiCPU)
	logf("idle: window A done: leaderlock=%s trylock=%s mutex=%s revisions/min", r.leaderlock, r.trylock, r.mutex)
	for _, p := range append(tryProcs, mutexProcs...) {
		p.signal(syscall.SIGKILL)
	}

	// Window B: client-go leader election, one process per candidate identity, each running one
	// LeaderElector per Lease.
	nsG := "bench-clientgo"
	k.namespace(nsG)
	gCh := make(chan line, 100000)
	var gProcs []*proc
	for c := 0; c < 3; c++ {
		gProcs = append(gProcs, start(fmt.Sprintf("elector-idle-%d", c), gCh, cfg.electorBin,
			"-namespace", nsG, "-prefix", "idle", "-locks", strconv.Itoa(n), "-id", fmt.Sprintf("idle-%d", c)))
	}
	_, err = waitLines(gCh, n, 180*time.Second, func(l line) bool { return strings.HasPrefix(l.text, "acquired") })
	must(err)
	time.Sleep(3 * time.Second)
	apiRevB, mB, apiCPU := mustRevision(cfg.apiserverEtcd), k.apiMetrics(), cpuSeconds(apiPid)
	t0 = time.Now()
	time.Sleep(time.Duration(cfg.idleSecs) * time.Second)
	dB := time.Since(t0)
	raw := perMin(float64(mustRevision(cfg.apiserverEtcd)-apiRevB), dB)
	gWrites, gBy := metricDelta(mB, k.apiMetrics(), true, func(res string) bool { return strings.HasPrefix(res, "leases") })
	r.clientgoRaw = fmt.Sprintf("%.0f", raw)
	r.clientgo = fmt.Sprintf("%.0f", max(raw-baseline, 0))
	r.apiWritesClientgo = fmt.Sprintf("%.0f", perMin(gWrites, dB))
	r.apiWritesClientgoBy = fmtByKey(gBy)
	r.apiCPUB = fmt.Sprintf("%.2f", cpuSeconds(apiPid)-apiCPU)
	logf("idle: window B done: client-go %s revisions/min (raw %.0f, baseline %.0f)", r.clientgo, raw, baseline)
	for _, p := range gProcs {
		p.signal(syscall.SIGKILL)
	}
	drain(tryCh)
	drain(muCh)
	drain(gCh)
}
