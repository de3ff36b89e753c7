// Package renewal keeps the deadline that the controller's renewal sets on a leader role
// (docs/contract.md §3.1 "Renewal", §3.5), shared by role.Run and leaderelection.ResourceLock as
// the Rust helper's src/podside/renewal.rs serves `run` and `shards`. Pure: the callers read the
// file and keep the time.
//
// A leader whose node is frozen or cut off, or whose kubelet or controller died, cannot be told
// it was demoted. With renewDeadlineSeconds the controller rewrites leaderlock.dev/roles.renewed
// with a new mark every third of the deadline D; a pod that reads no new mark for D stops acting
// as leader. Time is the pod's own monotonic clock (time.Now's monotonic reading), from when it
// read a mark: no clocks are compared, and the mark only counts as changed or not.
//
//	read "15s 17648…123" ──new mark──▶ due = now + 15s ──passes──▶ lapsed: leader acts as standby
//	read the same mark ───────────────▶ due unchanged         ──new mark──▶ due = now + 15s
//	read no key ──────────────────────▶ no deadline
package renewal

import "time"

// Deadline follows the renewal across reads of the file. The zero Deadline has none.
type Deadline struct {
	mark     string // "" while the file carries no renewal
	deadline time.Duration
	readAt   time.Time
}

// Read records a read of the file at now that found a renewal of deadline and mark (mark "":
// the file carries none). A new mark (or the key's first appearance, such as at the first read
// of a restarted program) starts the deadline from now; the same mark read again (another
// annotation changed, a safety re-read) does not; no key, no deadline. It tells whether the mark
// was new.
func (d *Deadline) Read(deadline time.Duration, mark string, now time.Time) bool {
	switch {
	case mark == "":
		*d = Deadline{}
		return false
	case mark == d.mark:
		d.deadline = deadline
		return false
	default:
		*d = Deadline{mark: mark, deadline: deadline, readAt: now}
		return true
	}
}

// Deadline is the deadline D the file states; 0 when it carries no renewal.
func (d *Deadline) Deadline() time.Duration { return d.deadline }

// Due is when a leader role stops being valid unless a new mark is read first; false when the
// file carries no renewal.
func (d *Deadline) Due() (time.Time, bool) {
	if d.mark == "" {
		return time.Time{}, false
	}
	return d.readAt.Add(d.deadline), true
}

// Lapsed tells whether D has passed since the current mark was read: a leader role is then acted
// on as standby.
func (d *Deadline) Lapsed(now time.Time) bool {
	due, ok := d.Due()
	return ok && !now.Before(due)
}

// LapsedMessage is the log line when a leader's renewal lapses, as the Rust helper words it.
func LapsedMessage(deadline time.Duration) string {
	return "no renewal for " + deadline.String() + ": the controller cannot reach this pod; acting as standby"
}

// RenewedMessage says why a lapse ended while the role stayed leader.
func (d *Deadline) RenewedMessage() string {
	if _, ok := d.Due(); ok {
		return "renewed again: the controller reaches this pod"
	}
	return "the renewal key is gone: no deadline"
}
