// Package leaderelection lets client-go's and controller-runtime's leader election elect
// through LeaderLock: [ResourceLock] implements client-go's resourcelock.Interface on top of
// the pod's role file (docs/contract.md §3.4), so that
//
//	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
//		LeaderElection:                      true,
//		LeaderElectionID:                    "my-controller",
//		LeaderElectionResourceLockInterface: leaderelection.MustNewResourceLock(leaderelection.Config{Lock: "my-controller"}),
//	})
//
// or leaderelection.RunOrDie(ctx, LeaderElectionConfig{Lock: lock, ...}) run their own loops
// unchanged. Get, Create and Update read a local file and make no API call: the pod needs no
// RBAC for leases, and an idle lock costs the API server nothing (a Lease lock is renewed with
// one write every RetryPeriod, 2 s by default).
//
// # How the elector's loops map onto the role file
//
// The elector polls: it calls Get (and Update) every RetryPeriod, and keeps leading only while
// its renewals succeed. The lock answers from the role file:
//
//   - While the file says leader and the elector holds the current term, Get returns a record
//     whose HolderIdentity is this pod's identity, and Update succeeds: every renewal is a file
//     read.
//   - While the file says leader and no term is held, Get returns a record with no holder: the
//     elector claims it with an Update, which succeeds, and starts leading. It becomes leader
//     at its next poll: within RetryPeriod × 2.2 (its acquire loop adds up to 120% jitter).
//   - While the file says standby, or has no annotation for the lock (the pod is not a
//     candidate), Get returns a record held by "leaderlock/standby", fresh on every read, so
//     the elector waits and never tries an Update; Update and Create fail. A leading elector's
//     renewals fail from its next poll on, and it stops leading (cancels OnStartedLeading's
//     context and calls OnStoppedLeading) when RenewDeadline has passed: within
//     RetryPeriod + RenewDeadline of the file's change.
//   - A new fencing token while the elector leads ends its term, as `leaderlock run` restarts
//     its command: another pod may have held the lock in between. The lock refuses the old
//     term's renewals and shows the new term as held by "leaderlock/standby" for one lease
//     (LeaseDuration rounded down to seconds, plus one second), longer than the elector's
//     RenewDeadline, so its renewal loop gives up; after that an elector of this process (a
//     new LeaderElector, e.g. RunOrDie called again) can claim the new term.
//   - A file that cannot be read or parsed makes Get and Update fail, and the term is kept:
//     an elector that hits such errors for RenewDeadline stops leading; once the file reads
//     leader with the same token again, an elector takes the term up again at once.
//   - A leader role found at the lock's first read of the file is inherited (contract §3.5):
//     the kubelet projects the file before it starts a container, so the role was granted
//     before the process started and may already be revoked. Until it is settled, Get answers
//     as while standby and Update fails (a [NotLeaderError] with Inherited set). It is settled
//     by a change of the file (a new update, not a re-read of the same one; see
//     role.Snapshot) that still says leader with the same token (confirmed) or with a new one
//     (a fresh acquisition), or says standby or drops the annotation (revoked), or by
//     Config.InheritedRoleWait (default 5s) passing with no change; then Get answers as above,
//     and the elector leads within RetryPeriod × 2.2 if the file says leader. A leader role
//     that a change brings after the first read is not held back.
//   - When the file carries the controller's renewal (role.RenewedKey, "<D> <mark>": a
//     LeaderLock with renewDeadlineSeconds; contract §3.1), a leader role counts only until D
//     after the lock read a new mark (on this process's monotonic clock; a mark found at the
//     first read counts from then). Past that, the lock answers as while standby and Update
//     fails (a [NotLeaderError] with RenewalLapsed set), so the elector stops leading
//     RenewDeadline later: a pod the controller cannot reach (a frozen or cut-off node, a dead
//     kubelet or controller) stops within D + RetryPeriod + RenewDeadline of the last new mark
//     reaching the file. A new mark while the file still says leader is a new term, claimed as
//     after a new token: once the elector's old term is over.
//
// The kubelet's delay between the annotation change and the file (usually about a second;
// contract §3.4) comes on top of these bounds. Recommended settings, given as the package's
// constants: RetryPeriod 250ms, RenewDeadline 1s, LeaseDuration 2s: the pod leads within
// 0.55 s of the file saying leader and stops within 1.25 s of it saying standby, for 4 reads
// of a small local file per second. client-go requires LeaseDuration > RenewDeadline >
// 1.2 × RetryPeriod.
//
// The elector keeps running its leader's work until it notices the demotion, so for a short
// while after the file says standby two pods may both act as leader; fence what matters with
// the token ([ResourceLock.Token]), which strictly increases from holder to holder.
//
// One ResourceLock serves one elector at a time. Coordinated leader election (client-go's
// LeaseCandidate) is not supported: LeaderLock's controller already chooses the holder.
package leaderelection

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"leaderlock.dev/go/internal/inherited"
	"leaderlock.dev/go/internal/renewal"
	"leaderlock.dev/go/role"
)

// Recommended timing for an elector using a ResourceLock (see the package documentation):
// pass them as LeaderElectionConfig's or manager.Options' LeaseDuration, RenewDeadline and
// RetryPeriod.
const (
	LeaseDuration = 2 * time.Second
	RenewDeadline = 1 * time.Second
	RetryPeriod   = 250 * time.Millisecond
)

// StandbyIdentity is the holder the lock reports while this pod does not hold the lock.
const StandbyIdentity = "leaderlock/standby"

// Config is what a ResourceLock needs.
type Config struct {
	// Lock is the lock's name, as in the LeaderLock's spec.locks[].name. Required.
	Lock string
	// File is the downward-API projection of the pod's annotations; role.DefaultFile
	// (/etc/leaderlock/annotations) when empty.
	File string
	// Identity is this pod's identity in the election records; the host name (in Kubernetes,
	// the pod's name) when empty.
	Identity string
	// InheritedRoleWait bounds how long a leader role found at the lock's first read of the
	// file (its first Get or Update; inherited from before the process started) is held back with no change of the
	// file to confirm or revoke it (see the package documentation). nil means
	// role.DefaultInheritedRoleWait (5s); a zero or negative duration turns the rule off, e.g.
	// InheritedRoleWait: new(time.Duration), as `leaderlock run --inherited-role-wait 0` does.
	InheritedRoleWait *time.Duration
	// Logger receives a line when an inherited leader role is held back and when that ends;
	// slog.Default() when nil.
	Logger *slog.Logger
}

// ResourceLock is a client-go resourcelock.Interface backed by LeaderLock's role file.
type ResourceLock struct {
	lock, file, identity string
	// wait is the inherited-role wait; 0 or less: the rule is off.
	wait time.Duration
	log  *slog.Logger

	// readMu orders the reads of Get and Update, so that the inherited-role rule sees the
	// file's updates in the order they came.
	readMu sync.Mutex

	mu sync.Mutex
	// readOnce: the file has been read well once; gate holds back what that read found.
	readOnce bool
	gate     inherited.Gate
	// first is the first read, while gate waits: a read of another update settles it.
	first role.Snapshot
	// held is the term the elector holds, nil when none.
	held *term
	// lostAt is when the last held term ended without being released; zero when none did.
	lostAt time.Time
	// leaseSeconds is the LeaseDurationSeconds the elector writes (int(LeaseDuration / 1s)).
	leaseSeconds int
	// transitions counts the terms claimed through this lock.
	transitions int
	// reads numbers Get's answers, so that every answer differs from the one before.
	reads uint64
	// renewal is the deadline the controller's renewal sets on a leader role.
	renewal renewal.Deadline
	// lapsed: the leader role is answered as standby for want of a renewal.
	lapsed bool
}

// term is one claim of the lock by the elector.
type term struct {
	token    int64 // 0 when the file carries no token
	number   int   // the record's LeaderTransitions when claimed
	acquired metav1.Time
}

var _ resourcelock.Interface = (*ResourceLock)(nil)

// NewResourceLock returns a lock for cfg.Lock read from cfg.File. It reads nothing yet.
func NewResourceLock(cfg Config) (*ResourceLock, error) {
	if err := role.ValidateLock(cfg.Lock); err != nil {
		return nil, err
	}
	if cfg.File == "" {
		cfg.File = role.DefaultFile
	}
	if cfg.Identity == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return nil, fmt.Errorf("leaderlock: no identity given and no host name: %v", err)
		}
		cfg.Identity = host
	}
	if cfg.Identity == StandbyIdentity {
		return nil, fmt.Errorf("leaderlock: the identity %q is reserved", StandbyIdentity)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &ResourceLock{
		lock:     cfg.Lock,
		file:     cfg.File,
		identity: cfg.Identity,
		wait:     inherited.Wait(cfg.InheritedRoleWait),
		log:      cfg.Logger.With("lock", cfg.Lock),
	}, nil
}

// MustNewResourceLock is NewResourceLock for use in an options literal; it panics on an
// invalid Config (a bad lock name is a programming error).
func MustNewResourceLock(cfg Config) *ResourceLock {
	lock, err := NewResourceLock(cfg)
	if err != nil {
		panic(err)
	}
	return lock
}

// Identity is this pod's identity.
func (l *ResourceLock) Identity() string { return l.identity }

// Describe names the lock in the elector's logs.
func (l *ResourceLock) Describe() string {
	return fmt.Sprintf("leaderlock %s (%s)", role.RoleKey(l.lock), l.file)
}

// RecordEvent does nothing: the lock makes no API calls, Events included.
func (l *ResourceLock) RecordEvent(string) {}

// Token is the fencing token of the term the elector holds, "" when it holds none or the file
// carries no token. Pass it along with writes that downstream systems can fence.
func (l *ResourceLock) Token() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		return ""
	}
	return role.Status{Role: role.Leader, Token: l.held.token}.TokenString()
}

// Get reads the role file and describes it as an election record (see the package
// documentation). It fails only when the file cannot be read or parsed.
func (l *ResourceLock) Get(context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	snapshot, err := role.ReadSnapshot(l.file, l.lock)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	status := snapshot.Status
	// A leader role whose renewal lapsed is answered as standby, as a demotion is.
	if l.renew(status, now) {
		status = role.Status{Role: role.Standby}
	}
	l.follow(status, now)
	// An inherited leader role held back is answered as standby.
	held := l.inherit(snapshot, now)
	leader := status.IsLeader() && !held
	l.reads++
	switch {
	case l.held != nil:
		return l.record(l.identity, l.leaseSeconds, l.held.acquired, metav1.NewTime(now), l.held.number, l.reads)
	case leader && !l.quarantined(now):
		return l.record("", l.leaseSeconds, metav1.NewTime(now), metav1.NewTime(now), l.transitions, l.reads)
	case leader:
		// A new term while the elector may still be renewing the previous one: a lease held by
		// someone else, unchanged from read to read, so that it expires on the elector's clock
		// no earlier than the quarantine on ours.
		since := metav1.NewTime(l.lostAt)
		return l.record(StandbyIdentity, l.quarantineSeconds(), since, since, l.transitions, 0)
	default:
		// Fresh on every read: the elector keeps waiting and never tries an Update.
		return l.record(StandbyIdentity, l.quarantineSeconds(), metav1.NewTime(now), metav1.NewTime(now), l.transitions, l.reads)
	}
}

// Create claims the lock like Update; the elector calls it only after a NotFound from Get,
// which this lock never returns.
func (l *ResourceLock) Create(ctx context.Context, record resourcelock.LeaderElectionRecord) error {
	return l.Update(ctx, record)
}

// Update succeeds only while the role file says leader: it renews the term the elector holds,
// or claims a new one when none is held. A record without a holder is the elector releasing
// the lock (ReleaseOnCancel): the term ends, and leadership stays where LeaderLock put it.
func (l *ResourceLock) Update(_ context.Context, record resourcelock.LeaderElectionRecord) error {
	if record.HolderIdentity == "" {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.held = nil
		l.lostAt = time.Time{}
		return nil
	}
	if record.HolderIdentity != l.identity {
		return fmt.Errorf("%s: cannot write a record held by %q: this lock's identity is %q", l.Describe(), record.HolderIdentity, l.identity)
	}
	l.readMu.Lock()
	defer l.readMu.Unlock()
	snapshot, err := role.ReadSnapshot(l.file, l.lock)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		return err
	}
	now := time.Now()
	status := snapshot.Status
	lapsed := l.renew(status, now)
	if lapsed {
		l.follow(role.Status{Role: role.Standby}, now)
	} else {
		l.follow(status, now)
	}
	held := l.inherit(snapshot, now)
	switch {
	case lapsed:
		return &NotLeaderError{Lock: l.lock, Status: status, RenewalLapsed: true, RenewDeadline: l.renewal.Deadline()}
	case !status.IsLeader():
		return &NotLeaderError{Lock: l.lock, Status: status}
	case held:
		return &NotLeaderError{Lock: l.lock, Status: status, Inherited: true}
	case l.held != nil && record.LeaderTransitions == l.held.number:
		l.leaseSeconds = record.LeaseDurationSeconds
		return nil
	case l.held != nil:
		return fmt.Errorf("%s: the record is of term %d, the current term is %d", l.Describe(), record.LeaderTransitions, l.held.number)
	case l.quarantined(now):
		return fmt.Errorf("%s: a new fencing token arrived while this pod led under the previous one: the elector must stop leading first (until %s)",
			l.Describe(), l.lostAt.Add(l.quarantine()).Format(time.RFC3339Nano))
	default:
		l.held = &term{token: status.Token, number: record.LeaderTransitions, acquired: record.AcquireTime}
		l.transitions = record.LeaderTransitions
		l.leaseSeconds = record.LeaseDurationSeconds
		return nil
	}
}

// NotLeaderError is Update's and Create's error while the role file does not say leader, or
// says leader in a role inherited from before the lock's first read and not yet settled.
type NotLeaderError struct {
	Lock   string
	Status role.Status
	// Inherited: the file says leader, but that role was found at the lock's first read of the
	// file and is held back until a change of the file or the inherited-role wait settles it.
	Inherited bool
	// RenewalLapsed: the file says leader, but no new mark of the controller's renewal was read
	// for RenewDeadline: the controller cannot reach this pod.
	RenewalLapsed bool
	RenewDeadline time.Duration
}

func (e *NotLeaderError) Error() string {
	if e.RenewalLapsed {
		return fmt.Sprintf("leaderlock: the role file says %s for lock %s, but %s", e.Status, e.Lock, renewal.LapsedMessage(e.RenewDeadline))
	}
	if e.Inherited {
		return fmt.Sprintf("leaderlock: the role file says %s for lock %s, but that role was found at the first read of the file and is held back until a change of the file confirms it or the inherited-role wait passes", e.Status, e.Lock)
	}
	return fmt.Sprintf("leaderlock: the role file says %s for lock %s, not leader", e.Status, e.Lock)
}

// IsNotLeader tells whether err is a NotLeaderError.
func IsNotLeader(err error) bool {
	var e *NotLeaderError
	return errors.As(err, &e)
}

// inherit applies the inherited-role rule (contract §3.5) to a good read, and tells whether a
// leader role found at the lock's first read is still held back.
func (l *ResourceLock) inherit(snapshot role.Snapshot, now time.Time) bool {
	status := snapshot.Status
	if !l.readOnce {
		l.readOnce = true
		l.gate = inherited.AtFirstRead(status.IsLeader(), status.Token, l.wait, now)
		if l.gate.Waiting() {
			l.first = snapshot
			l.log.Info(fmt.Sprintf("leader role found at the first read of the role file (%s), inherited from before this process started; reporting standby for up to %v, until the controller confirms or revokes it",
				inherited.TokenText(l.gate.Held()), l.wait))
		}
		return l.gate.Waiting()
	}
	if !l.gate.Waiting() {
		return false
	}
	// Only a new update of the file settles the role, not a re-read of the same one.
	var settled inherited.Settled
	switch {
	case !snapshot.SameUpdate(l.first):
		settled, _ = l.gate.Changed(status.IsLeader(), status.Token)
	case l.gate.Due(now):
		settled, _ = l.gate.Elapsed()
	default:
		return true
	}
	l.first = role.Snapshot{}
	l.log.Info("inherited leader role (" + inherited.TokenText(settled.Held) + ") " + settled.String())
	return false
}

// renew follows the renewal deadline with a good read at now, and tells whether the file's
// leader role has lapsed for want of a new mark; it logs when that starts and when a new mark
// ends it.
func (l *ResourceLock) renew(status role.Status, now time.Time) bool {
	l.renewal.Read(status.Renewal.Deadline, status.Renewal.Mark, now)
	lapsed := status.IsLeader() && l.renewal.Lapsed(now)
	switch {
	case lapsed && !l.lapsed:
		l.log.Warn(renewal.LapsedMessage(l.renewal.Deadline()) + "; the elector stops leading after its RenewDeadline")
	case !lapsed && l.lapsed && status.IsLeader():
		l.log.Info(l.renewal.RenewedMessage() + "; the leader role can be claimed again")
	}
	l.lapsed = lapsed
	return lapsed
}

// follow ends the held term when a good read shows it is over: the file says standby or has
// no annotation, or carries another token (as in `leaderlock run`, a token ends a term only
// when both it and the term's are known).
func (l *ResourceLock) follow(status role.Status, now time.Time) {
	if l.held == nil {
		return
	}
	sameTerm := status.IsLeader() && (l.held.token == 0 || status.Token == 0 || l.held.token == status.Token)
	if !sameTerm {
		l.held = nil
		l.lostAt = now
	}
}

// quarantineSeconds is one lease of the elector, rounded up: longer than its RenewDeadline,
// which client-go requires to be shorter than LeaseDuration.
func (l *ResourceLock) quarantineSeconds() int { return l.leaseSeconds + 1 }

func (l *ResourceLock) quarantine() time.Duration {
	return time.Duration(l.quarantineSeconds()) * time.Second
}

// quarantined: a term was lost less than one lease ago, so the elector that held it may still
// be in its renewal loop; a new term must not be handed to it there.
func (l *ResourceLock) quarantined(now time.Time) bool {
	return !l.lostAt.IsZero() && now.Before(l.lostAt.Add(l.quarantine()))
}

// record builds Get's answer; read (0 for a record that must stay the same) makes the raw
// bytes, which the elector compares to notice a change, differ from the previous answer's.
func (l *ResourceLock) record(holder string, leaseSeconds int, acquired, renewed metav1.Time, transitions int, read uint64) (*resourcelock.LeaderElectionRecord, []byte, error) {
	record := &resourcelock.LeaderElectionRecord{
		HolderIdentity:       holder,
		LeaseDurationSeconds: leaseSeconds,
		AcquireTime:          acquired,
		RenewTime:            renewed,
		LeaderTransitions:    transitions,
	}
	raw, err := json.Marshal(struct {
		*resourcelock.LeaderElectionRecord
		Read string `json:"leaderlockRead,omitempty"`
	}{record, readTag(read)})
	if err != nil {
		return nil, nil, err
	}
	return record, raw, nil
}

func readTag(read uint64) string {
	if read == 0 {
		return ""
	}
	return strconv.FormatUint(read, 10)
}
