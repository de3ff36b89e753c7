package role_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"leaderlock.dev/go/internal/kubelettest"
	"leaderlock.dev/go/role"
)

// renewDeadline is the renewal deadline of these tests: short, so that a lapse comes quickly.
const renewDeadline = time.Second

// reaction bounds how late a change of the file may be noticed on a busy machine.
const reaction = time.Second

// renewed is the annotations of a pod whose role for "l" is roleValue with token, renewed with
// mark under renewDeadline.
func renewed(roleValue, token string, mark int) map[string]string {
	annotations := kubelettest.Role("l", roleValue, token)
	annotations[role.RenewedKey] = "1s " + strconv.Itoa(mark)
	return annotations
}

// renew makes the kubelet write the annotations with a renewal, and says when it began: Run may
// read the new file before the write returns.
func (r *runner) renew(annotations map[string]string) time.Time {
	r.t.Helper()
	began := time.Now()
	if err := r.volume.WriteAnnotations(annotations); err != nil {
		r.t.Fatal(err)
	}
	return began
}

// nothingFor checks that no callback is called for window.
func (r *runner) nothingFor(window time.Duration) {
	r.t.Helper()
	select {
	case c := <-r.calls:
		r.t.Fatalf("unexpected call %v", c)
	case <-time.After(window):
	}
}

func TestATermEndsWhenNoNewMarkComesForTheDeadlineAndANewMarkStartsAnother(t *testing.T) {
	r := newRunner(t, renewed("leader", "5", 100))
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	started := time.Now()

	// Renewals every 400 ms keep the term going past the deadline counted from the first read.
	last := started
	for mark := 101; mark <= 104; mark++ {
		r.nothingFor(400 * time.Millisecond)
		last = r.renew(renewed("leader", "5", mark))
	}
	if time.Since(started) <= renewDeadline {
		t.Fatal("the renewals did not outlast the deadline")
	}

	// Then the controller stops renewing: one deadline after the last new mark was read, the term
	// ends as on a demotion.
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
	if lapse := time.Since(last); lapse < renewDeadline || lapse > renewDeadline+reaction {
		t.Fatalf("the term ended %v after the last new mark, want %v to %v", lapse, renewDeadline, renewDeadline+reaction)
	}
	r.logs.WaitFor(t, "no renewal for 1s: the controller cannot reach this pod; acting as standby", 1, patience)

	// An update of the file with the same mark (another annotation changed) is no renewal.
	same := renewed("leader", "5", 104)
	same["example.com/unrelated"] = "edited"
	r.renew(same)
	r.nothingFor(reaction)

	// A new mark while still leader starts a new term, with the same token.
	at := r.renew(renewed("leader", "5", 105))
	r.expect(call{"token", "5"}, call{"started", "5"})
	if took := time.Since(at); took > reaction {
		t.Fatalf("the new term started %v after the new mark", took)
	}
	r.logs.WaitFor(t, "renewed again: the controller reaches this pod; acting on the leader role again", 1, patience)
}

func TestAMarkFoundAtTheFirstReadCountsFromItAndAFileWithoutTheKeyHasNoDeadline(t *testing.T) {
	began := time.Now()
	r := newRunner(t, renewed("leader", "5", 100))
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
	if took := time.Since(began); took < renewDeadline {
		t.Fatalf("the term ended %v after Run started, before the deadline", took)
	}
	// The controller turns renewal off: the key goes, the leader role stands with no deadline.
	r.set("leader", "5")
	r.expect(call{"token", "5"}, call{"started", "5"})
	r.logs.WaitFor(t, "the renewal key is gone: no deadline; acting on the leader role again", 1, patience)
	r.nothingFor(renewDeadline + reaction)
}

func TestAMalformedRenewalEndsTheTermAndRun(t *testing.T) {
	r := newRunner(t, renewed("leader", "5", 100))
	r.start(r.volume.Path("annotations"))
	r.expect(call{"token", "5"}, call{"started", "5"})
	bad := kubelettest.Role("l", "leader", "5")
	bad[role.RenewedKey] = "soon"
	r.renew(bad)
	r.expect(call{"canceled", "5"}, call{kind: "stopped"}, call{"returned", "5"})
	if err := r.finished(); role.KindOf(err) != role.BadRenewal {
		t.Fatalf("Run returned %v, want a BadRenewal error", err)
	}
}

func TestReadAndWaitLeaderReportTheRenewalWithTheRole(t *testing.T) {
	volume := kubelettest.Volume{Dir: t.TempDir()}
	if err := volume.WriteAnnotations(renewed("leader", "5", 100)); err != nil {
		t.Fatal(err)
	}
	want := role.Status{Role: role.Leader, Token: 5, Renewal: role.Renewal{Deadline: time.Second, Mark: "100"}}
	if status, err := role.Read(volume.Path("annotations"), "l"); err != nil || status != want {
		t.Fatalf("Read: %v, %v", status, err)
	}
	// WaitLeader acts on one fresh read: its mark is new, so the role is leader.
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if status, err := role.WaitLeader(ctx, volume.Path("annotations"), "l"); err != nil || status != want || status.String() != "leader 5" {
		t.Fatalf("WaitLeader: %v, %v", status, err)
	}
}
