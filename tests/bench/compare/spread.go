package main

// The spread phase: placement Spread (docs/contract.md §8) at 64 shards × 8 pods and 256 shards
// × 16 pods. A LeaderLock with `shards: L` settles on C-1 pods; then a C-th pod joins, and the
// phase times the rebalance (joiner marked Ready → the status reports a settled, balanced
// placement with the joiner at its share), counts the locks that moved and the etcd revisions
// the moves cost, and takes the status size. The joiner leaves and a new one joins, for
// BENCH_SPREAD_ROUNDS rounds.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// spreadResult holds one size's figures, formatted as reported.
type spreadResult struct {
	shards, pods          int
	rounds                int
	rebalance             stats    // joiner Ready → settled with the joiner at its share
	moves, etcdRevs       []int    // per join
	leaveRebalance        stats    // joiner deleted → settled again
	leaveMoves            []int    // per leave
	statusBytes           int      // the status as JSON, settled with every pod
	distribution          string   // locks per pod once settled with every pod
	idleRevs, idlePodRevs string   // etcd revisions and LeaderLock writes over 10 s settled
	notes                 []string // anything odd seen
}

// spreadSizes are the measured sizes: (shards, pods).
var spreadSizes = [][2]int{{64, 8}, {256, 16}}

func spread(etcds map[string]*etcd) {
	rounds := max(1, envInt("BENCH_SPREAD_ROUNDS", 3))
	for _, size := range spreadSizes {
		r := spreadOne(etcds["leaderlock"].endpoint, size[0], size[1], rounds)
		res.spread = append(res.spread, r)
		report(false)
		// What placement promises (docs/contract.md §8): fail after writing the figures.
		if r.idleRevs != "0" || r.idlePodRevs != "0" || len(r.notes) > 0 {
			fatalf("spread %d×%d broke a promise: idle etcd revisions %s, idle status writes %s, %s",
				r.shards, r.pods, r.idleRevs, r.idlePodRevs, strings.Join(r.notes, "; "))
		}
	}
}

// placementView is what the phase reads of a LeaderLock's status.
type placementView struct {
	settled bool
	vacant  int64
	counts  map[string]int64  // pod → locks
	holders map[string]string // lock → holder
	bytes   int
}

func readPlacement(u *unstructured.Unstructured) placementView {
	v := placementView{counts: map[string]int64{}, holders: map[string]string{}}
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	if b, err := json.Marshal(st); err == nil {
		v.bytes = len(b)
	}
	v.settled, _, _ = unstructured.NestedBool(u.Object, "status", "placement", "settled")
	v.vacant, _, _ = unstructured.NestedInt64(u.Object, "status", "placement", "vacant")
	dist, _, _ := unstructured.NestedSlice(u.Object, "status", "placement", "distribution")
	for _, d := range dist {
		if m, ok := d.(map[string]any); ok {
			pod, _ := m["pod"].(string)
			n, _ := m["locks"].(int64)
			v.counts[pod] = n
		}
	}
	locks, _, _ := unstructured.NestedSlice(u.Object, "status", "locks")
	for _, l := range locks {
		if m, ok := l.(map[string]any); ok {
			name, _ := m["name"].(string)
			holder, _ := m["holder"].(string)
			v.holders[name] = holder
		}
	}
	return v
}

// balancedWith: settled, nothing vacant, exactly `pods` candidates each at ⌊L/C⌋ or ⌈L/C⌉, and
// `with` among them (at its share) when given.
func (v placementView) balancedWith(shards, pods int, with string) bool {
	if !v.settled || v.vacant != 0 || len(v.counts) != pods {
		return false
	}
	lo, hi := int64(shards/pods), int64((shards+pods-1)/pods)
	for _, n := range v.counts {
		if n < lo || n > hi {
			return false
		}
	}
	_, ok := v.counts[with]
	return with == "" || ok
}

// llWatch follows one LeaderLock and stamps when a condition on its status first holds.
type llWatch struct {
	mu   sync.Mutex
	last placementView
	wait func(v placementView) bool
	hit  chan time.Time
	stop chan struct{}
}

func watchLL(ns, name string) *llWatch {
	w := &llWatch{stop: make(chan struct{})}
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(k.dyn, 0, ns, nil)
	inf := f.ForResource(llGVR).Informer()
	on := func(o any) {
		now := time.Now()
		u, ok := o.(*unstructured.Unstructured)
		if !ok || u.GetName() != name {
			return
		}
		v := readPlacement(u)
		w.mu.Lock()
		defer w.mu.Unlock()
		w.last = v
		if w.wait != nil && w.wait(v) {
			w.hit <- now
			w.wait = nil
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: func(_, o any) { on(o) }})
	f.Start(w.stop)
	if !cache.WaitForCacheSync(w.stop, inf.HasSynced) {
		fatalf("the LeaderLock informer of %s did not sync", ns)
	}
	return w
}

// until returns when cond holds on the status (the receipt time of the update that made it
// true, or now if it already held) and the view it held on.
func (w *llWatch) until(what string, timeout time.Duration, cond func(v placementView) bool) (time.Time, placementView) {
	w.mu.Lock()
	if cond(w.last) {
		v := w.last
		w.mu.Unlock()
		return time.Now(), v
	}
	w.hit = make(chan time.Time, 1)
	w.wait = cond
	w.mu.Unlock()
	select {
	case at := <-w.hit:
		w.mu.Lock()
		defer w.mu.Unlock()
		return at, w.last
	case <-time.After(timeout):
		w.mu.Lock()
		defer w.mu.Unlock()
		fatalf("spread: timed out after %s waiting for %s (last: settled=%v vacant=%d counts=%v)", timeout, what, w.last.settled, w.last.vacant, w.last.counts)
		return time.Time{}, placementView{}
	}
}

func spreadOne(endpoint string, shards, pods, rounds int) *spreadResult {
	r := &spreadResult{shards: shards, pods: pods, rounds: rounds}
	ns := fmt.Sprintf("bench-spread-%d", shards)
	name := fmt.Sprintf("spread-%d", shards)
	logf("spread: %d shards over %d pods, then %d joins and leaves", shards, pods, rounds)
	k.namespace(ns)
	w := watchLL(ns, name)
	defer close(w.stop)
	must(parallel(pods-1, 8, func(i int) error { return k.readyPod(ns, fmt.Sprintf("%s-%02d", name, i), name) }))
	must(spreadLeaderLock(ns, name, shards))
	w.until("the first settled placement", 300*time.Second, func(v placementView) bool { return v.balancedWith(shards, pods-1, "") })

	var joins, leaves []time.Duration
	for round := 0; round < rounds; round++ {
		joiner := fmt.Sprintf("%s-join-%d", name, round)
		_, before := w.until("a settled placement before the join", 60*time.Second, func(v placementView) bool { return v.balancedWith(shards, pods-1, "") })
		rev := mustRevision(endpoint)
		must(k.createPod(ns, joiner, name))
		t0 := time.Now()
		must(k.setReady(ns, joiner, true))
		at, after := w.until("the rebalance after a join", 120*time.Second, func(v placementView) bool { return v.balancedWith(shards, pods, joiner) })
		joins = append(joins, at.Sub(t0))
		r.moves = append(r.moves, movedLocks(before, after, joiner, &r.notes))
		r.etcdRevs = append(r.etcdRevs, int(mustRevision(endpoint)-rev))
		if round == 0 {
			r.statusBytes = after.bytes
			r.distribution = fmtCounts(after.counts)
			time.Sleep(2 * time.Second) // the last writes' watch events land before the idle window
			rev, llVersion := mustRevision(endpoint), k.llVersion(ns, name)
			time.Sleep(10 * time.Second)
			r.idleRevs = strconv.FormatInt(mustRevision(endpoint)-rev, 10)
			if k.llVersion(ns, name) == llVersion {
				r.idlePodRevs = "0"
			} else {
				r.idlePodRevs = "≥ 1"
			}
		}
		t1 := time.Now()
		must(k.deletePod(ns, joiner))
		at, left := w.until("the rebalance after a leave", 120*time.Second, func(v placementView) bool {
			_, still := v.counts[joiner]
			return !still && v.balancedWith(shards, pods-1, "")
		})
		leaves = append(leaves, at.Sub(t1))
		r.leaveMoves = append(r.leaveMoves, movedLocks(after, left, "", nil))
	}
	r.rebalance, r.leaveRebalance = summarize(joins), summarize(leaves)
	logf("spread: %d×%d: join rebalance p50 %.0f ms max %.0f ms, moves %v, etcd revisions %v, status %d bytes",
		shards, pods, r.rebalance.P50, r.rebalance.Max, r.moves, r.etcdRevs, r.statusBytes)
	return r
}

// movedLocks counts the locks whose holder changed; with `to`, every move must go to it.
func movedLocks(before, after placementView, to string, notes *[]string) int {
	n := 0
	for lock, h := range after.holders {
		if before.holders[lock] != h {
			n++
			if to != "" && h != to && notes != nil {
				*notes = append(*notes, fmt.Sprintf("lock %s moved to %s, not to the joiner %s", lock, h, to))
			}
		}
	}
	return n
}

func fmtCounts(counts map[string]int64) string {
	var ns []int
	for _, n := range counts {
		ns = append(ns, int(n))
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ns)))
	return strings.Trim(strings.Join(strings.Fields(fmt.Sprint(ns)), "/"), "[]")
}

// spreadLeaderLock creates LeaderLock name with `shards` shards placed by Spread, no
// stabilisation delay, over pods ll=<name>.
func spreadLeaderLock(ns, name string, shards int) error {
	placement := map[string]any{"policy": "Spread", "stabilizationSeconds": int64(0)}
	return k.createLeaderLock(ns, name, map[string]any{"shards": int64(shards), "placement": placement})
}

// llVersion is the LeaderLock's resourceVersion: unchanged means nothing wrote it.
func (k *kube) llVersion(ns, name string) string {
	u, err := k.dyn.Resource(llGVR).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	must(err)
	return u.GetResourceVersion()
}

// createPod creates a pod labelled ll=<lock>, not yet Ready.
func (k *kube) createPod(ns, name, lock string) error {
	if err := k.readyPod(ns, name, lock); err != nil {
		return err
	}
	return k.setReady(ns, name, false)
}

func ints(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ", ")
}

// writeSpread adds the spread section to the report.
func writeSpread(w func(format string, a ...any)) {
	if len(res.spread) == 0 {
		return
	}
	w("## 5. Placement Spread: rebalancing after a join")
	w("")
	w("One LeaderLock with `shards: L`, `placement: {policy: Spread, stabilizationSeconds: 0}`, settled on C−1 pods;")
	w("then a C-th pod joins (created, then marked Ready: the clock starts) and leaves again, %d rounds. Rebalance time:", res.spread[0].rounds)
	w("joiner Ready → a LeaderLock watch receives the status reporting a settled placement with every pod at ⌊L/C⌋ or ⌈L/C⌉.")
	w("Moves: locks whose holder changed; every one must go to the joiner, and the fewest possible is the joiner's share.")
	w("")
	w("| shards × pods | join: rebalance p50 / max | moves per join (joiner's share) | etcd revisions per join | leave: rebalance p50 / max, moves | settled distribution | status size | idle 10 s: etcd revisions, status writes |")
	w("|---|---:|---:|---:|---:|---|---:|---:|")
	for _, r := range res.spread {
		w("| %d × %d | %.0f / %.0f ms | %s (%d) | %s | %.0f / %.0f ms, %s | %s | %.1f KB | %s, %s |", r.shards, r.pods,
			r.rebalance.P50, r.rebalance.Max, ints(r.moves), r.shards/r.pods, ints(r.etcdRevs),
			r.leaveRebalance.P50, r.leaveRebalance.Max, ints(r.leaveMoves), r.distribution, float64(r.statusBytes)/1024, r.idleRevs, r.idlePodRevs)
	}
	w("")
	w("A move is one etcd transaction (the holder's key deleted and recreated at the back of the line, §7.2) plus one")
	w("recreated key per candidate that stood between the holder and the joiner, so the revisions per join grow with the")
	w("joiner's place in each line; the joiner's own keys (one per shard) are created first. The status size is the JSON")
	w("of `.status` with every pod's name (%d characters here) in each lock's queue.", len("spread-256-join-0"))
	for _, r := range res.spread {
		for _, n := range r.notes {
			w("* %d×%d: %s", r.shards, r.pods, n)
		}
	}
	w("")
}
