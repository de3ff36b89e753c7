package main

// The price phase: what an election costs the apiserver and its etcd, LeaderLock and client-go
// side by side on M locks × 3 candidates — M elected from empty, an idle minute (extrapolated to
// an hour), and a mass failover in which all M holders go at once, the way a node's pods do.

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// priceResult is one size's figures: the cost of each kind of work, and the mass failover's
// per-lock latencies.
type priceResult struct {
	m                              int
	ll                             []*llPrice // one per pod write mode, BENCH_PRICE_MODES order
	cgElect, cgIdle, cgFail        cost
	background                     cost  // an idle window with neither system's locks moving
	cgMoves                        stats // from the kill
	cgMoved                        int
	nodeLostAfter, cgLeaseDuration time.Duration
}

// llPrice is LeaderLock's share of a priceResult, for one way of writing pods.
type llPrice struct {
	mode              string // "merge" (the default) or "apply" (LEADERLOCK_BENCH_WRITES=apply)
	elect, idle, fail cost   // idle measured for the first mode only
	moves             stats  // from the node Lease's last renewal
	moved, heldOnLost int
}

// meter is a reading of the counters a price is made of.
type meter struct {
	at      time.Time
	apiCPU  float64            // kube-apiserver utime+stime, s
	rev     int64              // the storage etcd's revision
	etcd    map[string]float64 // the storage etcd's counters, see etcdCounters
	apiReqs rawMetrics         // apiserver_request_total
}

// etcdCounters are read from the storage etcd's /metrics: bytes of every put's key and value
// (what the apiserver writes), and bytes of every gRPC request it received (writes, reads,
// watch requests and lease keep-alives alike).
var etcdCounters = []string{"etcd_mvcc_total_put_size_in_bytes", "etcd_network_client_grpc_received_bytes_total", "etcd_mvcc_put_total"}

// cost is the difference of two readings.
type cost struct {
	secs, apiCPU, putBytes, rxBytes, writes float64
	revs                                    int64
	writesBy                                string
}

func readMeter(apiPid int) meter {
	m := meter{at: time.Now(), apiCPU: cpuSeconds(apiPid), rev: mustRevision(cfg.apiserverEtcd), etcd: etcdMetrics(cfg.apiserverEtcd), apiReqs: k.apiMetrics()}
	return m
}

func (a meter) to(b meter) cost {
	writes, by := metricDelta(a.apiReqs, b.apiReqs, true, func(string) bool { return true })
	return cost{
		secs: b.at.Sub(a.at).Seconds(), apiCPU: b.apiCPU - a.apiCPU, revs: b.rev - a.rev,
		putBytes: b.etcd[etcdCounters[0]] - a.etcd[etcdCounters[0]], rxBytes: b.etcd[etcdCounters[1]] - a.etcd[etcdCounters[1]],
		writes: writes, writesBy: fmtByKey(by),
	}
}

// per scales a cost of n units of work to per-1,000.
func (c cost) per(n int) cost {
	f := 1000 / float64(n)
	return cost{secs: c.secs, apiCPU: c.apiCPU * f, putBytes: c.putBytes * f, rxBytes: c.rxBytes * f, writes: c.writes * f, revs: int64(float64(c.revs) * f), writesBy: c.writesBy}
}

// net is c less the background's rate over c's window.
func (c cost) net(bg cost) cost {
	f := c.secs / bg.secs
	return cost{secs: c.secs, apiCPU: c.apiCPU - bg.apiCPU*f, putBytes: c.putBytes - bg.putBytes*f, rxBytes: c.rxBytes - bg.rxBytes*f,
		writes: c.writes - bg.writes*f, revs: c.revs - int64(float64(bg.revs)*f), writesBy: c.writesBy}
}

// perHour scales a cost measured over an idle window to an hour.
func (c cost) perHour() cost {
	f := 3600 / c.secs
	return cost{secs: 3600, apiCPU: c.apiCPU * f, putBytes: c.putBytes * f, rxBytes: c.rxBytes * f, writes: c.writes * f, revs: int64(float64(c.revs) * f), writesBy: c.writesBy}
}

// etcdMetrics reads etcdCounters from an etcd's /metrics (0 for one it does not export).
func etcdMetrics(endpoint string) map[string]float64 {
	out := map[string]float64{}
	resp, err := httpc.Get(endpoint + "/metrics")
	must(err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(err)
	for _, l := range strings.Split(string(body), "\n") {
		for _, c := range etcdCounters {
			// etcd 3.6 exports the put bytes under its debugging namespace.
			l = strings.Replace(l, "etcd_debugging_mvcc_total_put_size_in_bytes", "etcd_mvcc_total_put_size_in_bytes", 1)
			if rest, ok := strings.CutPrefix(l, c+" "); ok {
				v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				out[c] = v
			}
		}
	}
	return out
}

// price runs one size: LeaderLock once per pod write mode (each with a controller of its own,
// watching only its namespace, on an etcd of its own), then client-go.
func price(apiPid, m int) {
	r := &priceResult{m: m, nodeLostAfter: 15 * time.Second, cgLeaseDuration: 15 * time.Second}
	res.price = append(res.price, r)
	// The background of every idle window: the apiserver's own work and 3 played node Leases.
	bg := newNodeRenewer([]string{"bench-price-bg-a", "bench-price-bg-b", "bench-price-bg-c"})
	b0 := readMeter(apiPid)
	time.Sleep(time.Duration(cfg.idleSecs) * time.Second)
	r.background = b0.to(readMeter(apiPid))
	bg.stopAll()
	for i, mode := range strings.Split(envStr("BENCH_PRICE_MODES", "merge,apply"), ",") {
		logf("price: %d LeaderLocks x 3 pods, pods written by %s", m, mode)
		p := &llPrice{mode: mode}
		r.ll = append(r.ll, p)
		ns := fmt.Sprintf("bench-price-%s-%s", label(m), mode)
		k.namespace(ns)
		e := startEtcd(cfg.etcdBinDir, "etcd-"+ns)
		must(os.Setenv("LEADERLOCK_BENCH_WRITES", mode))
		ctl := startControllerAs("controller-"+ns, e.endpoint, cfg.kubeconfig, "--namespace", ns)
		must(os.Unsetenv("LEADERLOCK_BENCH_WRITES"))
		must(ctl.waitFor("active", 60*time.Second, func(c *controller) bool { return !c.activeAt.IsZero() }))
		priceLeaderLock(p, ctl, apiPid, m, ns, i == 0)
		ctl.p.stop(syscall.SIGTERM, 15*time.Second)
		e.proc.stop(syscall.SIGTERM, 10*time.Second)
		logf("price %d %s: elect %.1f CPU s, fail %.1f CPU s, last moved after %.0f ms", m, mode, p.elect.apiCPU, p.fail.apiCPU, p.moves.Max)
	}
	logf("price: %d Leases x 3 client-go electors", m)
	bg = newNodeRenewer([]string{"bench-price-bg-a", "bench-price-bg-b", "bench-price-bg-c"})
	defer bg.stopAll()
	priceClientgo(r, apiPid)
}

// priceLeaderLock: pod i-0 of every lock runs on the played node "<ns>-a", i-1 on -b, i-2 on -c;
// the harness renews their Leases in kube-node-lease as kubelets do, and stops renewing -a's.
func priceLeaderLock(r *llPrice, ctl *controller, apiPid, m int, ns string, withIdle bool) {
	nodes := []string{ns + "-a", ns + "-b", ns + "-c"}
	k.namespace("kube-node-lease")
	renew := newNodeRenewer(nodes)
	defer renew.stopAll()
	t := k.track(ns, false)
	defer close(t.stop)
	lock := func(i int) string { return fmt.Sprintf("p-%05d", i) }
	must(parallel(3*m, 32, func(i int) error {
		return k.readyPodOn(ns, fmt.Sprintf("%s-%d", lock(i/3), i%3), lock(i/3), nodes[i%3])
	}))
	time.Sleep(2 * time.Second)

	// Elect: M LeaderLocks created → every status holds and every pod is annotated.
	m0 := readMeter(apiPid)
	must(parallel(m, 32, func(i int) error { return k.leaderLock(ns, lock(i)) }))
	ctl.waitTracker(t, "every price lock elected", 600*time.Second, func(t *tracker) bool {
		return t.annotated == 3*m && t.leaders == m && t.held == m
	})
	time.Sleep(2 * time.Second) // trailing writes (Events) count too
	m1 := readMeter(apiPid)
	r.elect = m0.to(m1)

	// Idle: a window with nothing happening (the node Leases' renewals are the harness's, not
	// LeaderLock's, but they land in the same etcd: 3 writes every 10 s).
	if withIdle {
		time.Sleep(time.Duration(cfg.idleSecs) * time.Second)
		m2 := readMeter(apiPid)
		r.idle = m1.to(m2)
	}

	// Mass failover: every lock whose leader runs on node -a moves when -a's Lease goes silent.
	t.mu.Lock()
	held := map[string]string{}
	for i := 0; i < m; i++ {
		if l := t.leaderOf(lock(i)); strings.HasSuffix(l, "-0") {
			held[lock(i)] = l
		}
	}
	t.mu.Unlock()
	r.heldOnLost = len(held)
	t.expectMoves(held)
	m3 := readMeter(apiPid)
	t0 := renew.silence(nodes[0]) // the last renewal of -a: its silence starts here
	ctl.waitTracker(t, "every lock held on the lost node moved", 300*time.Second, func(t *tracker) bool { return len(t.moving) == 0 })
	time.Sleep(2 * time.Second)
	r.fail = m3.to(readMeter(apiPid))
	r.moves, r.moved = moves(t, t0)
	logf("price %d %s: LeaderLock moved %d locks; p50 %.0f ms, p99 %.0f ms, last %.0f ms after node %s's last renewal",
		m, r.mode, r.moved, r.moves.P50, r.moves.P99, r.moves.Max, nodes[0])
}

// moves returns the latency of every lock that moved, from t0.
func moves(t *tracker, t0 time.Time) (stats, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d []time.Duration
	for _, at := range t.movedAt {
		d = append(d, at.Sub(t0))
	}
	return summarize(d), len(d)
}

// priceClientgo: elector A starts alone and acquires M Leases; B and C join as followers; an idle
// window; then A is killed (SIGKILL: its Leases expire after LeaseDuration, as a lost node's do).
func priceClientgo(r *priceResult, apiPid int) {
	m := r.m
	ns := "bench-clientgo"
	k.namespace(ns)
	prefix := "price-" + label(m)
	t := k.track(ns, true)
	defer close(t.stop)
	ch := make(chan line, 4*m+100)
	args := func(id string) []string {
		return []string{"-namespace", ns, "-prefix", prefix, "-locks", strconv.Itoa(m), "-id", id}
	}
	m0 := readMeter(apiPid)
	a := start("elector-"+prefix+"-a", ch, cfg.electorBin, args(prefix+"-a")...)
	_, err := waitLines(ch, m, 600*time.Second, func(l line) bool { return l.p == a && strings.HasPrefix(l.text, "acquired") })
	must(err)
	m1 := readMeter(apiPid)
	r.cgElect = m0.to(m1)
	var followers []*proc
	for _, id := range []string{"b", "c"} {
		p := start("elector-"+prefix+"-"+id, ch, cfg.electorBin, args(prefix+"-"+id)...)
		followers = append(followers, p)
		_, err := waitLines(ch, 1, 60*time.Second, func(l line) bool { return l.p == p && l.text == "ready" })
		must(err)
	}
	time.Sleep(5 * time.Second) // every follower has tried once and fallen into its RetryPeriod rhythm
	m2 := readMeter(apiPid)
	time.Sleep(time.Duration(cfg.idleSecs) * time.Second)
	m3 := readMeter(apiPid)
	r.cgIdle = m2.to(m3)

	held := map[string]string{}
	t.mu.Lock()
	for i := 0; i < m; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		held[name] = t.leases[name]
	}
	t.mu.Unlock()
	t.expectMoves(held)
	t0 := time.Now()
	a.signal(syscall.SIGKILL)
	_, err = t.wait("every Lease of the killed elector taken over", 300*time.Second, func(t *tracker) bool { return len(t.moving) == 0 })
	must(err)
	time.Sleep(2 * time.Second)
	r.cgFail = m3.to(readMeter(apiPid))
	r.cgMoves, r.cgMoved = moves(t, t0)
	for _, p := range followers {
		p.signal(syscall.SIGKILL)
	}
	drain(ch)
	logf("price %d: client-go moved %d Leases; p50 %.0f ms, p99 %.0f ms, last %.0f ms after the kill", m, r.cgMoved, r.cgMoves.P50, r.cgMoves.P99, r.cgMoves.Max)
}

// nodeRenewer plays the kubelets of some nodes: renews each node's Lease in kube-node-lease
// every 10 s (the kubelet's period), until told to stop.
type nodeRenewer struct {
	stop map[string]chan chan time.Time
}

func newNodeRenewer(nodes []string) *nodeRenewer {
	r := &nodeRenewer{stop: map[string]chan chan time.Time{}}
	for _, n := range nodes {
		must(renewNodeLease(n))
		stop := make(chan chan time.Time)
		r.stop[n] = stop
		go func() {
			tick := time.NewTicker(10 * time.Second)
			defer tick.Stop()
			for {
				select {
				case <-tick.C:
					if err := renewNodeLease(n); err != nil {
						logf("price: renewing node Lease %s: %v", n, err)
					}
				case reply := <-stop:
					err := renewNodeLease(n)
					if err != nil {
						logf("price: renewing node Lease %s: %v", n, err)
					}
					reply <- time.Now()
					return
				}
			}
		}()
	}
	return r
}

// silence renews node's Lease a last time and stops; returns when that renewal was done.
func (r *nodeRenewer) silence(node string) time.Time {
	reply := make(chan time.Time)
	r.stop[node] <- reply
	delete(r.stop, node)
	return <-reply
}

func (r *nodeRenewer) stopAll() {
	for n := range r.stop {
		r.silence(n)
	}
}

// renewNodeLease creates or renews node's Lease as its kubelet does (renewTime now).
func renewNodeLease(node string) error {
	api := k.cs.CoordinationV1().Leases("kube-node-lease")
	now := metav1.NewMicroTime(time.Now())
	l, err := api.Get(context.Background(), node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		secs := int32(40)
		_, err = api.Create(context.Background(), &coordv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec:       coordv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &secs, RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = api.Update(context.Background(), l, metav1.UpdateOptions{})
	return err
}
