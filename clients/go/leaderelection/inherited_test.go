package leaderelection_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/tools/leaderelection/resourcelock"

	lllock "leaderlock.dev/go/leaderelection"
)

func duration(d time.Duration) *time.Duration { return &d }

// longWait is long enough that no test mistakes the wait elapsing for a change settling it.
const longWait = time.Hour

// The line the lock logs when it holds back a leader role found at its first read.
const inheritedLine = "leader role found at the first read of the role file"

// polled waits until the elector has read the lock n more times, then checks that it has
// neither led nor written: it is waiting on the standby answer.
func (p *pod) polled(e *elector, n int64) {
	p.t.Helper()
	from := p.count.gets.Load()
	waitUntil(p.t, "the elector's polls", func() bool { return p.count.gets.Load() >= from+n })
	select {
	case ev := <-e.events:
		p.t.Fatalf("event %q while the inherited leader role is held back", ev.kind)
	default:
	}
	if writes := p.count.writes.Load(); writes != 0 {
		p.t.Fatalf("the elector tried %d writes while the inherited leader role is held back", writes)
	}
}

func TestAnInheritedLeaderRoleLeadsOnceAChangeOfTheFileConfirmsIt(t *testing.T) {
	p := newPodWaiting(t, "leader", "5", duration(longWait))
	e := startElector(t, p, false)
	p.logs.WaitFor(t, inheritedLine+" (token 5), inherited from before this process started; reporting standby for up to 1h0m0s", 1, patience)
	p.polled(e, 5)
	// The kubelet writes the pod again, and the role is the same: the same text in a new file.
	changed := p.set("leader", "5")
	started := e.next("started")
	assertWithin(t, "leading after the confirming change", changed, started.at, acquireBound)
	if started.token != "5" {
		t.Errorf("token while leading: %q, want 5", started.token)
	}
	p.logs.WaitFor(t, "inherited leader role (token 5) confirmed by a change of the file", 1, patience)
}

func TestAnInheritedLeaderRoleThatAChangeRevokesNeverLeads(t *testing.T) {
	const wait = 2 * time.Second
	began := time.Now()
	p := newPodWaiting(t, "leader", "5", duration(wait))
	e := startElector(t, p, false)
	p.logs.WaitFor(t, inheritedLine, 1, patience)
	p.set("standby", "")
	p.logs.WaitFor(t, "inherited leader role (token 5) revoked by a change of the file", 1, patience)
	if took := time.Since(began); took >= wait {
		t.Fatalf("the revocation was seen %v after the start, after the wait of %v: the test proves nothing", took, wait)
	}
	// Past the end of the wait, the elector still waits without writing.
	waitUntil(t, "the end of the wait", func() bool { return time.Since(began) > wait })
	p.polled(e, 3)
	if n := p.logs.Count("wait elapsed"); n != 0 {
		t.Fatalf("the wait of a revoked role elapsed: %q", p.logs.All())
	}
	// A later promotion is fresh: at once, with its own token.
	changed := p.set("leader", "9")
	started := e.next("started")
	assertWithin(t, "leading after a fresh promotion", changed, started.at, acquireBound)
	if started.token != "9" {
		t.Errorf("token while leading: %q, want 9", started.token)
	}
}

func TestAnInheritedLeaderRoleLeadsWhenTheWaitElapsesWithNoChange(t *testing.T) {
	const wait = 500 * time.Millisecond
	began := time.Now()
	p := newPodWaiting(t, "leader", "5", duration(wait))
	e := startElector(t, p, false)
	started := e.next("started")
	if took := started.at.Sub(began); took < wait {
		t.Fatalf("led %v after the start, before the wait of %v elapsed", took, wait)
	}
	assertWithin(t, "leading once the wait elapsed", began, started.at, wait+acquireBound)
	if p.count.writes.Load() == 0 || started.token != "5" {
		t.Fatalf("led with %d writes and token %q", p.count.writes.Load(), started.token)
	}
	p.logs.WaitFor(t, "inherited leader role (token 5) unchanged when the wait elapsed: acting on it", 1, patience)
}

func TestAnInheritedRoleWaitOfZeroLeadsAtOnce(t *testing.T) {
	began := time.Now()
	p := newPodWaiting(t, "leader", "5", duration(0))
	e := startElector(t, p, false)
	started := e.next("started")
	assertWithin(t, "leading with the rule off", began, started.at, acquireBound)
	if n := p.logs.Count("inherited"); n != 0 {
		t.Fatalf("the rule is off, yet: %q", p.logs.All())
	}
}

func TestALeaderRoleThatComesAfterTheFirstReadLeadsAtOnce(t *testing.T) {
	p := newPodWaiting(t, "standby", "", duration(longWait))
	e := startElector(t, p, false)
	p.polled(e, 3)
	changed := p.set("leader", "5")
	started := e.next("started")
	assertWithin(t, "leading on a fresh leader role", changed, started.at, acquireBound)
	if n := p.logs.Count("inherited"); n != 0 {
		t.Fatalf("a fresh leader role was taken for an inherited one: %q", p.logs.All())
	}
}

func TestGetAnswersStandbyAndUpdateFailsWhileAnInheritedLeaderRoleIsHeldBack(t *testing.T) {
	p := newPodWaiting(t, "leader", "20", nil)
	ctx := context.Background()
	claim := resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaseDurationSeconds: 2, LeaderTransitions: 1}
	// Reading the same update again settles nothing.
	for i := range 3 {
		if record, _, err := p.lock.Get(ctx); err != nil || record.HolderIdentity != lllock.StandbyIdentity {
			t.Fatalf("Get %d with an inherited leader role: %+v, %v; want the standby answer", i, record, err)
		}
	}
	err := p.lock.Update(ctx, claim)
	if !lllock.IsNotLeader(err) || !err.(*lllock.NotLeaderError).Inherited {
		t.Fatalf("claim of an inherited leader role: %v, want a NotLeaderError with Inherited", err)
	}
	p.logs.WaitFor(t, "reporting standby for up to 5s", 1, patience)
	if token := p.lock.Token(); token != "" {
		t.Fatalf("Token() = %q while held back", token)
	}
	p.set("leader", "20")
	if record, _, err := p.lock.Get(ctx); err != nil || record.HolderIdentity != "" {
		t.Fatalf("Get after the confirming change: %+v, %v; want no holder", record, err)
	}
	if err := p.lock.Update(ctx, claim); err != nil {
		t.Fatalf("claim after the confirming change: %v", err)
	}
	if token := p.lock.Token(); token != "20" {
		t.Fatalf("Token() = %q, want 20", token)
	}
}
