package inherited

import (
	"testing"
	"time"
)

var start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestOnlyALeaderFoundAtTheFirstReadIsHeld(t *testing.T) {
	if g := AtFirstRead(true, 5, time.Second, start); !g.Waiting() || g.Held() != 5 {
		t.Errorf("leader at the first read: %+v, want it held", g)
	}
	for name, g := range map[string]Gate{
		"standby":  AtFirstRead(false, 0, time.Second, start),
		"wait 0":   AtFirstRead(true, 5, 0, start),
		"negative": AtFirstRead(true, 5, -time.Second, start),
	} {
		if g.Waiting() {
			t.Errorf("%s: holds a leadership", name)
		}
		if _, ok := g.Changed(true, 5); ok {
			t.Errorf("%s: a change settled something", name)
		}
	}
}

func TestAChangeSettlesTheHeldLeadershipByWhatTheFileNowSays(t *testing.T) {
	for _, c := range []struct {
		name   string
		leader bool
		token  int64
		want   Settled
		text   string
	}{
		{"same token", true, 5, Settled{Ending: Confirmed, Held: 5}, "confirmed by a change of the file"},
		{"new token", true, 9, Settled{Ending: NewToken, Held: 5, Token: 9}, "superseded by a change to token 9 (a fresh acquisition)"},
		{"token gone", true, 0, Settled{Ending: NewToken, Held: 5}, "superseded by a change to no token (a fresh acquisition)"},
		{"standby", false, 0, Settled{Ending: Revoked, Held: 5}, "revoked by a change of the file"},
	} {
		g := AtFirstRead(true, 5, time.Hour, start)
		got, ok := g.Changed(c.leader, c.token)
		if !ok || got != c.want || got.String() != c.text {
			t.Errorf("%s: %+v %v (%q), want %+v (%q)", c.name, got, ok, got, c.want, c.text)
		}
		if g.Waiting() {
			t.Errorf("%s: still waiting after a change", c.name)
		}
		if _, ok := g.Changed(false, 0); ok {
			t.Errorf("%s: settled twice", c.name)
		}
		if _, ok := g.Elapsed(); ok {
			t.Errorf("%s: the deadline of a settled wait did something", c.name)
		}
	}
}

func TestTheSingleValueFileConfirmsALeaderWithoutAToken(t *testing.T) {
	g := AtFirstRead(true, 0, time.Hour, start)
	if got, _ := g.Changed(true, 0); got.Ending != Confirmed || TokenText(got.Held) != "no token" {
		t.Errorf("got %+v", got)
	}
}

func TestTheWaitIsDueAtItsDeadlineAndElapsesOnce(t *testing.T) {
	g := AtFirstRead(true, 5, time.Second, start)
	if g.Due(start.Add(999 * time.Millisecond)) {
		t.Error("due before the deadline")
	}
	if !g.Due(start.Add(time.Second)) {
		t.Error("not due at the deadline")
	}
	if got, ok := g.Elapsed(); !ok || got != (Settled{Ending: WaitElapsed, Held: 5}) || got.String() != "unchanged when the wait elapsed: acting on it" {
		t.Errorf("got %+v %v", got, ok)
	}
	if g.Waiting() || g.Due(start.Add(time.Hour)) {
		t.Error("still waiting after the wait elapsed")
	}
	if _, ok := g.Changed(false, 0); ok {
		t.Error("a change after the wait settled something")
	}
}

func TestTheConfiguredWait(t *testing.T) {
	zero, two := time.Duration(0), 2*time.Second
	if Wait(nil) != DefaultWait || DefaultWait != 5*time.Second {
		t.Errorf("default %v", Wait(nil))
	}
	if Wait(&zero) != 0 || Wait(&two) != two {
		t.Errorf("configured: %v %v", Wait(&zero), Wait(&two))
	}
}
