package role_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/role"
)

// longWait is long enough that no test mistakes the wait elapsing for a change settling it.
const longWait = time.Hour

// The line Run logs when it holds back a leader role found at its first read.
const inheritedLine = "leader role inherited from before this process started"

func TestAnInheritedLeaderRoleStartsOnceAChangeOfTheFileConfirmsIt(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.wait = duration(longWait)
	r.start(r.volume.Path("annotations"))
	r.logs.WaitFor(t, inheritedLine+" (token 5); waiting up to 1h0m0s for the controller to confirm or revoke it", 1, patience)
	r.expectNothing()
	// The kubelet writes the pod again, and the role is the same: the same text in a new file.
	r.set("leader", "5")
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.logs.WaitFor(t, "inherited leader role (token 5) confirmed by a change of the file", 1, patience)
	// From then on, changes are ordinary ones.
	r.set("standby", "")
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
}

func TestAnInheritedLeaderRoleOfTheSingleValueFileIsConfirmedByAnUpdateOfTheVolume(t *testing.T) {
	r := newRunner(t, nil)
	r.wait = duration(longWait)
	write := func(unrelated string) {
		t.Helper()
		annotations := kubelettest.Role("l", "leader", "5")
		annotations["example.com/unrelated"] = unrelated
		if err := r.volume.Write(map[string][]byte{"l": []byte("leader"), "annotations": []byte(kubelettest.FormatMap(annotations))}); err != nil {
			t.Fatal(err)
		}
	}
	write("before")
	r.start(r.volume.Path("l"))
	r.logs.WaitFor(t, inheritedLine+" (no token)", 1, patience)
	r.expectNothing()
	// Another item of the volume changes; this file still says "leader", in a new file.
	write("after")
	r.expect(call{"started", ""})
	r.logs.WaitFor(t, "inherited leader role (no token) confirmed by a change of the file", 1, patience)
}

func TestAnInheritedLeaderRoleThatAChangeRevokesNeverStarts(t *testing.T) {
	const wait = 2 * time.Second
	began := time.Now()
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.wait = duration(wait)
	r.start(r.volume.Path("annotations"))
	r.logs.WaitFor(t, inheritedLine+" (token 5)", 1, patience)
	r.set("standby", "")
	r.logs.WaitFor(t, "inherited leader role (token 5) revoked by a change of the file", 1, patience)
	if took := time.Since(began); took >= wait {
		t.Fatalf("the revocation was seen %v after the start, after the wait of %v: the test proves nothing", took, wait)
	}
	// Past the end of the wait, nothing starts.
	select {
	case c := <-r.calls:
		t.Fatalf("%v after the inherited role was revoked", c)
	case <-time.After(time.Until(began.Add(wait + 200*time.Millisecond))):
	}
	if n := r.logs.Count("wait elapsed"); n != 0 {
		t.Fatalf("the wait of a revoked role elapsed: %q", r.logs.All())
	}
	// A later promotion is fresh: at once, with its own token.
	r.set("leader", "9")
	r.expect(call{"token", "9"}, call{"started", "9"})
}

func TestAnInheritedLeaderRoleSupersededByANewTokenStartsWithIt(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.wait = duration(longWait)
	r.start(r.volume.Path("annotations"))
	r.logs.WaitFor(t, inheritedLine, 1, patience)
	r.set("leader", "9")
	r.expect(call{"token", "9"}, call{"started", "9"})
	r.logs.WaitFor(t, "inherited leader role (token 5) superseded by a change to token 9 (a fresh acquisition)", 1, patience)
}

func TestAnInheritedLeaderRoleStartsWhenTheWaitElapsesWithNoChange(t *testing.T) {
	const wait = 300 * time.Millisecond
	began := time.Now()
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.wait = duration(wait)
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	if took := time.Since(began); took < wait {
		t.Fatalf("started %v after the start, before the wait of %v elapsed", took, wait)
	}
	r.logs.WaitFor(t, "inherited leader role (token 5) unchanged when the wait elapsed: acting on it", 1, patience)
}

func TestTheInheritedRoleWaitIsFiveSecondsUnlessSet(t *testing.T) {
	if role.DefaultInheritedRoleWait != 5*time.Second {
		t.Fatalf("DefaultInheritedRoleWait = %v", role.DefaultInheritedRoleWait)
	}
	r := newRunner(t, kubelettest.Role("l", "leader", "5"))
	r.wait = nil
	r.start(r.volume.Path("annotations"))
	r.logs.WaitFor(t, inheritedLine+" (token 5); waiting up to 5s", 1, patience)
	r.set("leader", "5")
	r.expect(call{"token", "5"}, call{"started", "5"})
}

func TestAnInheritedRoleWaitOfZeroOrLessStartsAtOnce(t *testing.T) {
	for _, wait := range []time.Duration{0, -time.Second} {
		t.Run(wait.String(), func(t *testing.T) {
			r := newRunner(t, kubelettest.Role("l", "leader", "5"))
			r.wait = duration(wait)
			r.start(r.volume.Path("annotations"))
			r.expect(call{"token", "5"}, call{"started", "5"})
			if n := r.logs.Count("inherited"); n != 0 {
				t.Fatalf("the rule is off, yet: %q", r.logs.All())
			}
		})
	}
}

func TestALeaderRoleThatComesAfterTheStartIsNotHeldBack(t *testing.T) {
	r := newRunner(t, kubelettest.Role("l", "standby", ""))
	r.wait = duration(longWait)
	r.start(r.volume.Path("annotations"))
	r.logs.WaitFor(t, "role: standby", 1, patience)
	r.set("leader", "5")
	r.expect(call{"token", "5"}, call{"started", "5"})
	if n := r.logs.Count("inherited"); n != 0 {
		t.Fatalf("a fresh leader role was taken for an inherited one: %q", r.logs.All())
	}
}

// Reading the same update again is not a change: neither after an unrelated event in the
// directory nor at the safety re-read.
func TestRereadingTheSameUpdateConfirmsNothing(t *testing.T) {
	const rereadLine = "no new update: the inherited leader role stays held back"
	t.Run("an unrelated event", func(t *testing.T) {
		r := newRunner(t, kubelettest.Role("l", "leader", "5"))
		r.wait = duration(longWait)
		r.start(r.volume.Path("annotations"))
		r.logs.WaitFor(t, inheritedLine, 1, patience)
		for i := 1; i <= 3; i++ {
			if err := os.WriteFile(filepath.Join(r.volume.Dir, "unrelated"), []byte{byte(i)}, 0o644); err != nil {
				t.Fatal(err)
			}
			r.logs.WaitFor(t, rereadLine, i, patience)
		}
		r.expectNothing()
		r.set("standby", "")
		r.logs.WaitFor(t, "revoked by a change of the file", 1, patience)
		r.expectNothing()
	})
	t.Run("the safety re-read", func(t *testing.T) {
		t.Cleanup(role.SetSafetyReread(20 * time.Millisecond))
		r := newRunner(t, kubelettest.Role("l", "leader", "5"))
		r.wait = duration(longWait)
		r.start(r.volume.Path("annotations"))
		r.logs.WaitFor(t, rereadLine, 3, patience)
		r.expectNothing()
		r.set("leader", "5")
		r.expect(call{"token", "5"}, call{"started", "5"})
	})
}

func TestASnapshotIsANewUpdateWhenTheFileIsReplacedOrRewrittenNotWhenReadAgain(t *testing.T) {
	volume := kubelettest.Volume{Dir: t.TempDir()}
	if err := volume.WriteAnnotations(kubelettest.Role("l", "leader", "5")); err != nil {
		t.Fatal(err)
	}
	path := volume.Path("annotations")
	read := func() role.Snapshot {
		t.Helper()
		s, err := role.ReadSnapshot(path, "l")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := read()
	if first.Status != (role.Status{Role: role.Leader, Token: 5}) {
		t.Fatalf("status %v", first.Status)
	}
	if !read().SameUpdate(first) {
		t.Fatal("reading again is a new update")
	}
	if err := volume.WriteAnnotations(kubelettest.Role("l", "leader", "5")); err != nil {
		t.Fatal(err)
	}
	replaced := read()
	if replaced.Status != first.Status || replaced.SameUpdate(first) {
		t.Fatal("the kubelet's update with the same text is not a new update")
	}
	// A file rewritten in place (not what the kubelet does) is a new update by its text.
	single := filepath.Join(t.TempDir(), "l")
	if err := os.WriteFile(single, []byte("leader"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := role.ReadSnapshot(single, "l")
	if err := os.WriteFile(single, []byte("standby"), 0o644); err != nil {
		t.Fatal(err)
	}
	if after, _ := role.ReadSnapshot(single, "l"); after.SameUpdate(before) {
		t.Fatal("a file rewritten in place is not a new update")
	}
	if (role.Snapshot{}).SameUpdate(role.Snapshot{}) {
		t.Fatal("two zero snapshots are one update")
	}
}
