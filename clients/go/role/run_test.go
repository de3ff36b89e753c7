package role_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/internal/testlog"
	"leaderlock.dev/go/role"
)

// call is one callback of Run.
type call struct {
	kind  string // "token", "started", "canceled", "returned", "stopped"
	token string
}

// runner runs role.Run on a kubelet-style volume and records the callbacks in order.
type runner struct {
	t       *testing.T
	volume  kubelettest.Volume
	calls   chan call
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run returned
	err     error         // what Run returned
	active  atomic.Int32  // OnStartedLeading calls running
	overlap atomic.Bool   // two ran at once
	// hold, when set, keeps OnStartedLeading from returning after its ctx ends until closed.
	hold chan struct{}
	// quit, when set, makes OnStartedLeading return by itself once closed.
	quit chan struct{}
	// wait is Config.InheritedRoleWait: off unless a test sets it, since most tests start
	// from a leader role to test something else.
	wait *time.Duration
	logs *testlog.Recorder
}

func newRunner(t *testing.T, annotations map[string]string) *runner {
	t.Helper()
	r := &runner{
		t:      t,
		volume: kubelettest.Volume{Dir: t.TempDir()},
		calls:  make(chan call, 64),
		done:   make(chan struct{}),
		wait:   duration(0),
		logs:   testlog.New(),
	}
	if err := r.volume.WriteAnnotations(annotations); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *runner) start(file string) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.err = role.Run(ctx, role.Config{
			Lock:              "l",
			File:              file,
			InheritedRoleWait: r.wait,
			Logger:            r.logs.Logger(),
			Callbacks: role.Callbacks{
				OnStartedLeading: func(ctx context.Context, token string) {
					if r.active.Add(1) > 1 {
						r.overlap.Store(true)
					}
					defer r.active.Add(-1)
					r.calls <- call{"started", token}
					select {
					case <-ctx.Done():
						r.calls <- call{"canceled", token}
						if r.hold != nil {
							<-r.hold
						}
					case <-r.quit:
					}
					r.calls <- call{"returned", token}
				},
				OnStoppedLeading: func() { r.calls <- call{kind: "stopped"} },
				OnNewToken:       func(token string) { r.calls <- call{"token", token} },
			},
		})
	}()
	r.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(patience):
			r.t.Error("Run did not return after its context ended")
		}
	})
}

func (r *runner) set(roleValue, token string) {
	r.t.Helper()
	if err := r.volume.WriteAnnotations(kubelettest.Role("l", roleValue, token)); err != nil {
		r.t.Fatal(err)
	}
}

// expect waits for exactly these calls, in this order (canceled/stopped/returned of one term
// may come in any order among themselves, so they are compared as a set).
func (r *runner) expect(want ...call) {
	r.t.Helper()
	var got []call
	deadline := time.After(patience)
	for len(got) < len(want) {
		select {
		case c := <-r.calls:
			got = append(got, c)
		case <-deadline:
			r.t.Fatalf("got %v, want %v", got, want)
		}
	}
	if !sameCalls(got, want) {
		r.t.Fatalf("got %v, want %v", got, want)
	}
	if r.overlap.Load() {
		r.t.Fatal("two OnStartedLeading calls ran at once")
	}
}

// sameCalls compares in order, except that a run of end-of-term calls compares as a set.
func sameCalls(got, want []call) bool {
	isEnd := func(c call) bool { return c.kind == "canceled" || c.kind == "stopped" || c.kind == "returned" }
	for i := 0; i < len(want); {
		if !isEnd(want[i]) {
			if got[i] != want[i] {
				return false
			}
			i++
			continue
		}
		j := i
		for j < len(want) && isEnd(want[j]) {
			j++
		}
		count := map[call]int{}
		for k := i; k < j; k++ {
			count[want[k]]++
			count[got[k]]--
		}
		for _, n := range count {
			if n != 0 {
				return false
			}
		}
		i = j
	}
	return true
}

// expectNothing checks that no callback has been called that expect has not taken.
func (r *runner) expectNothing() {
	r.t.Helper()
	select {
	case c := <-r.calls:
		r.t.Fatalf("unexpected call %v", c)
	default:
	}
}

func (r *runner) finished() error {
	r.t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(patience):
		r.t.Fatal("Run did not return")
		return nil
	}
}

func TestRunFollowsTheRoleThroughElectionsAndDemotions(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "standby", ""))
	r.start(r.volume.Path("annotations"))
	r.set("leader", "5")
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.set("standby", "")
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
	r.set("leader", "6")
	r.expect(call{"token", "6"}, call{"started", "6"})
	// The pod stops being a candidate: its annotation is removed, not set to standby.
	r.set("", "")
	r.expect(call{"canceled", "6"}, call{kind: "stopped"}, call{"returned", "6"})
}

func TestANewTokenWhileLeaderEndsTheTermBeforeTheNextOneStarts(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.hold = make(chan struct{})
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.set("leader", "9")
	r.expect(call{"canceled", "5"}, call{kind: "stopped"})
	// The old term's OnStartedLeading has not returned: the new one must wait for it.
	close(r.hold)
	r.expect(call{"returned", "5"}, call{"token", "9"}, call{"started", "9"})
}

func TestAnAbsentAnnotationAtTheStartIsWaitedThrough(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "", ""))
	r.start(r.volume.Path("annotations"))
	r.set("standby", "")
	r.set("leader", "3")
	r.expect(call{"token", "3"}, call{"started", "3"})
}

func TestASingleValueFileLeadsWithoutAToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l")
	if err := os.WriteFile(path, []byte("leader"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newRunner(t, nil)
	r.start(path)
	r.expect(call{"started", ""})
	if err := os.WriteFile(path, []byte("standby"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.expect(call{"canceled", ""}, call{kind: "stopped"}, call{"returned", ""})
}

func TestAnOnStartedLeadingThatReturnsIsNotRestartedWithinItsTerm(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.quit = make(chan struct{})
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	close(r.quit)
	r.expect(call{"returned", "5"})
	r.set("standby", "")
	r.expect(call{kind: "stopped"})
	// A new term starts it again (and this one returns at once too: quit is closed).
	r.set("leader", "8")
	r.expect(call{"token", "8"}, call{"started", "8"}, call{"returned", "8"})
}

func TestAnUnusableFileEndsTheTermAndRun(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	// A hostile rewrite: not something the kubelet writes.
	if err := r.volume.Write(map[string][]byte{"annotations": []byte("leaderlock.dev/l=\"leader\"\ngarbage")}); err != nil {
		t.Fatal(err)
	}
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
	if err := r.finished(); role.KindOf(err) != role.NotKeyValue {
		t.Fatalf("Run returned %v, want a NotKeyValue error", err)
	}
}

func TestRunReturnsOnceTheContextEndsAndTheLeaderHasStopped(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.cancel()
	if err := r.finished(); err != nil {
		t.Fatalf("Run returned %v after its context ended, want nil", err)
	}
	// Run returned only after OnStartedLeading had: all its calls are in.
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
}

func TestRunRefusesWhatCannotWork(t *testing.T) {
	ctx := context.Background()
	if err := role.Run(ctx, role.Config{Lock: "l"}); !errors.Is(err, role.ErrNoCallback) {
		t.Errorf("no OnStartedLeading: %v", err)
	}
	noop := role.Callbacks{OnStartedLeading: func(context.Context, string) {}}
	if err := role.Run(ctx, role.Config{Lock: "L", Callbacks: noop}); role.KindOf(err) != role.InvalidLock {
		t.Errorf("invalid lock: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "annotations")
	if err := role.Run(ctx, role.Config{Lock: "l", File: missing, Callbacks: noop}); role.KindOf(err) != role.Unreadable {
		t.Errorf("missing file: %v", err)
	}
}

func TestWaitLeaderReturnsOnceLeader(t *testing.T) {
	volume := kubelettest.Volume{Dir: t.TempDir()}
	if err := volume.WriteAnnotations(kubelettest.Role("l", "standby", "")); err != nil {
		t.Fatal(err)
	}
	done := make(chan role.Status, 1)
	go func() {
		status, err := role.WaitLeader(context.Background(), volume.Path("annotations"), "l")
		if err != nil {
			t.Error(err)
		}
		done <- status
	}()
	if err := volume.WriteAnnotations(kubelettest.Role("l", "leader", "77")); err != nil {
		t.Fatal(err)
	}
	select {
	case status := <-done:
		if status != (role.Status{Role: role.Leader, Token: 77}) {
			t.Fatalf("WaitLeader returned %v", status)
		}
	case <-time.After(patience):
		t.Fatal("WaitLeader did not return")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := volume.WriteAnnotations(kubelettest.Role("l", "standby", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := role.WaitLeader(ctx, volume.Path("annotations"), "l"); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitLeader with an ended context: %v", err)
	}
}

func duration(d time.Duration) *time.Duration { return &d }
