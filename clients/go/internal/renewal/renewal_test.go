package renewal_test

import (
	"testing"
	"time"

	"leaderlock.dev/go/internal/renewal"
)

var t0 = time.Now()

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestANewMarkStartsTheDeadlineFromWhenItWasRead(t *testing.T) {
	var d renewal.Deadline
	if _, ok := d.Due(); ok || d.Lapsed(at(3_600_000)) {
		t.Fatal("no key, no deadline")
	}
	if !d.Read(time.Second, "1", at(0)) {
		t.Fatal("the first mark is new")
	}
	if due, _ := d.Due(); !due.Equal(at(1000)) {
		t.Fatalf("due %v, want 1s after the read", due.Sub(t0))
	}
	if d.Lapsed(at(999)) || !d.Lapsed(at(1000)) {
		t.Fatal("lapses exactly one deadline after the read")
	}
	// The same mark read again (another annotation changed) does not move the deadline.
	if d.Read(time.Second, "1", at(900)) || !d.Lapsed(at(1000)) {
		t.Fatal("the same mark moved the deadline")
	}
	// A new mark does, from when it is read, even after the deadline passed.
	if !d.Read(time.Second, "2", at(1500)) || d.Lapsed(at(2499)) || !d.Lapsed(at(2500)) {
		t.Fatal("a new mark did not start the deadline from its read")
	}
	if d.Deadline() != time.Second {
		t.Fatalf("deadline %v", d.Deadline())
	}
}

func TestTheKeyRemovedEndsTheDeadlineAndItsReturnStartsANewOne(t *testing.T) {
	var d renewal.Deadline
	d.Read(time.Second, "1", at(0))
	if d.Read(0, "", at(5000)) || d.Lapsed(at(5000)) {
		t.Fatal("a file without the key has no deadline")
	}
	if d.RenewedMessage() != "the renewal key is gone: no deadline" {
		t.Fatal(d.RenewedMessage())
	}
	if !d.Read(time.Second, "1", at(6000)) || d.Lapsed(at(6999)) {
		t.Fatal("back with the same mark: counted from its read")
	}
	if d.RenewedMessage() != "renewed again: the controller reaches this pod" {
		t.Fatal(d.RenewedMessage())
	}
}

func TestANewDeadlineWithTheSameMarkAppliesFromTheMarksFirstRead(t *testing.T) {
	var d renewal.Deadline
	d.Read(time.Second, "1", at(0))
	d.Read(3*time.Second, "1", at(500))
	if due, _ := d.Due(); !due.Equal(at(3000)) {
		t.Fatalf("due %v", due.Sub(t0))
	}
}

func TestTheLapseIsLoggedWithTheDeadline(t *testing.T) {
	if got := renewal.LapsedMessage(15 * time.Second); got != "no renewal for 15s: the controller cannot reach this pod; acting as standby" {
		t.Fatal(got)
	}
}
