package main

// The failover phase: how long each system takes from the cause of a handover to a new holder
// being visible, graceful and on a crash.

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// failoverResult holds one latency summary per row of the failover table (nil = not measured).
type failoverResult struct {
	leaderlockGraceful, leaderlockCrash *stats
	mutexGraceful, mutexCrash           *stats
	clientgoRelease, clientgoNorelease  *stats
	clientgoCrash                       *stats
}

func failover(etcds map[string]*etcd) {
	h, slow := cfg.handovers, cfg.slowHandovers
	logf("failover: %d graceful and crash handovers (%d where a 15 s expiry bounds them; timer-bound rows in %d lanes)",
		h, slow, cfg.lanes)
	r := &failoverResult{}
	res.failover = r
	record := func(row **stats, name string, d []time.Duration) {
		s := summarize(d)
		*row = &s
		logf("failover %s: n=%d p50=%.1fms p95=%.1fms p99=%.1fms max=%.1fms", name, s.N, s.P50, s.P95, s.P99, s.Max)
	}
	graceful, crash := leaderLockFailover(h)
	record(&r.leaderlockGraceful, "leaderlock_graceful", graceful)
	record(&r.leaderlockCrash, "leaderlock_crash", crash)
	mutex := etcds["mutex"].endpoint
	k.namespace("bench-clientgo") // the idle phase makes it too; BENCH_PHASES may skip that
	record(&r.mutexGraceful, "mutex_graceful", mutexFailover(mutex, "/bench/mutex/fo-graceful", false, h))
	// Rows bounded by a timer (a RetryPeriod tick or a 15 s expiry) run in independent lanes side by
	// side, each its own Lease or Mutex prefix with its own three peers; run one after another, 50
	// expiry-bound handovers would take ~15 minutes per row.
	record(&r.clientgoRelease, "clientgo_release", inLanes(h, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-release-"+lane, true, false, n)
	}))
	record(&r.clientgoNorelease, "clientgo_norelease", inLanes(slow, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-norelease-"+lane, false, false, n)
	}))
	record(&r.clientgoCrash, "clientgo_crash", inLanes(slow, func(lane string, n int) []time.Duration {
		return clientgoFailover("fo-crash-"+lane, false, true, n)
	}))
	record(&r.mutexCrash, "mutex_crash", inLanes(slow, func(lane string, n int) []time.Duration {
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
