package leaderelection_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"leaderlock.dev/go/internal/kubelettest"
	lllock "leaderlock.dev/go/leaderelection"
	"leaderlock.dev/go/role"
)

// renewal is the renewal deadline of these tests: short, so that a lapse comes quickly.
const renewal = time.Second

// renew makes the kubelet write the annotations for role and token with the controller's
// renewal under mark, and says when it began (the lock may read the new file before the write
// returns).
func (p *pod) renew(roleValue, token string, mark int) time.Time {
	p.t.Helper()
	annotations := kubelettest.Role(lockName, roleValue, token)
	annotations[role.RenewedKey] = "1s " + strconv.Itoa(mark)
	began := time.Now()
	if err := p.volume.WriteAnnotations(annotations); err != nil {
		p.t.Fatal(err)
	}
	return began
}

func TestALeaderWhoseRenewalLapsesStopsAndLeadsAgainOnANewMark(t *testing.T) {
	p := newPod(t, "leader", "5")
	renewed := p.renew("leader", "5", 100)
	e := startElector(t, p, true)
	e.next("started")
	// The controller stops renewing: the lock reads no new mark for the deadline, answers as
	// while standby, and the elector gives up RenewDeadline later.
	got := e.collect("canceled", "stopped")
	stopped := got["stopped"]
	assertWithin(t, "stopping after the last new mark", renewed, stopped.at, renewal+retryPeriod+renewDeadline)
	if took := stopped.at.Sub(renewed); took < renewal+renewDeadline-50*time.Millisecond {
		t.Errorf("stopped %v after the last new mark, before the deadline plus RenewDeadline", took)
	}
	p.logs.WaitFor(t, "no renewal for 1s: the controller cannot reach this pod; acting as standby", 1, patience)
	if token := p.lock.Token(); token != "" {
		t.Errorf("token after the lapse: %q", token)
	}
	// The controller renews again, every third of the deadline: a new term, claimed once the
	// old one is over (the quarantine of a lost term, LeaseDurationSeconds + 1 s after the lapse).
	again := p.renew("leader", "5", 101)
	second := renewUntilStarted(t, p, e, 102)
	quarantine := time.Duration(int(leaseDuration/time.Second)+1) * time.Second
	assertWithin(t, "leading again after the new mark", again, second.at, quarantine+acquireBound)
	if second.token != "5" {
		t.Errorf("the new term's token %q, want 5", second.token)
	}
	p.logs.WaitFor(t, "renewed again: the controller reaches this pod; the leader role can be claimed again", 1, patience)
}

// renewUntilStarted plays the controller, renewing every third of the deadline from mark on,
// until the elector starts leading.
func renewUntilStarted(t *testing.T, p *pod, e *elector, mark int) event {
	t.Helper()
	deadline := time.After(patience)
	for ; ; mark++ {
		select {
		case ev := <-e.events:
			if ev.kind == "started" {
				return ev
			}
		case <-time.After(renewal / 3):
			p.renew("leader", "5", mark)
		case <-deadline:
			t.Fatalf("not leading again within %v", patience)
		}
	}
}

func TestRenewalsKeepALeaderLeading(t *testing.T) {
	p := newPod(t, "leader", "5")
	p.renew("leader", "5", 100)
	e := startElector(t, p, true)
	e.next("started")
	// The controller renews every third of the deadline: nothing ends, well past the deadline.
	for mark := 101; mark <= 106; mark++ {
		select {
		case ev := <-e.events:
			t.Fatalf("%q while renewed", ev.kind)
		case <-time.After(renewal / 3):
		}
		p.renew("leader", "5", mark)
	}
	if p.lock.Token() != "5" {
		t.Fatalf("token while renewed: %q", p.lock.Token())
	}
}

func TestUpdateFailsNamingTheLapsedRenewal(t *testing.T) {
	p := newPod(t, "leader", "5")
	p.renew("leader", "5", 100)
	ctx := context.Background()
	claim := resourcelock.LeaderElectionRecord{HolderIdentity: "pod-a", LeaseDurationSeconds: 2, LeaderTransitions: 1}
	firstRead := time.Now()
	if err := p.lock.Update(ctx, claim); err != nil {
		t.Fatalf("claim while leader and renewed: %v", err)
	}
	var lapsed *lllock.NotLeaderError
	waitUntil(t, "the renewal to lapse", func() bool {
		return errors.As(p.lock.Update(ctx, claim), &lapsed)
	})
	if took := time.Since(firstRead); took < renewal {
		t.Fatalf("lapsed %v after the first read, before the deadline", took)
	}
	want := "leaderlock: the role file says leader 5 for lock " + lockName + ", but no renewal for 1s: the controller cannot reach this pod; acting as standby"
	if !lapsed.RenewalLapsed || lapsed.RenewDeadline != renewal || lapsed.Error() != want {
		t.Fatalf("%+v: %v", lapsed, lapsed)
	}
	record, _, err := p.lock.Get(ctx)
	if err != nil || record.HolderIdentity != lllock.StandbyIdentity || p.lock.Token() != "" {
		t.Fatalf("Get after the lapse: %+v, %v", record, err)
	}
}
