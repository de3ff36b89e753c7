// Command compare is the side-by-side benchmark of `make bench`: LeaderLock (controller +
// candidate pods, the harness playing the kubelet), the TryLock polling loop, etcd's
// concurrency.Mutex (watch-based waiting) and client-go leader election on Leases, on the same
// loopback control plane in the same run. Each etcd-based system gets its own etcd started here,
// so revision counts never mix; client-go writes through the apiserver into its etcd
// (APISERVER_ETCD_ENDPOINTS).
//
// Phases, in priority order: idle write amplification, failover latency, scale (1k and 10k),
// controller restart. It prints a table, writes BENCHMARKS.md (-out) and ends stdout with one
// machine-readable "BENCH ..." line. Run it through hack/bench.sh.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type config struct {
	idleLocks, idleSecs, handovers, slowHandovers     int
	lanes                                             int
	scales                                            []int
	profileSecs                                       int
	trylockInterval                                   string
	controllerBin, electorBin, etcdBinDir, kubeconfig string
	apiserverEtcd, clusterDir, crd, out               string
}

var (
	cfg     config
	k       *kube
	results = map[string]string{} // figures for the BENCH line and the report
	notes   []string
)

func main() {
	flag.StringVar(&cfg.out, "out", "BENCHMARKS.md", "where to write the report")
	flag.StringVar(&cfg.crd, "crd", "crds/leaderlock.dev_leaderlocks.yaml", "CRD manifest")
	flag.StringVar(&cfg.controllerBin, "controller", "target/release/leaderlock", "leaderlock binary")
	flag.StringVar(&cfg.electorBin, "elector", "", "client-go elector peer binary")
	flag.Parse()
	cfg.idleLocks = envInt("BENCH_IDLE_LOCKS", 100)
	cfg.idleSecs = envInt("BENCH_IDLE_SECONDS", 60)
	cfg.handovers = envInt("BENCH_HANDOVERS", 50)
	cfg.slowHandovers = envInt("BENCH_SLOW_HANDOVERS", 50)
	cfg.lanes = max(1, envInt("BENCH_LANES", 10))
	for _, f := range strings.Split(envStr("BENCH_SCALE", "1000,10000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fatalf("BENCH_SCALE: %q is not a positive number of LeaderLocks", f)
		}
		cfg.scales = append(cfg.scales, n)
	}
	cfg.trylockInterval = envStr("BENCH_TRYLOCK_INTERVAL", "1s")
	cfg.profileSecs = envInt("BENCH_APISERVER_PROFILE_SECONDS", 30)
	cfg.etcdBinDir = mustEnv("LEADERLOCK_ETCD_BIN_DIR")
	cfg.kubeconfig = mustEnv("KUBECONFIG")
	cfg.apiserverEtcd = mustEnv("APISERVER_ETCD_ENDPOINTS")
	cfg.clusterDir = mustEnv("LEADERLOCK_CLUSTER_DIR")
	phases := envStr("BENCH_PHASES", "idle,failover,scale,restart")

	var err error
	logDir, err = os.MkdirTemp("", "leaderlock-bench-")
	must(err)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		killAll()
		os.Exit(130)
	}()
	defer killAll()
	logf("logs and etcd data in %s", logDir)

	k = newKube(cfg.kubeconfig)
	kubectl("apply", "--server-side", "--force-conflicts", "-f", cfg.crd)
	kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/leaderlocks.leaderlock.dev")

	etcds := map[string]*etcd{}
	for _, s := range []string{"leaderlock", "trylock", "mutex"} {
		etcds[s] = startEtcd(cfg.etcdBinDir, "etcd-"+s)
	}
	ctl := startController(cfg.controllerBin, etcds["leaderlock"].endpoint, 1)
	must(ctl.waitFor("active", 60*time.Second, func(c *controller) bool { return !c.activeAt.IsZero() }))
	apiPid := readPid(filepath.Join(cfg.clusterDir, "kube-apiserver.pid"))
	results["apiserver_pid"] = strconv.Itoa(apiPid)
	startedAt := time.Now()

	if strings.Contains(phases, "idle") {
		idle(etcds, ctl, apiPid)
		report(false)
	}
	if strings.Contains(phases, "failover") {
		failover(etcds)
		report(false)
	}
	if strings.Contains(phases, "scale") {
		for _, n := range cfg.scales {
			scale(etcds, ctl, apiPid, n)
			report(false)
		}
	}
	if strings.Contains(phases, "restart") {
		restart(etcds, ctl)
	}
	results["total_s"] = fmt.Sprintf("%.0f", time.Since(startedAt).Seconds())
	report(true)
	if broken := brokenPromises(results); len(broken) > 0 {
		fatalf("LeaderLock broke what it promises (the report above has the figures): %s", strings.Join(broken, "; "))
	}
	killAll()
	// Etcd data and logs run to hundreds of MB; a failed run keeps them (fatalf) to be read.
	if os.Getenv("BENCH_KEEP_LOGS") == "" {
		_ = os.RemoveAll(logDir)
	} else {
		logf("logs and etcd data kept in %s", logDir)
	}
}

func kubectl(args ...string) string {
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	if err != nil {
		fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	must(err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(err)
	return pid
}

func perMin(delta float64, d time.Duration) float64 { return delta * 60 / d.Seconds() }

// ---------------------------------------------------------------------------------------------
// 1. Idle write amplification

func idle(etcds map[string]*etcd, ctl *controller, apiPid int) {
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
	for _, s := range systems {
		results["idle_"+s] = fmt.Sprintf("%.0f", perMin(float64(mustRevision(etcds[s].endpoint)-revA[s]), dA))
	}
	baseline := perMin(float64(mustRevision(cfg.apiserverEtcd)-apiRevA), dA)
	llWrites, llBy := metricDelta(mA, k.apiMetrics(), true, func(res string) bool {
		return strings.HasPrefix(res, "pods") || strings.HasPrefix(res, "leaderlocks") || strings.HasPrefix(res, "events")
	})
	results["idle_api_baseline"] = fmt.Sprintf("%.0f", baseline)
	results["idle_api_writes_leaderlock"] = fmt.Sprintf("%.0f", perMin(llWrites, dA))
	results["idle_api_writes_leaderlock_by"] = fmtByKey(llBy)
	results["idle_ctl_cpu"] = fmt.Sprintf("%.2f", cpuSeconds(ctl.p.pid())-ctlCPU)
	results["idle_api_cpu_a"] = fmt.Sprintf("%.2f", cpuSeconds(apiPid)-apiCPU)
	logf("idle: window A done: leaderlock=%s trylock=%s mutex=%s revisions/min", results["idle_leaderlock"], results["idle_trylock"], results["idle_mutex"])
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
	results["idle_clientgo_raw"] = fmt.Sprintf("%.0f", raw)
	results["idle_clientgo"] = fmt.Sprintf("%.0f", max(raw-baseline, 0))
	results["idle_api_writes_clientgo"] = fmt.Sprintf("%.0f", perMin(gWrites, dB))
	results["idle_api_writes_clientgo_by"] = fmtByKey(gBy)
	results["idle_api_cpu_b"] = fmt.Sprintf("%.2f", cpuSeconds(apiPid)-apiCPU)
	logf("idle: window B done: client-go %s revisions/min (raw %.0f, baseline %.0f)", results["idle_clientgo"], raw, baseline)
	for _, p := range gProcs {
		p.signal(syscall.SIGKILL)
	}
	drain(tryCh)
	drain(muCh)
	drain(gCh)
}

// ---------------------------------------------------------------------------------------------
// 2. Failover latency

func failover(etcds map[string]*etcd) {
	h, slow := cfg.handovers, cfg.slowHandovers
	logf("failover: %d graceful and crash handovers (%d where a 15 s expiry bounds them; timer-bound rows in %d lanes)",
		h, slow, cfg.lanes)
	record := func(name string, d []time.Duration) {
		s := summarize(d)
		results["fo_"+name] = fmt.Sprintf("%d|%.1f|%.1f|%.1f|%.1f", s.N, s.P50, s.P95, s.P99, s.Max)
		results["fo_"+name+"_p99"] = fmt.Sprintf("%.1f", s.P99)
		logf("failover %s: n=%d p50=%.1fms p95=%.1fms p99=%.1fms max=%.1fms", name, s.N, s.P50, s.P95, s.P99, s.Max)
	}
	graceful, crash := leaderLockFailover(h)
	record("leaderlock_graceful", graceful)
	record("leaderlock_crash", crash)
	mutex := etcds["mutex"].endpoint
	k.namespace("bench-clientgo") // the idle phase makes it too; BENCH_PHASES may skip that
	record("mutex_graceful", mutexFailover(mutex, "/bench/mutex/fo-graceful", false, h))
	// Rows bounded by a timer (a RetryPeriod tick or a 15 s expiry) run in independent lanes side by
	// side, each its own Lease or Mutex prefix with its own three peers; run one after another, 50
	// expiry-bound handovers would take ~15 minutes per row.
	record("clientgo_release", inLanes(h, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-release-"+lane, true, false, n)
	}))
	record("clientgo_norelease", inLanes(slow, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-norelease-"+lane, false, false, n)
	}))
	record("clientgo_crash", inLanes(slow, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-crash-"+lane, false, true, n)
	}))
	record("mutex_crash", inLanes(slow, func(lane string, n int) []time.Duration {
		return mutexFailover(mutex, "/bench/mutex/fo-crash-"+lane, true, n)
	}))
}

// inLanes splits h handovers over cfg.lanes concurrent runs of f (lane names l0, l1, ...) and
// returns all their latencies.
func inLanes(h int, f func(lane string, n int) []time.Duration) []time.Duration {
	lanes := min(cfg.lanes, h)
	var (
		mu  sync.Mutex
		all []time.Duration
	)
	must(parallel(lanes, lanes, func(i int) error {
		n := h / lanes
		if i < h%lanes {
			n++
		}
		d := f(fmt.Sprintf("l%d", i), n)
		mu.Lock()
		all = append(all, d...)
		mu.Unlock()
		return nil
	}))
	return all
}

// leaderLockFailover: graceful = delete the holder pod; crash = the holder pod turns NotReady
// (what the kubelet reports when its container dies). Latency: the cause's API call is issued →
// the pods watch shows `leaderlock.dev/fo: leader` on another pod.
func leaderLockFailover(h int) (graceful, crash []time.Duration) {
	ns, lock := "bench-failover", "fo"
	k.namespace(ns)
	t := k.track(ns, false)
	next := 0
	newPod := func() {
		must(k.readyPod(ns, fmt.Sprintf("fo-%d", next), lock))
		next++
	}
	for i := 0; i < 3; i++ {
		newPod()
	}
	must(k.leaderLock(ns, lock))
	settled := func() string {
		_, err := t.wait("3 settled candidates", 60*time.Second, func(t *tracker) bool { return t.settled(lock, 3) })
		must(err)
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.leaderOf(lock)
	}
	newLeader := func(old string) time.Time {
		at, err := t.wait("a new leader", 30*time.Second, func(t *tracker) bool {
			l := t.leaderOf(lock)
			return l != "" && l != old
		})
		must(err)
		return at
	}
	for i := 0; i < h; i++ {
		old := settled()
		t0 := time.Now()
		must(k.deletePod(ns, old))
		graceful = append(graceful, newLeader(old).Sub(t0))
		newPod()
	}
	for i := 0; i < h; i++ {
		old := settled()
		t0 := time.Now()
		must(k.setReady(ns, old, false))
		crash = append(crash, newLeader(old).Sub(t0))
		must(k.setReady(ns, old, true))
	}
	settled()
	return graceful, crash
}

// clientgoFailover: three elector processes on one Lease. graceful = SIGTERM to the holder
// (its context is cancelled; with release it gives the Lease up); crash = SIGKILL. Latency:
// signal sent → the Leases watch shows another holderIdentity.
func clientgoFailover(prefix string, release, crash bool, h int) []time.Duration {
	ns, lease := "bench-clientgo", prefix+"-0"
	t := k.track(ns, true)
	defer close(t.stop)
	ch := make(chan line, 10000)
	peers := map[string]*proc{}
	gen := 0
	startOne := func(id string) {
		gen++
		p := start(fmt.Sprintf("elector-%s-%s-%d", prefix, id, gen), ch, cfg.electorBin, "-namespace", ns, "-prefix", prefix,
			"-locks", "1", "-id", id, "-release-on-cancel="+strconv.FormatBool(release))
		peers[id] = p
		_, err := waitLines(ch, 1, 60*time.Second, func(l line) bool { return l.p == p && l.text == "ready" })
		must(err)
	}
	for i := 0; i < 3; i++ {
		startOne(fmt.Sprintf("g-%d", i))
	}
	time.Sleep(2500 * time.Millisecond)
	var out []time.Duration
	for i := 0; i < h; i++ {
		_, err := t.wait("a Lease holder", 60*time.Second, func(t *tracker) bool { return peers[t.leases[lease]] != nil })
		must(err)
		t.mu.Lock()
		old := t.leases[lease]
		t.mu.Unlock()
		p := peers[old]
		t0 := time.Now()
		if crash {
			p.signal(syscall.SIGKILL)
		} else {
			p.signal(syscall.SIGTERM)
		}
		at, err := t.wait("a new Lease holder", 60*time.Second, func(t *tracker) bool {
			return t.leases[lease] != "" && t.leases[lease] != old
		})
		must(err)
		out = append(out, at.Sub(t0))
		p.stop(syscall.SIGKILL, 15*time.Second)
		startOne(old)
		// A just-started elector tries at once; give it its first try and let every follower
		// settle into its RetryPeriod rhythm, so the next handover waits like a steady follower.
		time.Sleep(2500 * time.Millisecond)
		drain(ch)
	}
	for _, p := range peers {
		p.signal(syscall.SIGKILL)
	}
	return out
}

// mutexFailover: three `mutex` peers (concurrency.Mutex.Lock, session TTL 15 s) on one prefix.
// graceful = SIGTERM (the peer Unlocks); crash = SIGKILL (its session lease must expire).
// Latency: signal sent → the next peer prints "acquired".
func mutexFailover(endpoint, prefix string, crash bool, h int) []time.Duration {
	ch := make(chan line, 10000)
	var holder *proc
	var acquiredAt time.Time
	waiting := map[*proc]bool{}
	until := func(what string, timeout time.Duration, cond func() bool) {
		deadline := time.After(timeout)
		for !cond() {
			select {
			case l := <-ch:
				if strings.HasPrefix(l.text, "acquired") {
					holder, acquiredAt = l.p, l.at
				}
				if strings.HasPrefix(l.text, "waiting") {
					waiting[l.p] = true
				}
			case <-deadline:
				fatalf("mutex failover: timed out after %s waiting for %s", timeout, what)
			}
		}
	}
	var peers []*proc
	startOne := func() {
		p := start(fmt.Sprintf("mutex-fo-%s-%d", filepath.Base(prefix), len(peers)+1), ch, filepath.Join(cfg.etcdBinDir, "mutex"),
			"-endpoints", endpoint, "-prefix", prefix, "-ttl", "15")
		peers = append(peers, p)
		until("a mutex peer to queue", 30*time.Second, func() bool { return waiting[p] })
	}
	for i := 0; i < 3; i++ {
		startOne()
	}
	until("a holder", 30*time.Second, func() bool { return holder != nil })
	var out []time.Duration
	for i := 0; i < h; i++ {
		old := holder
		t0 := time.Now()
		if crash {
			old.signal(syscall.SIGKILL)
		} else {
			old.signal(syscall.SIGTERM)
		}
		until("the next holder", 60*time.Second, func() bool { return holder != old })
		out = append(out, acquiredAt.Sub(t0))
		old.stop(syscall.SIGKILL, 10*time.Second)
		startOne()
	}
	for _, p := range peers {
		p.signal(syscall.SIGKILL)
	}
	return out
}

// ---------------------------------------------------------------------------------------------
// 3. Scale: N LeaderLocks x 3 pods from empty

func scale(etcds map[string]*etcd, ctl *controller, apiPid int, n int) {
	ns := "bench-scale-" + label(n)
	key := func(k string) string { return "scale_" + label(n) + "_" + k }
	logf("scale: %d LeaderLocks x 3 pods", n)
	k.namespace(ns)
	t := k.track(ns, false)
	t0 := time.Now()
	must(parallel(3*n, 32, func(i int) error {
		return k.readyPod(ns, fmt.Sprintf("l-%05d-%d", i/3, i%3), fmt.Sprintf("l-%05d", i/3))
	}))
	results[key("pods_s")] = fmt.Sprintf("%.1f", time.Since(t0).Seconds())
	time.Sleep(2 * time.Second)
	rssPods := statusKB(ctl.p.pid(), "VmRSS")
	results[key("rss_pods_mb")] = fmt.Sprintf("%.1f", rssPods/1024)
	endpoint := etcds["leaderlock"].endpoint
	rev0, m0, ctlCPU, apiCPU := mustRevision(endpoint), k.apiMetrics(), cpuSeconds(ctl.p.pid()), cpuSeconds(apiPid)
	t0 = time.Now()
	must(parallel(n, 32, func(i int) error { return k.leaderLock(ns, fmt.Sprintf("l-%05d", i)) }))
	results[key("create_s")] = fmt.Sprintf("%.1f", time.Since(t0).Seconds())
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
	results[key("converge_s")] = fmt.Sprintf("%.1f", conv.Seconds())
	time.Sleep(2 * time.Second) // trailing writes (events) count too
	revs := mustRevision(endpoint) - rev0
	results[key("etcd_writes_per_lock")] = fmt.Sprintf("%.2f", float64(revs)/float64(n))
	m1 := k.apiMetrics()
	ours := func(res string) bool {
		return strings.HasPrefix(res, "pods") || strings.HasPrefix(res, "leaderlocks") || strings.HasPrefix(res, "events")
	}
	writes, by := metricDelta(m0, m1, true, ours)
	all, _ := metricDelta(m0, m1, false, ours)
	// The harness itself issued n POST leaderlocks; everything else on these resources is the
	// controller's (the harness's informers were already watching).
	results[key("api_writes")] = fmt.Sprintf("%.0f", writes-float64(n))
	results[key("api_requests")] = fmt.Sprintf("%.0f", all-float64(n))
	by["POST leaderlocks"] -= float64(n)
	results[key("api_writes_by")] = fmtByKey(by)
	results[key("ctl_cpu_s")] = fmt.Sprintf("%.1f", cpuSeconds(ctl.p.pid())-ctlCPU)
	results[key("api_cpu_s")] = fmt.Sprintf("%.1f", cpuSeconds(apiPid)-apiCPU)
	results[key("rss_mb")] = fmt.Sprintf("%.1f", statusKB(ctl.p.pid(), "VmHWM")/1024)
	rssNow := statusKB(ctl.p.pid(), "VmRSS")
	results[key("rss_now_mb")] = fmt.Sprintf("%.1f", rssNow/1024)
	results[key("rss_per_ll_kb")] = fmt.Sprintf("%.1f", (rssNow-rssPods)/float64(n))
	results[key("api_cores")] = fmt.Sprintf("%.2f", (cpuSeconds(apiPid)-apiCPU)/conv.Seconds())
	if profile != nil {
		apiProfile, apiProfileOf = <-profile, label(n)
	}
	logf("scale: converged in %.1fs; %s etcd writes/lock; controller peak RSS %s MB, %s CPU s; apiserver %s CPU s",
		conv.Seconds(), results[key("etcd_writes_per_lock")], results[key("rss_mb")], results[key("ctl_cpu_s")], results[key("api_cpu_s")])
	scaleTracker, scaleNS = t, ns
}

// The largest scale phase's LeaderLocks, for the restart phase, and its kube-apiserver profile.
var (
	scaleTracker *tracker
	scaleNS      string
	apiProfile   map[string]float64
	apiProfileOf string
)

// ---------------------------------------------------------------------------------------------
// 4. Controller restart (SIGTERM, then a new process) with every LeaderLock of the run in place

func restart(etcds map[string]*etcd, ctl *controller) {
	t := scaleTracker
	if t == nil {
		notes = append(notes, "restart phase skipped: it runs on the scale phase's LeaderLocks")
		return
	}
	endpoint := etcds["leaderlock"].endpoint
	logf("restart: SIGTERM the controller, start a new one")
	holders := t.snapshotHolders()
	t.mu.Lock()
	roles0 := t.roleChanges
	t.mu.Unlock()
	keys0, rev0 := keyRevisions(endpoint, "/"), mustRevision(endpoint)
	sig, sigName := syscall.SIGTERM, "SIGTERM"
	if os.Getenv("BENCH_RESTART_SIGNAL") == "KILL" {
		sig, sigName = syscall.SIGKILL, "SIGKILL"
	}
	results["restart_signal"] = sigName
	ctl.p.stop(sig, 15*time.Second)
	ctl2 := startController(cfg.controllerBin, endpoint, 2)
	started := ctl2.started
	must(ctl2.waitFor("active", 60*time.Second, func(c *controller) bool { return !c.activeAt.IsZero() }))
	must(ctl2.waitFor("a first reconcile", 60*time.Second, func(c *controller) bool { return !c.firstRecAt.IsZero() }))
	n := len(holders)
	allWait := time.Duration(envInt("BENCH_RESTART_WAIT_SECONDS", 300)) * time.Second
	if err := ctl2.waitFor("every scale LeaderLock reconciled", allWait, func(c *controller) bool {
		got, _ := c.reconciledIn(scaleNS)
		return got >= n
	}); err != nil {
		ctl2.mu.Lock()
		got, _ := ctl2.reconciledIn(scaleNS)
		ctl2.mu.Unlock()
		results["restart_all_reconciled_note"] = fmt.Sprintf("only %d of %d reconciled within %s", got, n, allWait)
		notes = append(notes, fmt.Sprintf("Restart: the new controller logged \"reconciled\" for only %d of the %d scale LeaderLocks within %s "+
			"after a %s restart (its leaderlock_reconciles_total stays put too): the controller seems to stop reconciling after the first "+
			"LeaderLock it adopts. Reported as a product issue; the holder and key figures below are taken anyway.", got, n, allWait, sigName))
		logf("restart: %s", results["restart_all_reconciled_note"])
	}
	time.Sleep(3 * time.Second) // anything the restart would still write
	ctl2.mu.Lock()
	results["restart_active_s"] = fmt.Sprintf("%.2f", ctl2.activeAt.Sub(started).Seconds())
	results["restart_first_reconciled_s"] = fmt.Sprintf("%.2f", ctl2.firstRecAt.Sub(started).Seconds())
	_, last := ctl2.reconciledIn(scaleNS)
	results["restart_all_reconciled_s"] = fmt.Sprintf("%.2f", last.Sub(started).Seconds())
	if note := results["restart_all_reconciled_note"]; note != "" {
		results["restart_all_reconciled_s"] = "not reached: " + note
	}
	ctl2.mu.Unlock()

	changed := 0
	for name, h := range t.snapshotHolders() {
		if holders[name] != h {
			changed++
		}
	}
	t.mu.Lock()
	results["restart_role_changes"] = strconv.Itoa(t.roleChanges - roles0)
	t.mu.Unlock()
	results["restart_holder_changes"] = strconv.Itoa(changed)
	keys1 := keyRevisions(endpoint, "/")
	lockWrites, electionWrites := 0, 0
	count := func(key string) {
		if strings.HasPrefix(key, "/leaderlock.dev/controller/") {
			electionWrites++
		} else {
			lockWrites++
		}
	}
	for key, m := range keys1 {
		if m > rev0 {
			count(key) // created or modified
		}
	}
	for key := range keys0 {
		if _, ok := keys1[key]; !ok {
			count(key) // deleted
		}
	}
	results["restart_lock_writes"] = strconv.Itoa(lockWrites)
	results["restart_election_writes"] = strconv.Itoa(electionWrites)
	results["restart_revisions"] = strconv.FormatInt(mustRevision(endpoint)-rev0, 10)
	results["restart_rss_mb"] = fmt.Sprintf("%.1f", statusKB(ctl2.p.pid(), "VmHWM")/1024)
	results["restart_lls"] = strconv.Itoa(n)
	logf("restart: active after %ss, first reconcile %ss, all %d reconciled %ss; holder changes %d, lock-key writes %d",
		results["restart_active_s"], results["restart_first_reconciled_s"], n, results["restart_all_reconciled_s"], changed, lockWrites)
}

// promised are the figures LeaderLock guarantees, not merely targets: each must be exactly 0.
// The timing and memory targets are reported, not enforced (2 shared cores are too noisy for a gate).
var promised = []struct{ key, what string }{
	{"idle_leaderlock", "etcd revisions per minute while idle"},
	{"idle_api_writes_leaderlock", "apiserver writes per minute while idle"},
	{"restart_holder_changes", "holder changes across a controller restart"},
	{"restart_role_changes", "pod role changes across a controller restart"},
	{"restart_lock_writes", "lock-key writes across a controller restart"},
}

// brokenPromises lists the promised figures that were measured and are not 0 (a skipped phase
// measures nothing).
func brokenPromises(results map[string]string) []string {
	var broken []string
	for _, p := range promised {
		if v, ok := results[p.key]; ok && v != "0" {
			broken = append(broken, fmt.Sprintf("%s = %s, must be 0", p.what, v))
		}
	}
	return broken
}

// ---------------------------------------------------------------------------------------------
// Report

func r(key string) string {
	if v, ok := results[key]; ok && v != "" {
		return v
	}
	return "n/a"
}

func ratio(a, b string) string {
	x, err1 := strconv.ParseFloat(r(a), 64)
	y, err2 := strconv.ParseFloat(r(b), 64)
	if err1 != nil || err2 != nil || y == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f×", x/y)
}

func foRow(label, key, cause string) string {
	v := r("fo_" + key)
	p := strings.Split(v, "|")
	if len(p) != 5 {
		return fmt.Sprintf("| %s | %s | n/a | n/a | n/a | n/a | n/a |", label, cause)
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", label, cause, p[0], p[1], p[2], p[3], p[4])
}

// report writes BENCHMARKS.md (after every phase, so an interrupted run leaves its figures);
// the final call also prints it and the BENCH line.
func report(final bool) {
	now := time.Now().UTC()
	version, _ := k.cs.Discovery().ServerVersion()
	kver := "unknown"
	if version != nil {
		kver = version.GitVersion
	}
	etcdVer := strings.SplitN(cmdOut(filepath.Join(cfg.etcdBinDir, "etcd"), "--version"), "\n", 2)[0]
	rustVer := cmdOut("rustc", "--version")
	goVer := cmdOut("go", "version")
	free := cmdOut("free", "-h")
	nproc := cmdOut("nproc")
	cpuModel := cmdOut("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
	n := cfg.idleLocks

	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# Benchmarks: LeaderLock vs the TryLock loop, etcd's Mutex and client-go leader election")
	w("")
	w("Generated by `make bench` (`hack/bench.sh` → `tests/bench/compare`) on %s. All four systems ran on", now.Format("2006-01-02 15:04 UTC"))
	w("the same loopback control plane in the same run; LeaderLock, the TryLock loop and the Mutex peers each had")
	w("their own etcd started by the harness, client-go wrote through kube-apiserver into the apiserver's etcd.")
	w("")
	w("## Machine")
	w("")
	w("* CPUs: %s (%s), shared with other work — figures are noisy", nproc, strings.TrimSpace(cpuModel))
	w("* Memory (`free -h`):")
	w("")
	w("```text\n%s\n```", free)
	w("")
	w("* kube-apiserver %s, etcd %s, %s, %s", kver, strings.TrimPrefix(etcdVer, "etcd Version: "), rustVer, goVer)
	w("* leaderlock built with `cargo build --release --locked`, run with `--election-ttl %s`; client-go v0.36.3 peer (`tests/bench/elector`)", electionTTL)
	w("")
	w("## 1. Idle write amplification (%d locks × 3 candidates, %d s idle after election)", n, cfg.idleSecs)
	w("")
	w("| system | etcd revisions / min | apiserver writes / min | vs LeaderLock |")
	w("|---|---:|---:|---|")
	w("| LeaderLock (controller + %d pods) | **%s** | %s (%s) | — |", 3*n, r("idle_leaderlock"), r("idle_api_writes_leaderlock"), orNone(r("idle_api_writes_leaderlock_by")))
	w("| TryLock loop (`tests/cluster/etcd/trylock`, `-interval %s`) | %s | — | %s more |", cfg.trylockInterval, r("idle_trylock"), infOr(r("idle_trylock")))
	w("| etcd `concurrency.Mutex.Lock` (one process per candidate) | %s | — | %s |", r("idle_mutex"), infOr(r("idle_mutex")))
	w("| client-go leader election, Leases 15s/10s/2s | %s (raw %s − baseline %s) | %s (%s) | %s more |", r("idle_clientgo"), r("idle_clientgo_raw"), r("idle_api_baseline"), r("idle_api_writes_clientgo"), orNone(r("idle_api_writes_clientgo_by")), infOr(r("idle_clientgo")))
	w("")
	w("* Target: LeaderLock 0 etcd writes while idle — measured **%s**. The controller used %s CPU s during the window.", r("idle_leaderlock"), r("idle_ctl_cpu"))
	w("* The TryLock loop polls at `-interval %s` (the incident's program defaults to 100 ms, i.e. ~10× this figure);", cfg.trylockInterval)
	w("  each failed try is a Put in a Txn plus a Delete: 2 revisions per waiter per try.")
	w("* etcd's own `Mutex.Lock` also waits on a watch, so it is idle-free too: LeaderLock's difference from it is that")
	w("  pods need no etcd client, credentials or network path to etcd, and the holder is published to Kubernetes.")
	w("* client-go: each holder renews its Lease every RetryPeriod (2 s) — one PUT per lock every 2 s, each a new etcd")
	w("  revision. Its 3 candidates are 3 processes, each running one LeaderElector per Lease (%d per process);", n)
	w("  the baseline is the apiserver etcd's own rate in window A (kube-apiserver's identity lease, etc.).")
	w("  kube-apiserver used %s CPU s during the client-go window vs %s CPU s in window A.", r("idle_api_cpu_b"), r("idle_api_cpu_a"))
	w("")
	w("## 2. Failover latency (ms; cause → new holder visible)")
	w("")
	w("| system | cause | n | p50 | p95 | p99 | max |")
	w("|---|---|---:|---:|---:|---:|---:|")
	w("%s", foRow("LeaderLock", "leaderlock_graceful", "graceful: delete the holder pod"))
	w("%s", foRow("etcd Mutex", "mutex_graceful", "graceful: SIGTERM → `Unlock`"))
	w("%s", foRow("client-go", "clientgo_release", "graceful: cancel with ReleaseOnCancel"))
	w("%s", foRow("client-go", "clientgo_norelease", "graceful: cancel without ReleaseOnCancel"))
	w("%s", foRow("LeaderLock", "leaderlock_crash", "crash: holder pod turns NotReady"))
	w("%s", foRow("client-go", "clientgo_crash", "crash: `kill -9` the holder (Lease expires)"))
	w("%s", foRow("etcd Mutex", "mutex_crash", "crash: `kill -9` the holder (session TTL 15 s expires)"))
	w("")
	w("* Visible means: LeaderLock — a pods watch shows `leaderlock.dev/fo: leader` on another pod (the controller")
	w("  demotes first, then promotes); client-go — a Leases watch shows another `holderIdentity`; Mutex — the next")
	w("  peer prints `acquired`. The clock starts just before the API call / signal that causes the handover.")
	w("* LeaderLock's crash case marks the holder pod NotReady through `pods/status` (what the kubelet reports when")
	w("  the container dies); deleting the etcd key directly would skip the apiserver round trip.")
	w("* Target: graceful p99 under 50 ms on loopback — LeaderLock p99 = %s ms. client-go graceful p99 / LeaderLock p99 = %s.",
		r("fo_leaderlock_graceful_p99"), ratio("fo_clientgo_release_p99", "fo_leaderlock_graceful_p99"))
	w("  client-go's graceful handover is bounded by the waiters' RetryPeriod (2 s, jittered up to 4.4 s); without")
	w("  ReleaseOnCancel and on a crash, by the 15 s LeaseDuration. Those four timer-bound rows run in BENCH_LANES=%d", cfg.lanes)
	w("  independent lanes side by side (each its own Lease or Mutex prefix and three peers; the expiry-bound rows")
	w("  BENCH_SLOW_HANDOVERS=%d handovers in all), because one after another they would take ~15 minutes per row;", cfg.slowHandovers)
	w("  LeaderLock's and Mutex's graceful rows run alone. Before each client-go handover the harness waits ~2.5 s:")
	w("  a restarted elector tries at once, so it lets every follower fall into its RetryPeriod rhythm first.")
	w("")
	w("## 3. Scale: LeaderLocks × 3 pods from empty")
	w("")
	head, rule := "| figure |", "|---|"
	for _, n := range cfg.scales {
		head += fmt.Sprintf(" %d |", n)
		rule += "---:|"
	}
	w("%s", head)
	w("%s", rule)
	row := func(title, k, unit string) {
		line := "| " + title + " |"
		for _, n := range cfg.scales {
			v := r("scale_" + label(n) + "_" + k)
			if unit != "" && v != "n/a" {
				v += " " + unit
			}
			line += " " + v + " |"
		}
		w("%s", line)
	}
	row("pods created and marked Ready by the harness (before the window)", "pods_s", "s")
	row("LeaderLocks created by the harness", "create_s", "s")
	row("**first create → every status has a holder and every pod is annotated**", "converge_s", "s")
	row("etcd writes per lock (revision delta / locks)", "etcd_writes_per_lock", "")
	row("controller API requests (pods, leaderlocks, events; harness's creates excluded)", "api_requests", "")
	row("of which writes", "api_writes", "")
	row("writes by verb and resource", "api_writes_by", "")
	row("controller RSS with the pods listed, before the LeaderLocks", "rss_pods_mb", "MB")
	row("controller RSS after convergence", "rss_now_mb", "MB")
	row("RSS per LeaderLock (after − before the LeaderLocks)", "rss_per_ll_kb", "KB")
	row("controller peak RSS (VmHWM, whole run so far)", "rss_mb", "MB")
	row("controller CPU during convergence", "ctl_cpu_s", "s")
	row("kube-apiserver CPU during convergence", "api_cpu_s", "s")
	row("kube-apiserver cores busy on average (CPU s / convergence s; 2 in all)", "api_cores", "")
	w("")
	w("* 3 candidates per lock cost 3 etcd creates per lock (the ideal: one per candidate); the lease grant is shared.")
	w("  Every pod is written once (standby, or leader with its token), every status once, plus one finalizer patch")
	w("  and one Event per LeaderLock.")
	w("* What bounds convergence: kube-apiserver. On these 2 cores it is busy most of the window (see the cores row)")
	w("  serving the controller's writes and the harness's watches, while the controller uses a fraction of a core.")
	if v, err := strconv.ParseFloat(r("scale_10k_converge_s"), 64); err == nil {
		w("  The 60 s target for 10,000 LeaderLocks would need %.1f× the apiserver throughput measured here.", v/60)
	}
	if apiProfile != nil {
		w("* Where kube-apiserver's time goes: a CPU profile of it (`/debug/pprof/profile`, %d s from the moment the harness", cfg.profileSecs)
		w("  finished creating the %s LeaderLocks, so the load is the controller's; %.2f cores busy in that time; the file is", apiProfileOf, apiProfile["cores"]/100)
		w("  in the logs dir, kept with BENCH_KEEP_LOGS=1). Shares of its samples; rows are nested where indented, not disjoint:")
		w("")
		w("| kube-apiserver CPU, %s LeaderLocks converging | share |", apiProfileOf)
		w("|---|---:|")
		for _, g := range profileGroups {
			w("| %s | %.1f %% |", strings.Replace(g.label, "  ", "&nbsp;&nbsp;", 1), apiProfile[g.label])
		}
		w("")
		w("  Server-side apply is the single largest cost: every PATCH decodes the request, merges it into the stored")
		w("  object, recomputes managedFields and writes the whole object back. The controller already writes each pod and")
		w("  each status exactly once; what remains is the per-write price of apply on a 2-core apiserver.")
	}
	w("* Memory (target 150 MB at 10,000; heaptrack profiles of the 10,000 phase guided the work): pods are kept as compact")
	w("  records (labels and our keys as sorted slices, not B-tree maps, which allocate a 544-byte node for one entry),")
	w("  LeaderLocks once (the index shares kube-runtime's store objects), Events are created directly (kube-runtime's")
	w("  Recorder cached each one for 6 minutes: 28 MB at 10,000). Peak heap went from 155 MB to 78 MB; the rest")
	w("  of the RSS is allocator overhead: glibc keeps freed memory in per-thread arenas, which the controller caps")
	w("  at two (`mallopt(M_ARENA_MAX, 2)` at start; 12 MB less RSS at 10,000 in the trial that decided it).")
	w("")
	w("## 4. Controller restart (%s, then a new process; %s LeaderLocks in place)", r("restart_signal"), r("restart_lls"))
	w("")
	w("| figure | value |")
	w("|---|---:|")
	w("| new process start → \"active: this replica reconciles\" | %s s |", r("restart_active_s"))
	w("| new process start → first \"reconciled\" | %s s |", r("restart_first_reconciled_s"))
	w("| new process start → every scale LeaderLock reconciled | %s s |", r("restart_all_reconciled_s"))
	w("| holder changes (status holder/token of every scale lock) | **%s** |", r("restart_holder_changes"))
	w("| pod role annotation changes seen by a pods watch | %s |", r("restart_role_changes"))
	w("| lock-key writes (keys outside /leaderlock.dev/controller/ created, modified or deleted) | **%s** |", r("restart_lock_writes"))
	w("| replica-election key writes (allowed) | %s |", r("restart_election_writes"))
	w("| new controller peak RSS after reconciling everything | %s MB |", r("restart_rss_mb"))
	w("")
	if len(notes) > 0 {
		w("## Notes")
		w("")
		for _, n := range notes {
			w("* %s", n)
		}
		w("")
	}
	w("## How to rerun")
	w("")
	w("```sh")
	w("make bench                      # about %s s of measurement after the builds", r("total_s"))
	w("BENCH_HANDOVERS=10 make bench   # fewer fast handovers")
	w("```")
	w("")
	w("The run fails (exit 1, after writing this file, logs kept) when a figure LeaderLock promises is not 0: idle etcd")
	w("revisions or apiserver writes, holder or pod role changes or lock-key writes across the restart. The timing and")
	w("memory targets are reported, not enforced: these shared cores are too noisy for a gate.")
	w("")
	w("Knobs (env): `BENCH_IDLE_LOCKS` (100), `BENCH_IDLE_SECONDS` (60), `BENCH_HANDOVERS` (50),")
	w("`BENCH_SLOW_HANDOVERS` (50: the handovers bounded by a 15 s expiry), `BENCH_LANES` (10: side-by-side lanes of the")
	w("timer-bound rows),")
	w("`BENCH_SCALE` (1000,10000: comma-separated sizes; the restart phase uses the last), `BENCH_RESTART_SIGNAL` (TERM; KILL), `BENCH_RESTART_WAIT_SECONDS` (300),")
	w("`BENCH_TRYLOCK_INTERVAL` (1s), `BENCH_APISERVER_PROFILE_SECONDS` (30: kube-apiserver CPU profile in the largest")
	w("scale phase), `BENCH_PHASES` (idle,failover,scale,restart), `BENCH_KEEP_LOGS` (unset: the temp dir printed at")
	w("the start, with every process's log and etcd data, is removed after a successful run; a failed run keeps it).")

	if !final {
		w("_Partial: written after a phase; later phases had not run yet._")
	}
	md := b.String()
	must(os.WriteFile(cfg.out, []byte(md), 0o644))
	if !final {
		return
	}
	fmt.Println(md)
	scaled := ""
	for _, n := range cfg.scales {
		scaled += fmt.Sprintf(" converge_%s_s=%s rss_%s_mb=%s", label(n), r("scale_"+label(n)+"_converge_s"), label(n), r("scale_"+label(n)+"_rss_mb"))
	}
	fmt.Printf("BENCH idle_writes_per_min leaderlock=%s trylock=%s mutex=%s clientgo=%s failover_p99_ms leaderlock=%s clientgo=%s mutex=%s crash_p99_ms leaderlock=%s clientgo=%s mutex=%s%s restart_holder_changes=%s restart_lock_writes=%s\n",
		r("idle_leaderlock"), r("idle_trylock"), r("idle_mutex"), r("idle_clientgo"),
		r("fo_leaderlock_graceful_p99"), r("fo_clientgo_release_p99"), r("fo_mutex_graceful_p99"),
		r("fo_leaderlock_crash_p99"), r("fo_clientgo_crash_p99"), r("fo_mutex_crash_p99"),
		scaled, r("restart_holder_changes"), r("restart_lock_writes"))
}

// label names a scale: 1000 → "1k", 300 → "300".
func label(n int) string {
	if n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

func orNone(s string) string {
	if s == "" || s == "n/a" {
		return "none"
	}
	return s
}

func infOr(s string) string {
	if s == "0" {
		return "0, same as LeaderLock"
	}
	if s == "n/a" {
		return "n/a"
	}
	return "∞ (" + s + " vs 0)"
}

func sortStrings(s []string) { sort.Strings(s) }
