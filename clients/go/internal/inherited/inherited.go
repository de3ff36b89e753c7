// Package inherited is the inherited-role rule of docs/contract.md §3.5, shared by role.Run and
// leaderelection.ResourceLock as the Rust helper's src/podside/inherited.rs serves `run` and
// `shards`. Pure: the callers read the file and keep the time.
//
// The kubelet projects the downward-API file before it starts a container, so a "leader" found
// at the first read was granted before the process started, and may already be revoked: when a
// leader's container dies, the pod goes NotReady and the controller demotes it, but the kubelet
// may restart the container before the demotion reaches the file. Such a leadership is
// inherited, and held back until a change of the file (a new update after the first read, not a
// re-read of the same one) settles it, or until the wait passes with no change: the bound keeps
// a pod whose readiness never flipped (its lock never moved) from being left leaderless.
//
//	first read ──leader──▶ held ──change: leader, same token──▶ Confirmed   ─┐
//	    │                   │   ──change: leader, new token───▶ NewToken    ├─▶ acted on
//	    │                   │   ──wait elapsed, no change─────▶ WaitElapsed ┘
//	    │                   └───change: standby / no annotation▶ Revoked ───▶ nothing to act on
//	    └──standby, none, or the rule off──▶ nothing held
package inherited

import (
	"strconv"
	"time"
)

// DefaultWait is how long an inherited leadership is held back with no change of the file, as
// the Rust helper's --inherited-role-wait defaults to.
const DefaultWait = 5 * time.Second

// Wait is the wait a configuration asks for: DefaultWait when nil; zero or negative turn the
// rule off.
func Wait(configured *time.Duration) time.Duration {
	if configured == nil {
		return DefaultWait
	}
	return *configured
}

// Ending is how a held-back leadership ended.
type Ending int

const (
	// Confirmed: a change of the file still says leader with the same token.
	Confirmed Ending = iota + 1
	// NewToken: a change says leader with another token, a fresh acquisition.
	NewToken
	// Revoked: a change says standby, or the annotation is gone.
	Revoked
	// WaitElapsed: the wait passed with no change of the file: acted on as it stands.
	WaitElapsed
)

// Settled is how one held-back leadership ended.
type Settled struct {
	Ending Ending
	// Held is the token of the leadership that was held back (0: the file carried none).
	Held int64
	// Token is the token the change brought (NewToken).
	Token int64
}

// String ends a log line, as the Rust helper words it: "confirmed by a change of the file".
func (s Settled) String() string {
	switch s.Ending {
	case Confirmed:
		return "confirmed by a change of the file"
	case NewToken:
		return "superseded by a change to " + TokenText(s.Token) + " (a fresh acquisition)"
	case Revoked:
		return "revoked by a change of the file"
	default:
		return "unchanged when the wait elapsed: acting on it"
	}
}

// TokenText is "token 41", or "no token" (a single-value file carries none).
func TokenText(token int64) string {
	if token <= 0 {
		return "no token"
	}
	return "token " + strconv.FormatInt(token, 10)
}

// Gate holds back the leadership found at the first read of the file, until a change or the
// wait settles it. The zero Gate holds nothing.
type Gate struct {
	waiting  bool
	token    int64
	deadline time.Time
}

// AtFirstRead is the gate for what the first read found, at now; a wait of zero or less turns
// the rule off: nothing is held.
func AtFirstRead(leader bool, token int64, wait time.Duration, now time.Time) Gate {
	if !leader || wait <= 0 {
		return Gate{}
	}
	return Gate{waiting: true, token: token, deadline: now.Add(wait)}
}

// Waiting tells whether a leadership is held back: until it is settled, act as if standby.
func (g *Gate) Waiting() bool { return g.waiting }

// Held is the token of the held-back leadership (0: none carried).
func (g *Gate) Held() int64 { return g.token }

// Due tells whether the wait has passed at now.
func (g *Gate) Due(now time.Time) bool { return g.waiting && !now.Before(g.deadline) }

// Changed settles the held leadership by a change of the file (a new update, not a re-read)
// that says leader with token, or not (leader false); false when nothing was held.
func (g *Gate) Changed(leader bool, token int64) (Settled, bool) {
	if !g.waiting {
		return Settled{}, false
	}
	g.waiting = false
	settled := Settled{Ending: Revoked, Held: g.token}
	switch {
	case leader && token == g.token:
		settled.Ending = Confirmed
	case leader:
		settled.Ending, settled.Token = NewToken, token
	}
	return settled, true
}

// Elapsed settles the held leadership when the wait passed with no change; false when nothing
// was held.
func (g *Gate) Elapsed() (Settled, bool) {
	if !g.waiting {
		return Settled{}, false
	}
	g.waiting = false
	return Settled{Ending: WaitElapsed, Held: g.token}, true
}
