package leaderelection_test

import (
	"context"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/internal/testlog"
	lllock "leaderlock.dev/go/leaderelection"
	"leaderlock.dev/go/role"
)

const lockName = "configmap-counter"

// Fast timing, so that the tests measure the bounds in well under a second each. With these,
// LeaseDurationSeconds is 1 and the quarantine after a token change 2 s.
const (
	retryPeriod   = 100 * time.Millisecond
	renewDeadline = 400 * time.Millisecond
	leaseDuration = 1 * time.Second
	// acquireBound: the elector's acquire loop waits RetryPeriod plus up to 120% jitter.
	acquireBound = retryPeriod * 22 / 10
	// slack absorbs scheduling on a busy 2-core machine; the bounds themselves are what the
	// package documentation promises.
	slack = 1500 * time.Millisecond
	// patience bounds every wait for something that must happen.
	patience = 10 * time.Second
)

// pod is one pod's downward-API volume and its lock.
type pod struct {
	t      *testing.T
	volume kubelettest.Volume
	lock   *lllock.ResourceLock
	count  *countingLock
	logs   *testlog.Recorder
}

// newPod is a pod whose lock has the inherited-role rule off: most tests start from a leader
// role to test something else.
func newPod(t *testing.T, roleValue, token string) *pod {
	t.Helper()
	return newPodWaiting(t, roleValue, token, duration(0))
}

// newPodWaiting is a pod whose lock holds an inherited leader role back for wait (nil: the
// default).
func newPodWaiting(t *testing.T, roleValue, token string, wait *time.Duration) *pod {
	t.Helper()
	volume := kubelettest.Volume{Dir: t.TempDir()}
	p := &pod{t: t, volume: volume, logs: testlog.New()}
	p.set(roleValue, token)
	lock, err := lllock.NewResourceLock(lllock.Config{
		Lock:              lockName,
		File:              volume.Path("annotations"),
		Identity:          "pod-a",
		InheritedRoleWait: wait,
		Logger:            p.logs.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	p.lock = lock
	p.count = &countingLock{Interface: lock}
	return p
}

// set makes the kubelet write the annotations for role ("" for none) and token.
func (p *pod) set(roleValue, token string) time.Time {
	p.t.Helper()
	if err := p.volume.WriteAnnotations(kubelettest.Role(lockName, roleValue, token)); err != nil {
		p.t.Fatal(err)
	}
	return time.Now()
}

// countingLock counts the elector's calls.
type countingLock struct {
	resourcelock.Interface
	gets, writes atomic.Int64
}

func (c *countingLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	c.gets.Add(1)
	return c.Interface.Get(ctx)
}

func (c *countingLock) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	c.writes.Add(1)
	return c.Interface.Create(ctx, r)
}

func (c *countingLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	c.writes.Add(1)
	return c.Interface.Update(ctx, r)
}

// event is a callback of the elector.
type event struct {
	kind  string // "started", "canceled" (OnStartedLeading's ctx) or "stopped"
	at    time.Time
	token string
}

// elector runs client-go's LeaderElector on a pod's lock, RunOrDie after RunOrDie, as a
// program that re-enters the election after losing it does.
type elector struct {
	t      *testing.T
	events chan event
	cancel context.CancelFunc
	done   chan struct{}
}

func startElector(t *testing.T, p *pod, again bool) *elector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &elector{t: t, events: make(chan event, 64), cancel: cancel, done: make(chan struct{})}
	config := leaderelection.LeaderElectionConfig{
		Lock:          p.count,
		LeaseDuration: leaseDuration,
		RenewDeadline: renewDeadline,
		RetryPeriod:   retryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				e.events <- event{kind: "started", at: time.Now(), token: p.lock.Token()}
				<-ctx.Done()
				e.events <- event{kind: "canceled", at: time.Now()}
			},
			OnStoppedLeading: func() { e.events <- event{kind: "stopped", at: time.Now()} },
		},
		Name: lockName,
	}
	go func() {
		defer close(e.done)
		for {
			leaderelection.RunOrDie(ctx, config)
			if !again || ctx.Err() != nil {
				return
			}
		}
	}()
	t.Cleanup(e.stop)
	return e
}

func (e *elector) stop() {
	e.cancel()
	<-e.done
}

// next waits for the next event of kind, skipping "stopped" events of runs that never led.
func (e *elector) next(kind string) event {
	e.t.Helper()
	deadline := time.After(patience)
	for {
		select {
		case ev := <-e.events:
			if ev.kind == kind {
				return ev
			}
			if ev.kind == "started" {
				e.t.Fatalf("started leading while waiting for %q", kind)
			}
		case <-deadline:
			e.t.Fatalf("no %q within %v", kind, patience)
		}
	}
}

// collect waits for one event of each kind, in any order.
func (e *elector) collect(kinds ...string) map[string]event {
	e.t.Helper()
	got := map[string]event{}
	deadline := time.After(patience)
	for len(got) < len(kinds) {
		select {
		case ev := <-e.events:
			if !slices.Contains(kinds, ev.kind) {
				e.t.Fatalf("%q while waiting for %v", ev.kind, kinds)
			}
			got[ev.kind] = ev
		case <-deadline:
			e.t.Fatalf("not all of %v within %v: %v", kinds, patience, got)
		}
	}
	return got
}

// waitUntil polls cond until it holds, failing after patience.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, patience)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not synchronising on time
	}
}

func assertWithin(t *testing.T, what string, from, at time.Time, bound time.Duration) {
	t.Helper()
	if took := at.Sub(from); took > bound+slack {
		t.Errorf("%s took %v, more than the bound %v (+ %v slack)", what, took, bound, slack)
	} else {
		t.Logf("%s took %v (bound %v)", what, took, bound)
	}
}

func TestAStandbyWaitsWithoutWritingThenLeadsOnceTheFileSaysLeader(t *testing.T) {
	p := newPod(t, "standby", "")
	e := startElector(t, p, false)
	waitUntil(t, "ten reads of the role file", func() bool { return p.count.gets.Load() >= 10 })
	select {
	case ev := <-e.events:
		t.Fatalf("event %q while standby", ev.kind)
	default:
	}
	if writes := p.count.writes.Load(); writes != 0 {
		t.Fatalf("the elector tried %d writes while standby; it should wait on the standby record", writes)
	}
	changed := p.set("leader", "41")
	started := e.next("started")
	assertWithin(t, "becoming leader", changed, started.at, acquireBound)
	if started.token != "41" {
		t.Errorf("token while leading: %q, want 41", started.token)
	}
}

func TestALeaderStopsWithinRetryPeriodPlusRenewDeadlineOfTheFileSayingStandby(t *testing.T) {
	for _, demotion := range []struct{ name, role string }{{"standby", "standby"}, {"no annotation", ""}} {
		t.Run(demotion.name, func(t *testing.T) {
			p := newPod(t, "leader", "7")
			e := startElector(t, p, false)
			e.next("started")
			// Renewals are file reads: let a few happen.
			reads := p.count.gets.Load() + p.count.writes.Load()
			waitUntil(t, "renewals", func() bool { return p.count.gets.Load()+p.count.writes.Load() >= reads+3 })

			changed := p.set(demotion.role, "")
			// client-go cancels the context, then calls OnStoppedLeading: the two events race.
			got := e.collect("canceled", "stopped")
			canceled, stopped := got["canceled"], got["stopped"]
			assertWithin(t, "OnStartedLeading's context canceled", changed, canceled.at, retryPeriod+renewDeadline)
			assertWithin(t, "OnStoppedLeading", changed, stopped.at, retryPeriod+renewDeadline)
			// The elector gives up only once RenewDeadline has passed since its first failed renewal.
			if took := stopped.at.Sub(changed); took < renewDeadline-50*time.Millisecond {
				t.Errorf("stopped after %v, before RenewDeadline %v: the mapping is not what the documentation says", took, renewDeadline)
			}
			if token := p.lock.Token(); token != "" {
				t.Errorf("token after demotion: %q", token)
			}
		})
	}
}

func TestANewTokenWhileLeadingEndsTheTermAndTheNextElectorTakesTheNewOne(t *testing.T) {
	p := newPod(t, "leader", "5")
	e := startElector(t, p, true)
	if first := e.next("started"); first.token != "5" {
		t.Fatalf("first term's token %q, want 5", first.token)
	}
	// Another pod held the lock in between; the kubelet folded it into one update.
	changed := p.set("leader", "9")
	stopped := e.next("stopped")
	assertWithin(t, "ending the term of token 5", changed, stopped.at, retryPeriod+renewDeadline)
	second := e.next("started")
	if second.token != "9" {
		t.Fatalf("second term's token %q, want 9", second.token)
	}
	// The new term is held back for one lease (LeaseDurationSeconds + 1 s), then claimed at
	// the elector's next poll.
	quarantine := time.Duration(int(leaseDuration/time.Second)+1) * time.Second
	assertWithin(t, "taking the term of token 9", changed, second.at, retryPeriod+quarantine+acquireBound)
	if took := second.at.Sub(changed); took < quarantine-100*time.Millisecond {
		t.Errorf("the new term began %v after the token changed, before the %v quarantine", took, quarantine)
	}
}

func TestAnUnreadableFileStopsTheLeaderAndTheSameTermResumesAtOnce(t *testing.T) {
	p := newPod(t, "leader", "12")
	e := startElector(t, p, true)
	e.next("started")
	link := p.volume.Path("annotations")
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	stopped := e.next("stopped")
	assertWithin(t, "stopping on an unreadable file", removed, stopped.at, retryPeriod+renewDeadline)
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	again := e.next("started")
	if again.token != "12" {
		t.Fatalf("token after the file came back: %q, want 12", again.token)
	}
	assertWithin(t, "taking the same term up again", restored, again.at, acquireBound)
}

func TestTwoPodsTakeTurnsAsTheFilesSay(t *testing.T) {
	a, b := newPod(t, "leader", "3"), newPod(t, "standby", "")
	electorA, electorB := startElector(t, a, true), startElector(t, b, true)
	electorA.next("started")
	// LeaderLock's controller demotes the old holder before it promotes the new one.
	a.set("standby", "")
	electorA.next("stopped")
	b.set("leader", "4")
	if started := electorB.next("started"); started.token != "4" {
		t.Fatalf("b's token %q, want 4", started.token)
	}
	b.set("standby", "")
	electorB.next("stopped")
	a.set("leader", "6")
	if started := electorA.next("started"); started.token != "6" {
		t.Fatalf("a's token %q, want 6", started.token)
	}
}

func TestUpdateSucceedsOnlyWhileTheFileSaysLeader(t *testing.T) {
	p := newPod(t, "standby", "")
	ctx := context.Background()
	claim := resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaseDurationSeconds: 2, LeaderTransitions: 1}
	if err := p.lock.Update(ctx, claim); !lllock.IsNotLeader(err) {
		t.Fatalf("claim while standby: %v, want a NotLeaderError", err)
	}
	record, _, err := p.lock.Get(ctx)
	if err != nil || record.HolderIdentity != lllock.StandbyIdentity {
		t.Fatalf("Get while standby: %+v, %v", record, err)
	}
	p.set("leader", "20")
	if record, _, err = p.lock.Get(ctx); err != nil || record.HolderIdentity != "" {
		t.Fatalf("Get while leader and unclaimed: %+v, %v; want no holder", record, err)
	}
	if err := p.lock.Create(ctx, resourcelock.LeaderElectionRecord{HolderIdentity: "someone-else"}); err == nil {
		t.Fatal("a record of another identity was accepted")
	}
	if err := p.lock.Update(ctx, claim); err != nil {
		t.Fatalf("claim while leader: %v", err)
	}
	if record, _, err = p.lock.Get(ctx); err != nil || record.HolderIdentity != "pod-a" || record.LeaderTransitions != 1 {
		t.Fatalf("Get while claimed: %+v, %v", record, err)
	}
	if token := p.lock.Token(); token != "20" {
		t.Fatalf("Token() = %q, want 20", token)
	}
	if err := p.lock.Update(ctx, claim); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	// Releasing (ReleaseOnCancel) ends the term without a quarantine.
	if err := p.lock.Update(ctx, resourcelock.LeaderElectionRecord{LeaderTransitions: 1}); err != nil {
		t.Fatalf("release: %v", err)
	}
	if record, _, err = p.lock.Get(ctx); err != nil || record.HolderIdentity != "" {
		t.Fatalf("Get after release: %+v, %v; want no holder", record, err)
	}
}

func TestGetAnswersDifferWhileStandbyAndStayTheSameDuringAQuarantine(t *testing.T) {
	p := newPod(t, "standby", "")
	ctx := context.Background()
	_, raw1, _ := p.lock.Get(ctx)
	_, raw2, _ := p.lock.Get(ctx)
	if string(raw1) == string(raw2) {
		t.Fatal("two standby answers are equal: the elector would let the standby lease expire and try writes")
	}
	p.set("leader", "30")
	claim := resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaseDurationSeconds: 60, LeaderTransitions: 1}
	if err := p.lock.Update(ctx, claim); err != nil {
		t.Fatal(err)
	}
	p.set("leader", "31")
	record, raw1, err := p.lock.Get(ctx)
	if err != nil || record.HolderIdentity != lllock.StandbyIdentity || record.LeaseDurationSeconds != 61 {
		t.Fatalf("Get after a token change: %+v, %v", record, err)
	}
	_, raw2, _ = p.lock.Get(ctx)
	if string(raw1) != string(raw2) {
		t.Fatal("the quarantine record changed between reads: the elector would never see it expire")
	}
	if err := p.lock.Update(ctx, claim); err == nil {
		t.Fatal("a renewal of the old term was accepted after the token changed")
	}
	if err := p.lock.Update(ctx, resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaderTransitions: 2}); err == nil {
		t.Fatal("a claim of the new term was accepted during the quarantine")
	}
}

func TestConfigIsChecked(t *testing.T) {
	if _, err := lllock.NewResourceLock(lllock.Config{Lock: "Bad_Name"}); role.KindOf(err) != role.InvalidLock {
		t.Errorf("bad lock name: %v", err)
	}
	if _, err := lllock.NewResourceLock(lllock.Config{Lock: "ok", Identity: lllock.StandbyIdentity}); err == nil {
		t.Error("the reserved identity was accepted")
	}
	lock, err := lllock.NewResourceLock(lllock.Config{Lock: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if host, _ := os.Hostname(); lock.Identity() != host {
		t.Errorf("default identity %q, want the host name %q", lock.Identity(), host)
	}
	defer func() {
		if recover() == nil {
			t.Error("MustNewResourceLock did not panic on a bad lock name")
		}
	}()
	lllock.MustNewResourceLock(lllock.Config{Lock: "-"})
}

// The elector and the lock are used from the elector's goroutines and the program's (Token).
func TestTheLockIsSafeForConcurrentUse(t *testing.T) {
	p := newPod(t, "leader", "1")
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				_, _, _ = p.lock.Get(ctx)
				_ = p.lock.Update(ctx, resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaderTransitions: i % 2})
				_ = p.lock.Token()
			}
		}()
	}
	wg.Wait()
}
