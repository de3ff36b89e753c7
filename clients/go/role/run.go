package role

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"leaderlock.dev/go/internal/inherited"
	"leaderlock.dev/go/internal/renewal"
)

// DefaultInheritedRoleWait is how long [Run] holds back a leader role inherited from before
// the process started when Config.InheritedRoleWait is nil, as `leaderlock run
// --inherited-role-wait` defaults to.
const DefaultInheritedRoleWait = inherited.DefaultWait

// Callbacks are called by [Run], in the shape of client-go's leaderelection.LeaderCallbacks
// with the fencing token added.
type Callbacks struct {
	// OnStartedLeading is called, in its own goroutine, when the pod becomes leader: token is
	// the fencing token ("" when the file does not carry it: a single-value file). ctx is
	// canceled on demotion; the function must then stop the leader's work and return. Required.
	//
	// Run starts the next term's OnStartedLeading only after this one has returned, so two
	// terms never overlap in one process. If it returns while the pod is still leader, nothing
	// restarts it before the next term (as with client-go).
	OnStartedLeading func(ctx context.Context, token string)
	// OnStoppedLeading is called when a term ends (the role file says standby, or drops the
	// lock's annotation, or carries a new token, or its renewal lapsed, or ctx ended, or the
	// file became unusable),
	// right after that term's ctx is canceled and possibly before OnStartedLeading has
	// returned. Unlike client-go's, it is not called when the pod never led. Optional.
	OnStoppedLeading func()
	// OnNewToken is called with every fencing token the pod is handed, just before the
	// OnStartedLeading of that term, e.g. to tell a downstream store which writes to accept.
	// Not called when the file carries no token. Optional.
	OnNewToken func(token string)
}

// Config is what [Run] needs.
type Config struct {
	// Lock is the lock's name, as in spec.locks[].name. Required.
	Lock string
	// File is the downward-API file; DefaultFile when empty.
	File string
	// Callbacks are called as the role changes.
	Callbacks Callbacks
	// InheritedRoleWait bounds how long a leader role found at Run's first read of the file
	// (inherited from before the process started) waits for a change of the file to confirm or
	// revoke it before OnStartedLeading is called on it (see [Run]). nil means
	// DefaultInheritedRoleWait (5s); a zero or negative duration turns the rule off, e.g.
	// InheritedRoleWait: new(time.Duration), as `leaderlock run --inherited-role-wait 0` does.
	InheritedRoleWait *time.Duration
	// Logger receives one line per change of role; slog.Default() when nil.
	Logger *slog.Logger
}

// ErrNoCallback is returned by [Run] when Callbacks.OnStartedLeading is nil.
var ErrNoCallback = errors.New("role.Run: Callbacks.OnStartedLeading is required")

// Run follows the role of cfg.Lock until ctx ends, calling the callbacks at every change, and
// returns nil then, once the last OnStartedLeading has returned.
//
// It behaves as `leaderlock run` does for its command:
//   - on "leader", OnNewToken then OnStartedLeading start a term;
//   - on "standby", or when the annotation disappears (the pod stopped being a candidate), the
//     term's ctx is canceled and OnStoppedLeading is called; the next "leader" starts a new term;
//   - a new fencing token while leader ends the term and starts another, as if the pod had been
//     demoted and re-elected: the file may have skipped a moment when another pod held the
//     lock (the kubelet can fold several annotation changes into one file update), and work
//     begun under the old token must not continue under the new one;
//   - an absent annotation at the start is waited through: a starting pod has none until Ready;
//   - a "leader" found at the first read is inherited: the kubelet projects the file before it
//     starts a container, so the role was granted before this process started and may already
//     be revoked (a restarted container can see its old role before the demotion reaches the
//     file). OnStartedLeading is not called on it until it is settled, by whichever comes first:
//     a change of the file that still says leader with the same token (confirmed), a change to
//     leader with a new token (a fresh acquisition, started with the new token), a change to
//     standby or without the annotation (revoked: nothing starts), or cfg.InheritedRoleWait
//     (default 5s) passing with no change (started on the role as it stands). A change is a new
//     update of the file: a new file behind the path (the kubelet writes every update of the
//     volume into a new directory) or new text; reading the same update again, after an
//     unrelated event or the 60 s safety re-read, is not one (see [Snapshot]). A leader role
//     that a change brings after the first read is acted on at once. Run logs once when it
//     starts waiting and once when the wait ends;
//   - when the file carries the controller's renewal ([RenewedKey], "<D> <mark>": a LeaderLock
//     with renewDeadlineSeconds), a leader role counts only until D after Run read a new mark,
//     on this process's monotonic clock (a mark found at the first read counts from then: its
//     age cannot be known). Past that the term ends as on a demotion, with a warning that the
//     controller cannot reach this pod: a frozen or cut-off node, a dead kubelet or controller.
//     A new mark while the file still says leader starts a new term (OnNewToken, then
//     OnStartedLeading, with the same token); reading the same mark again does not. A file
//     without the key has no deadline.
//
// Run returns an *Error, after ending the term, when the file is missing, unreadable or not a
// projection the kubelet writes: the role can no longer be known, so leading must stop, as
// `leaderlock run` exits with status 2. Restart Run (or the program) to go on.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Callbacks.OnStartedLeading == nil {
		return ErrNoCallback
	}
	if cfg.File == "" {
		cfg.File = DefaultFile
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	watcher, err := NewWatcher(cfg.File, cfg.Lock)
	if err != nil {
		return err
	}
	defer watcher.Close()
	first, err := watcher.ReadSnapshot()
	if err != nil {
		return err
	}
	status := first.Status
	r := runner{cfg: cfg, log: cfg.Logger.With("lock", cfg.Lock)}
	r.log.Info("role: " + status.describe())
	// A restarted program counts the deadline from its first read: it cannot know how old the mark is.
	r.renewal.Read(status.Renewal.Deadline, status.Renewal.Mark, time.Now())
	lapseTimer := time.NewTimer(time.Hour)
	lapseTimer.Stop()
	defer lapseTimer.Stop()
	wait := inherited.Wait(cfg.InheritedRoleWait)
	gate := inherited.AtFirstRead(status.IsLeader(), status.Token, wait, time.Now())
	var waitOver <-chan time.Time
	if gate.Waiting() {
		r.log.Info(fmt.Sprintf("leader role inherited from before this process started (%s); waiting up to %v for the controller to confirm or revoke it",
			inherited.TokenText(gate.Held()), wait))
		timer := time.NewTimer(wait)
		defer timer.Stop()
		waitOver = timer.C
	}
	for {
		if ctx.Err() != nil {
			r.stop("the context ended")
			r.wait()
			return nil
		}
		now := time.Now()
		lapsed := r.followRenewal(status, now)
		// While an inherited leader role is held back, no term has begun: nothing to reconcile.
		// While the renewal has lapsed, the leader role counts as standby.
		if !gate.Waiting() {
			if lapsed {
				r.reconcile(ctx, Status{Role: Standby}, renewal.LapsedMessage(r.renewal.Deadline()))
			} else {
				r.reconcile(ctx, status, "no longer leader")
			}
		}
		// Only a leader role that has not lapsed yet has a deadline to wake up for.
		var lapseDue <-chan time.Time
		if due, ok := r.renewal.Due(); ok && status.IsLeader() && !lapsed {
			lapseTimer.Reset(due.Sub(now))
			lapseDue = lapseTimer.C
		} else {
			lapseTimer.Stop()
		}
		var termDone <-chan struct{}
		if r.term != nil && !r.term.returned {
			termDone = r.term.done
		}
		select {
		case <-ctx.Done():
		case <-termDone:
			r.term.returned = true
		case <-lapseDue:
			// The loop finds the renewal lapsed.
		case <-waitOver:
			waitOver = nil
			if settled, ok := gate.Elapsed(); ok {
				r.settled(settled)
			}
		case <-watcher.Changes():
			next, err := watcher.ReadSnapshot()
			if err != nil {
				r.log.Error("role file unusable, stopping", "err", err)
				r.stop("the role file is unusable")
				r.wait()
				return err
			}
			if !next.Status.sameRole(status) {
				r.log.Info("role: " + next.Status.describe())
			}
			status = next.Status
			r.renewal.Read(status.Renewal.Deadline, status.Renewal.Mark, time.Now())
			if !gate.Waiting() {
				continue
			}
			// Only a new update of the file settles an inherited role, not a re-read.
			if next.SameUpdate(first) {
				r.log.Debug("role file read again, no new update: the inherited leader role stays held back")
			} else if settled, ok := gate.Changed(status.IsLeader(), status.Token); ok {
				waitOver = nil
				r.settled(settled)
			}
		}
	}
}

// term is one stretch of leadership: one call of OnStartedLeading.
type term struct {
	token    int64
	cancel   context.CancelFunc
	done     chan struct{}
	stopping bool // ctx canceled and OnStoppedLeading called
	returned bool // OnStartedLeading returned
}

type runner struct {
	cfg  Config
	log  *slog.Logger
	term *term
	// renewal is the deadline the controller's renewal sets on a leader role.
	renewal renewal.Deadline
	// lapsed: the leader role is acted on as standby for want of a renewal.
	lapsed bool
}

// followRenewal tells whether the leader role is to be acted on as standby at now, its renewal
// having lapsed; it logs when that starts and when a new mark ends it.
func (r *runner) followRenewal(status Status, now time.Time) bool {
	lapsed := status.IsLeader() && r.renewal.Lapsed(now)
	switch {
	case lapsed && !r.lapsed:
		r.log.Warn(renewal.LapsedMessage(r.renewal.Deadline()))
	case !lapsed && r.lapsed && status.IsLeader():
		r.log.Info(r.renewal.RenewedMessage() + "; acting on the leader role again")
	}
	r.lapsed = lapsed
	return lapsed
}

// settled logs how an inherited leader role's wait ended.
func (r *runner) settled(s inherited.Settled) {
	r.log.Info("inherited leader role (" + inherited.TokenText(s.Held) + ") " + s.String())
}

// reconcile brings the term in line with the role: start when leader, end when not (saying
// why), end (and later start again) when the token changed.
func (r *runner) reconcile(ctx context.Context, status Status, why string) {
	if r.term != nil && !r.term.stopping && !continues(r.term.token, status) {
		reason := why
		if status.IsLeader() {
			reason = "the fencing token changed " + Status{Role: Leader, Token: r.term.token}.TokenString() + " -> " + status.TokenString()
		}
		r.stop(reason)
	}
	if r.term != nil && r.term.stopping && r.term.returned {
		r.term = nil
	}
	if r.term == nil && status.IsLeader() {
		r.start(ctx, status)
	}
}

// continues tells whether a term begun with token goes on under status. As in `leaderlock run`,
// a token only ends a term when both it and the term's are known.
func continues(token int64, status Status) bool {
	return status.IsLeader() && (token == 0 || status.Token == 0 || token == status.Token)
}

func (r *runner) start(ctx context.Context, status Status) {
	token := status.TokenString()
	if token != "" && r.cfg.Callbacks.OnNewToken != nil {
		r.cfg.Callbacks.OnNewToken(token)
	}
	termCtx, cancel := context.WithCancel(ctx)
	t := &term{token: status.Token, cancel: cancel, done: make(chan struct{})}
	r.term = t
	r.log.Info("leader, starting", "token", token)
	go func() {
		defer close(t.done)
		r.cfg.Callbacks.OnStartedLeading(termCtx, token)
	}()
}

// stop ends the current term, once: cancels its ctx, then calls OnStoppedLeading.
func (r *runner) stop(reason string) {
	if r.term == nil || r.term.stopping {
		return
	}
	r.term.stopping = true
	r.term.cancel()
	r.log.Info("stopping the leader's work: " + reason)
	if r.cfg.Callbacks.OnStoppedLeading != nil {
		r.cfg.Callbacks.OnStoppedLeading()
	}
}

// wait blocks until the current term's OnStartedLeading returned.
func (r *runner) wait() {
	if r.term != nil {
		<-r.term.done
		r.term = nil
	}
}

// WaitLeader blocks until the pod is leader of lock and returns that status, as `leaderlock
// wait` does. An absent annotation is waited through. It returns ctx's error when ctx ends
// first, and an *Error when the file is unusable.
func WaitLeader(ctx context.Context, file, lock string) (Status, error) {
	if file == "" {
		file = DefaultFile
	}
	watcher, err := NewWatcher(file, lock)
	if err != nil {
		return Status{}, err
	}
	defer watcher.Close()
	for {
		status, err := watcher.Read()
		if err != nil || status.IsLeader() {
			return status, err
		}
		select {
		case <-ctx.Done():
			return Status{}, ctx.Err()
		case <-watcher.Changes():
		}
	}
}
