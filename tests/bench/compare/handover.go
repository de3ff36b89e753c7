package main

// The handover phase: a planned handover (issue 15's Handover request, what `kubectl
// leaderlock handover --to` creates) from the request's creation to the target pod annotated
// leader, and to the request's final phase, for each candidate in turn.

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
)

var handoverGVR = schema.GroupVersionResource{Group: "leaderlock.dev", Version: "v1alpha1", Resource: "handovers"}

// handoverResult: request created → target annotated leader, and → phase Done; twoLeaders
// counts the handovers during which the pods watch saw two pods annotated leader at once
// (promised: 0).
type handoverResult struct {
	annotated, done *stats
	twoLeaders      int
}

// handoverPhase hands the lock of one LeaderLock (3 pods) to the next pod in turn, n times.
func handoverPhase() {
	n := cfg.handovers
	// main applies every CRD of -crd (crds/); this phase also needs the Handover's.
	kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/handovers.leaderlock.dev")
	logf("handover: %d planned handovers (Handover created → target annotated leader)", n)
	ns, lock := "bench-handover", "ho"
	k.namespace(ns)
	t := k.track(ns, false)
	defer close(t.stop)
	pods := []string{"ho-0", "ho-1", "ho-2"}
	for _, p := range pods {
		must(k.readyPod(ns, p, lock))
	}
	must(k.leaderLock(ns, lock))
	r := &handoverResult{}
	var annotated, done []time.Duration
	for i := 0; i < n; i++ {
		_, err := t.wait("3 settled candidates", 60*time.Second, func(t *tracker) bool { return t.settled(lock, 3) })
		must(err)
		t.mu.Lock()
		old := t.leaderOf(lock)
		t.mu.Unlock()
		target := pods[(indexOf(pods, old)+1)%len(pods)]
		// Registered before the request exists, so each fires with the receipt time of the event
		// that made it true: the target promoted, or (never, we hope) two leaders at once.
		promoted := t.when(func(t *tracker) bool { return t.leaderOf(lock) == target })
		twoLeaders := t.when(func(t *tracker) bool { return t.leaders > 1 })
		t0 := time.Now()
		created, err := k.createHandover(ns, lock, target)
		must(err)
		fin := <-k.watchFinal(ns, created)
		if fin.err != nil || fin.phase != "Done" {
			fatalf("handover %d (%s → %s): phase %q, reason %q, %v", i, old, target, fin.phase, fin.reason, fin.err)
		}
		done = append(done, fin.at.Sub(t0))
		select {
		case at := <-promoted:
			annotated = append(annotated, at.Sub(t0))
		case <-time.After(30 * time.Second):
			fatalf("handover %d (%s → %s): Done, but the pods watch never showed %s as leader", i, old, target, target)
		}
		select {
		case <-twoLeaders:
			r.twoLeaders++
		default:
		}
		t.forget(twoLeaders)
	}
	a, d := summarize(annotated), summarize(done)
	r.annotated, r.done = &a, &d
	res.handover = r
	logf("handover: n=%d annotated p50=%.1fms p95=%.1fms p99=%.1fms max=%.1fms; done p99=%.1fms", a.N, a.P50, a.P95, a.P99, a.Max, d.P99)
}

// when registers cond with the tracker and returns the channel that receives the receipt time
// of the event that makes it true (at once, if it already holds).
func (t *tracker) when(cond func(t *tracker) bool) <-chan time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &waiter{cond: cond, fired: make(chan time.Time, 1)}
	if cond(t) {
		w.fired <- time.Now()
	} else {
		t.waiters = append(t.waiters, w)
	}
	return w.fired
}

// forget drops the waiter whose channel is fired, if it never fired.
func (t *tracker) forget(fired <-chan time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, w := range t.waiters {
		if w.fired == fired {
			t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
			return
		}
	}
}

func indexOf(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}

// createHandover creates a Handover of lock (LeaderLock of the same name) to pod `to`.
func (k *kube) createHandover(ns, lock, to string) (*unstructured.Unstructured, error) {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderlock.dev/v1alpha1",
		"kind":       "Handover",
		"metadata":   map[string]any{"generateName": lock + "-" + lock + "-"},
		"spec":       map[string]any{"leaderLock": lock, "lock": lock, "to": to},
	}}
	return k.dyn.Resource(handoverGVR).Namespace(ns).Create(context.Background(), obj, metav1.CreateOptions{})
}

type final struct {
	phase, reason string
	at            time.Time
	err           error
}

// watchFinal watches one Handover from its creation's resourceVersion and reports the receipt
// time of the event that shows a final phase.
func (k *kube) watchFinal(ns string, created *unstructured.Unstructured) <-chan final {
	out := make(chan final, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	w, err := k.dyn.Resource(handoverGVR).Namespace(ns).Watch(ctx, metav1.ListOptions{
		FieldSelector:   "metadata.name=" + created.GetName(),
		ResourceVersion: created.GetResourceVersion(),
	})
	if err != nil {
		cancel()
		out <- final{err: err}
		return out
	}
	go func() {
		defer cancel()
		defer w.Stop()
		for ev := range w.ResultChan() {
			now := time.Now()
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || ev.Type == watch.Error {
				continue
			}
			phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
			reason, _, _ := unstructured.NestedString(u.Object, "status", "reason")
			if phase != "" && phase != "Pending" {
				out <- final{phase: phase, reason: reason, at: now}
				return
			}
		}
		out <- final{err: fmt.Errorf("Handover %s/%s: no final phase within 30s", ns, created.GetName())}
	}()
	return out
}

// hoRow is a row of the failover table for a planned handover, "n/a" when not measured.
func hoRow(cause string, row func(h *handoverResult) *stats) string {
	if res.handover == nil {
		return fmt.Sprintf("| LeaderLock | %s | n/a | n/a | n/a | n/a | n/a |", cause)
	}
	s := row(res.handover)
	return fmt.Sprintf("| LeaderLock | %s | %d | %.1f | %.1f | %.1f | %.1f |", cause, s.N, s.P50, s.P95, s.P99, s.Max)
}

// handoverP99 is the planned handover's p99 in ms (target < 100 ms), "n/a" when not measured.
func handoverP99() string {
	if res.handover == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", res.handover.annotated.P99)
}

// handoverTwoLeaders is how many handovers showed two leaders at once, "" when not measured.
func handoverTwoLeaders(r *results) string {
	if r.handover == nil {
		return ""
	}
	return fmt.Sprint(r.handover.twoLeaders)
}
