package main

// Kubernetes side of the harness: clients, pods it plays the kubelet for, LeaderLocks, Leases,
// informer-fed trackers that stamp the moment a condition becomes true, apiserver /metrics.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

var llGVR = schema.GroupVersionResource{Group: "leaderlock.dev", Version: "v1alpha1", Resource: "leaderlocks"}

type kube struct {
	cs  *kubernetes.Clientset
	dyn dynamic.Interface
}

func newKube(kubeconfig string) *kube {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	must(err)
	cfg.QPS, cfg.Burst = 2000, 4000
	cfg.UserAgent = "leaderlock-bench"
	return &kube{cs: kubernetes.NewForConfigOrDie(cfg), dyn: dynamic.NewForConfigOrDie(cfg)}
}

func (k *kube) namespace(ns string) {
	_, err := k.cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		must(err)
	}
}

// readyPod creates a pod labelled ll=<lock> and marks it Running and Ready (no kubelet runs).
func (k *kube) readyPod(ns, name, lock string) error { return k.readyPodOn(ns, name, lock, "") }

// readyPodOn is readyPod bound to node (spec.nodeName; "" leaves it unscheduled).
func (k *kube) readyPodOn(ns, name, lock, node string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"ll": lock}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "busybox:1.36"}}},
	}
	if _, err := k.cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	return k.setReady(ns, name, true)
}

func (k *kube) setReady(ns, name string, ready bool) error {
	st := "False"
	if ready {
		st = "True"
	}
	patch := fmt.Sprintf(`{"status":{"phase":"Running","conditions":[{"type":"Ready","status":%q}]}}`, st)
	_, err := k.cs.CoreV1().Pods(ns).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
	return err
}

func (k *kube) deletePod(ns, name string) error {
	zero := int64(0)
	return k.cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}

// createLeaderLock creates LeaderLock name over pods ll=<name> with the given spec fields
// besides the selector.
func (k *kube) createLeaderLock(ns, name string, spec map[string]any) error {
	spec["selector"] = map[string]any{"matchLabels": map[string]any{"ll": name}}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderlock.dev/v1alpha1",
		"kind":       "LeaderLock",
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
	_, err := k.dyn.Resource(llGVR).Namespace(ns).Create(context.Background(), obj, metav1.CreateOptions{})
	return err
}

// leaderLock creates a LeaderLock named name with one lock of the same name over pods ll=<name>.
func (k *kube) leaderLock(ns, name string) error {
	return k.createLeaderLock(ns, name, map[string]any{"locks": []any{map[string]any{"name": name}}, "ttlSeconds": int64(15)})
}

// sharedLeaderLock creates a LeaderLock named name over pods ll=<name> whose one lock, also
// named name, is the etcd prefix etcdKey: LeaderLocks of other clusters naming it share the lock.
func (k *kube) sharedLeaderLock(ns, name, etcdKey string, ttl int) error {
	lock := map[string]any{"name": name, "etcdKey": etcdKey}
	return k.createLeaderLock(ns, name, map[string]any{"locks": []any{lock}, "ttlSeconds": int64(ttl)})
}

// rawMetrics is apiserver_request_total summed by verb/resource/subresource.
type rawMetrics map[string]float64

func (k *kube) apiMetrics() rawMetrics {
	b, err := k.cs.RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	must(err)
	out := rawMetrics{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndexByte(l, '}')
		labels := map[string]string{}
		for _, kv := range strings.Split(l[len("apiserver_request_total{"):end], ",") {
			if i := strings.IndexByte(kv, '='); i > 0 {
				labels[kv[:i]] = strings.Trim(kv[i+1:], `"`)
			}
		}
		v, _ := strconv.ParseFloat(strings.TrimSpace(l[end+1:]), 64)
		res := labels["resource"]
		if labels["subresource"] != "" {
			res += "/" + labels["subresource"]
		}
		out[labels["verb"]+" "+res] += v
	}
	return out
}

var writeVerbs = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "DELETE": true, "APPLY": true, "DELETECOLLECTION": true}

// delta of after-before, keeping requests whose resource passes keep; writes only if writes.
func metricDelta(before, after rawMetrics, writes bool, keep func(res string) bool) (total float64, byKey map[string]float64) {
	byKey = map[string]float64{}
	for k, v := range after {
		verb, res, _ := strings.Cut(k, " ")
		if writes && !writeVerbs[verb] {
			continue
		}
		if !keep(res) {
			continue
		}
		if d := v - before[k]; d > 0 {
			byKey[k] = d
			total += d
		}
	}
	return total, byKey
}

func fmtByKey(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, v))
	}
	sortStrings(parts)
	return strings.Join(parts, ", ")
}

// waiter is a condition checked after every event; fired receives the event's receipt time.
type waiter struct {
	cond  func(t *tracker) bool
	fired chan time.Time
}

// tracker mirrors the pods and LeaderLocks of one namespace through informers. Every event is
// stamped on receipt and the registered conditions are checked against the state after it.
type tracker struct {
	mu      sync.Mutex
	pods    map[string][2]string // pod -> (lock, role)
	holders map[string][2]string // LeaderLock -> (holder, token)
	leases  map[string]string    // Lease -> holderIdentity
	// counters maintained incrementally for the 1k/10k conditions
	annotated, leaders, held int
	roleChanges              int
	// moving: lock or Lease -> the holder it had when a mass failover began; movedAt: when the
	// watch first showed another pod annotated leader (another holderIdentity) for it.
	moving  map[string]string
	movedAt map[string]time.Time
	waiters []*waiter
	stop    chan struct{}
}

func (k *kube) track(ns string, withLeases bool) *tracker {
	t := &tracker{pods: map[string][2]string{}, holders: map[string][2]string{}, leases: map[string]string{}, stop: make(chan struct{})}
	f := informers.NewSharedInformerFactoryWithOptions(k.cs, 0, informers.WithNamespace(ns))
	pods := f.Core().V1().Pods().Informer()
	_, _ = pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { t.pod(o, false) },
		UpdateFunc: func(_, o any) { t.pod(o, false) },
		DeleteFunc: func(o any) { t.pod(o, true) },
	})
	synced := []cache.InformerSynced{pods.HasSynced}
	if withLeases {
		leases := f.Coordination().V1().Leases().Informer()
		_, _ = leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { t.lease(o) },
			UpdateFunc: func(_, o any) { t.lease(o) },
		})
		synced = append(synced, leases.HasSynced)
	}
	df := dynamicinformer.NewFilteredDynamicSharedInformerFactory(k.dyn, 0, ns, nil)
	lls := df.ForResource(llGVR).Informer()
	_, _ = lls.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { t.ll(o) },
		UpdateFunc: func(_, o any) { t.ll(o) },
	})
	synced = append(synced, lls.HasSynced)
	f.Start(t.stop)
	df.Start(t.stop)
	if !cache.WaitForCacheSync(t.stop, synced...) {
		fatalf("informers of %s did not sync", ns)
	}
	return t
}

func (t *tracker) pod(o any, deleted bool) {
	now := time.Now()
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	lock := p.Labels["ll"]
	role := p.Annotations["leaderlock.dev/"+lock]
	if deleted {
		role = ""
	}
	t.apply(now, func() {
		old := t.pods[p.Name]
		if old[1] != role {
			t.roleChanges++
		}
		t.count(old[1], -1)
		t.count(role, +1)
		if deleted {
			delete(t.pods, p.Name)
		} else {
			t.pods[p.Name] = [2]string{lock, role}
		}
		if old, ok := t.moving[lock]; ok && role == "leader" && p.Name != old {
			t.moved(lock, now)
		}
	})
}

func (t *tracker) count(role string, d int) {
	if role != "" {
		t.annotated += d
	}
	if role == "leader" {
		t.leaders += d
	}
}

func (t *tracker) ll(o any) {
	now := time.Now()
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return
	}
	locks, _, _ := unstructured.NestedSlice(u.Object, "status", "locks")
	holder, token := "", ""
	if len(locks) > 0 {
		if m, ok := locks[0].(map[string]any); ok {
			holder, _ = m["holder"].(string)
			token, _ = m["fencingToken"].(string)
		}
	}
	t.apply(now, func() {
		old := t.holders[u.GetName()]
		isPod := func(h string) bool { return h != "" && !strings.HasPrefix(h, "etcd:") }
		if isPod(old[0]) {
			t.held--
		}
		if isPod(holder) {
			t.held++
		}
		t.holders[u.GetName()] = [2]string{holder, token}
	})
}

func (t *tracker) lease(o any) {
	now := time.Now()
	l, ok := o.(*coordv1.Lease)
	if !ok {
		return
	}
	h := ""
	if l.Spec.HolderIdentity != nil {
		h = *l.Spec.HolderIdentity
	}
	t.apply(now, func() {
		t.leases[l.Name] = h
		if old, ok := t.moving[l.Name]; ok && h != "" && h != old {
			t.moved(l.Name, now)
		}
	})
}

// expectMoves starts a mass failover: each of holders (lock or Lease -> holder now) counts as
// moved when the watch first shows another holder.
func (t *tracker) expectMoves(holders map[string]string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.moving, t.movedAt = holders, map[string]time.Time{}
}

func (t *tracker) moved(name string, at time.Time) {
	delete(t.moving, name)
	t.movedAt[name] = at
}

func (t *tracker) apply(now time.Time, f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f()
	kept := t.waiters[:0]
	for _, w := range t.waiters {
		if w.cond(t) {
			w.fired <- now
		} else {
			kept = append(kept, w)
		}
	}
	t.waiters = kept
}

// wait returns when cond holds: the receipt time of the event that made it true (or now, if
// it already held).
func (t *tracker) wait(what string, timeout time.Duration, cond func(t *tracker) bool) (time.Time, error) {
	t.mu.Lock()
	if cond(t) {
		t.mu.Unlock()
		return time.Now(), nil
	}
	w := &waiter{cond: cond, fired: make(chan time.Time, 1)}
	t.waiters = append(t.waiters, w)
	t.mu.Unlock()
	select {
	case at := <-w.fired:
		return at, nil
	case <-time.After(timeout):
		t.mu.Lock()
		for i, x := range t.waiters {
			if x == w {
				t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
				break
			}
		}
		t.mu.Unlock()
		select { // fired while we took the lock
		case at := <-w.fired:
			return at, nil
		default:
		}
		return time.Time{}, fmt.Errorf("timed out after %s waiting for %s", timeout, what)
	}
}

// leaderOf is the one pod annotated leader for lock, or "" if none or several.
func (t *tracker) leaderOf(lock string) string {
	found := ""
	for p, lr := range t.pods {
		if lr[0] == lock && lr[1] == "leader" {
			if found != "" {
				return ""
			}
			found = p
		}
	}
	return found
}

// settled: lock has exactly one leader and n-1 standbys.
func (t *tracker) settled(lock string, n int) bool {
	leaders, standbys := 0, 0
	for _, lr := range t.pods {
		if lr[0] == lock {
			switch lr[1] {
			case "leader":
				leaders++
			case "standby":
				standbys++
			}
		}
	}
	return leaders == 1 && standbys == n-1
}

func (t *tracker) snapshotHolders() map[string][2]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string][2]string, len(t.holders))
	for k, v := range t.holders {
		out[k] = v
	}
	return out
}
