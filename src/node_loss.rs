//! Which nodes are lost, judged from their kubelets' Leases in `kube-node-lease`
//! (docs/contract.md §3.2). Pure: the controller's Lease watch feeds [`Renewals`] and reads
//! [`Silence`] snapshots; no I/O, unit-tested below.
//!
//! Every kubelet renews its node's Lease about every 10 s. A node whose Lease has not changed for
//! a LeaderLock's `nodeLostAfter` is lost to that LeaderLock: all its pods stop being candidates
//! at once. Waiting for pod readiness instead waits for kube-controller-manager's node-lifecycle
//! controller (50 s by default), which then marks the node's pods NotReady one at a time: a lock
//! could move to another pod of the same dead node in between.
//!
//! Time is this process's monotonic clock at the moment the watch showed a renewal, never the
//! Lease's `renewTime` (the kubelet's clock, which may be skewed): only whether `renewTime`
//! changed is read. Whatever this process could not see is not held against a node:
//! * until the first list completes nothing is judged; while the watch fails the verdicts stay
//!   as they were when it failed (a lost node stays lost, no other is judged lost); when sight
//!   returns every node that was not already suspect counts as renewed then;
//! * when no node at all renewed within the threshold, nothing is lost: a stale view of ours
//!   is likelier than every node dying at once (and there would be nowhere to move to).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The namespace of the kubelets' node Leases (named after their node).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Whether the Lease watch shows the present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sight {
    /// The first list has not completed yet.
    Starting,
    /// Listed, and the watch has delivered everything since.
    Seeing,
    /// The watch failed at this instant (and why): verdicts stay as they were then until it
    /// delivers again.
    Blind { since: Instant, why: String },
    /// Leases cannot be read at all (RBAC, or no such API): today's behaviour, pod readiness only.
    Unreadable(String),
}

#[derive(Clone, Debug)]
struct Seen {
    /// `spec.renewTime` as the Lease carried it (or its resourceVersion without one).
    version: String,
    /// When the watch showed that version first.
    at: Instant,
}

/// When each node's Lease was last seen renewed, by this process's clock.
#[derive(Debug)]
pub struct Renewals {
    nodes: HashMap<String, Seen>,
    sight: Sight,
    /// The smallest threshold in use: who counts as already suspect when sight is lost.
    suspect_after: Duration,
}

impl Renewals {
    pub fn new(suspect_after: Duration) -> Renewals {
        Renewals { nodes: HashMap::new(), sight: Sight::Starting, suspect_after }
    }

    pub fn set_suspect_after(&mut self, d: Duration) {
        self.suspect_after = d;
    }

    pub fn sight(&self) -> &Sight {
        &self.sight
    }

    /// A Lease as the watch delivered it (listed or changed). Returns whether the node renewed
    /// since it was last seen (a node seen for the first time has not).
    pub fn observe(&mut self, node: &str, version: &str, now: Instant) -> bool {
        self.regain_sight(now, false);
        match self.nodes.get_mut(node) {
            Some(seen) if seen.version == version => false,
            Some(seen) => {
                *seen = Seen { version: version.to_string(), at: now };
                true
            }
            None => {
                self.nodes.insert(node.to_string(), Seen { version: version.to_string(), at: now });
                false
            }
        }
    }

    /// A Lease was deleted (its node is gone): its pods are judged by readiness alone again.
    pub fn forget(&mut self, node: &str, now: Instant) {
        self.regain_sight(now, false);
        self.nodes.remove(node);
    }

    /// A relist completed with exactly these nodes: the others' Leases are gone.
    pub fn listed(&mut self, present: &BTreeSet<String>, now: Instant) {
        self.nodes.retain(|n, _| present.contains(n));
        self.regain_sight(now, true);
    }

    /// The watch failed: judge nothing until it delivers again.
    /// Before the first list there is nothing to freeze: it stays `Starting`.
    pub fn lost_sight(&mut self, why: String, now: Instant) {
        if self.sight == Sight::Seeing {
            self.sight = Sight::Blind { since: now, why };
        }
    }

    /// Leases cannot be read at all.
    pub fn unreadable(&mut self, why: String) {
        self.sight = Sight::Unreadable(why);
    }

    /// The watch delivers again (after a failure: any event; at the start: a complete list).
    /// Renewals made while it did not were missed: every node that was not suspect yet when sight
    /// was lost counts as renewed now.
    fn regain_sight(&mut self, now: Instant, listed: bool) {
        let since = match &self.sight {
            Sight::Seeing => return,
            Sight::Blind { since, .. } => Some(*since),
            Sight::Starting | Sight::Unreadable(_) if listed => None,
            Sight::Starting | Sight::Unreadable(_) => return,
        };
        for seen in self.nodes.values_mut() {
            let suspect = since.is_some_and(|s| s.saturating_duration_since(seen.at) >= self.suspect_after);
            if !suspect {
                seen.at = now;
            }
        }
        self.sight = Sight::Seeing;
    }

    /// The instant silences are measured at: `now`, or while blind the moment sight was lost,
    /// so that verdicts stay as they were (a lost node stays lost, no new one is judged).
    fn judged_at(&self, now: Instant) -> Instant {
        match &self.sight {
            Sight::Blind { since, .. } => *since,
            _ => now,
        }
    }

    /// How long every node has gone unrenewed at `now`.
    pub fn silence(&self, now: Instant, default_after: Option<Duration>) -> Silence {
        let now = self.judged_at(now);
        let nodes: BTreeMap<String, Duration> = self.nodes.iter().map(|(n, s)| (n.clone(), now.saturating_duration_since(s.at))).collect();
        let freshest = nodes.values().min().copied();
        Silence { sight: self.sight.clone(), nodes, freshest, default_after }
    }

    /// The next instant a node's silence reaches one of `thresholds` (None: none will, unless a
    /// Lease changes first). Waking then is the only timer node loss needs.
    pub fn next_deadline(&self, thresholds: &BTreeSet<Duration>, now: Instant) -> Option<Instant> {
        if self.sight != Sight::Seeing {
            return None;
        }
        let mut next: Option<Instant> = None;
        for seen in self.nodes.values() {
            for t in thresholds {
                let at = seen.at + *t;
                if at > now && next.is_none_or(|n| at < n) {
                    next = Some(at);
                }
            }
        }
        next
    }

    /// The nodes whose silence reached `threshold` at `now`, as [`Silence::is_lost`] judges.
    pub fn lost_under(&self, threshold: Duration, now: Instant) -> BTreeSet<String> {
        let now = self.judged_at(now);
        let silent = |s: &Seen| now.saturating_duration_since(s.at);
        if !judging(&self.sight) || !self.nodes.values().any(|s| silent(s) < threshold) {
            return BTreeSet::new();
        }
        self.nodes.iter().filter(|(_, s)| silent(s) >= threshold).map(|(n, _)| n.clone()).collect()
    }
}

/// Whether verdicts are given: after the first list, and while blind (frozen as sight was lost).
fn judging(sight: &Sight) -> bool {
    matches!(sight, Sight::Seeing | Sight::Blind { .. })
}

/// How long each node's Lease has gone unrenewed, at one instant: what a reconcile judges from.
#[derive(Clone, Debug)]
pub struct Silence {
    pub sight: Sight,
    pub nodes: BTreeMap<String, Duration>,
    /// The shortest silence of any node: how recently the watch showed any renewal.
    pub freshest: Option<Duration>,
    /// The controller's `--node-lost-after` (None: off unless a LeaderLock sets its own).
    pub default_after: Option<Duration>,
}

impl Default for Silence {
    fn default() -> Self {
        Silence { sight: Sight::Starting, nodes: BTreeMap::new(), freshest: None, default_after: None }
    }
}

/// What one LeaderLock makes of a pod's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeVerdict {
    /// Renewing, or not judged (off, not yet listed, watch failing): the pod's readiness decides.
    Trusted,
    /// Silent for at least the threshold: the node's pods are not candidates.
    Lost,
    /// The node has no Lease in `kube-node-lease`: only its pods' readiness tells.
    NoLease,
}

impl Silence {
    /// The threshold of a LeaderLock: its own `nodeLostAfterSeconds` (0: off), else the default.
    pub fn threshold(&self, own_seconds: Option<i64>) -> Option<Duration> {
        match own_seconds {
            Some(s) if s > 0 => Some(Duration::from_secs(s.unsigned_abs())),
            Some(_) => None,
            None => self.default_after,
        }
    }

    /// Whether `node` is lost under `threshold`.
    pub fn is_lost(&self, node: Option<&str>, threshold: Option<Duration>) -> bool {
        self.verdict(node, threshold) == NodeVerdict::Lost
    }

    pub fn verdict(&self, node: Option<&str>, threshold: Option<Duration>) -> NodeVerdict {
        let (Some(node), Some(t)) = (node, threshold) else { return NodeVerdict::Trusted };
        if !judging(&self.sight) {
            return NodeVerdict::Trusted;
        }
        let Some(silent) = self.nodes.get(node) else { return NodeVerdict::NoLease };
        let someone_renews = self.freshest.is_some_and(|f| f < t);
        if *silent >= t && someone_renews { NodeVerdict::Lost } else { NodeVerdict::Trusted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(15);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Two nodes listed at `t0`; `b` keeps renewing every 10 s until `until`.
    fn two_nodes(t0: Instant) -> Renewals {
        let mut r = Renewals::new(T);
        r.observe("a", "a0", t0);
        r.observe("b", "b0", t0);
        r.listed(&["a".to_string(), "b".to_string()].into(), t0);
        r
    }

    #[test]
    fn a_node_that_stops_renewing_is_lost_after_the_threshold_and_trusted_again_when_it_renews() {
        let t0 = Instant::now();
        let mut r = two_nodes(t0);
        assert!(r.observe("b", "b1", t0 + secs(10)));
        assert!(!r.silence(t0 + secs(14), Some(T)).is_lost(Some("a"), Some(T)));
        assert_eq!(r.next_deadline(&[T].into(), t0 + secs(14)), Some(t0 + T));
        assert!(r.silence(t0 + T, Some(T)).is_lost(Some("a"), Some(T)));
        assert!(!r.silence(t0 + T, Some(T)).is_lost(Some("b"), Some(T)));
        assert_eq!(r.lost_under(T, t0 + T), ["a".to_string()].into());
        // The same version again is no renewal (a relist, another field changed).
        assert!(!r.observe("a", "a0", t0 + secs(16)));
        assert!(r.silence(t0 + secs(16), Some(T)).is_lost(Some("a"), Some(T)));
        assert!(r.observe("a", "a1", t0 + secs(17)));
        assert!(!r.silence(t0 + secs(17), Some(T)).is_lost(Some("a"), Some(T)));
    }

    #[test]
    fn nothing_is_judged_before_the_first_list_and_nothing_new_while_the_watch_fails() {
        let t0 = Instant::now();
        let mut r = Renewals::new(T);
        r.observe("a", "a0", t0);
        r.observe("b", "b0", t0);
        r.observe("b", "b1", t0 + secs(10));
        assert_eq!(r.silence(t0 + secs(20), Some(T)).verdict(Some("a"), Some(T)), NodeVerdict::Trusted, "not listed yet");
        r.lost_sight("list failed".into(), t0 + secs(20));
        assert_eq!(r.sight(), &Sight::Starting, "nothing listed yet, nothing to freeze");
        r.listed(&["a".to_string(), "b".to_string()].into(), t0 + secs(20));
        assert!(!r.silence(t0 + secs(34), Some(T)).is_lost(Some("a"), Some(T)), "a full threshold from the list");
        let mut r2 = two_nodes(t0);
        r2.lost_sight("connection reset".into(), t0 + secs(5));
        assert!(!r2.silence(t0 + secs(60), Some(T)).is_lost(Some("a"), Some(T)), "blind: no new verdict");
        assert_eq!(r2.next_deadline(&[T].into(), t0 + secs(60)), None);
        // Sight returns at 60 s: a and b were renewing (silent 5 s when the watch failed), so
        // their missed renewals are not held against them: each gets a full threshold from now.
        r2.observe("b", "b1", t0 + secs(60));
        r2.observe("b", "b2", t0 + secs(70));
        assert!(!r2.silence(t0 + secs(74), Some(T)).is_lost(Some("a"), Some(T)));
        assert!(r2.silence(t0 + secs(75), Some(T)).is_lost(Some("a"), Some(T)));
    }

    #[test]
    fn a_node_already_suspect_when_sight_was_lost_stays_suspect() {
        let t0 = Instant::now();
        let mut r = two_nodes(t0);
        r.observe("b", "b1", t0 + secs(10));
        r.observe("b", "b2", t0 + secs(20));
        assert!(r.silence(t0 + secs(20), Some(T)).is_lost(Some("a"), Some(T)));
        r.lost_sight("apiserver down".into(), t0 + secs(21));
        assert!(r.silence(t0 + secs(30), Some(T)).is_lost(Some("a"), Some(T)), "blind: a lost node stays lost");
        assert!(!r.silence(t0 + secs(30), Some(T)).is_lost(Some("b"), Some(T)));
        r.observe("b", "b3", t0 + secs(40));
        assert!(r.silence(t0 + secs(40), Some(T)).is_lost(Some("a"), Some(T)), "a had not renewed for 21 s before");
        assert!(!r.silence(t0 + secs(40), Some(T)).is_lost(Some("b"), Some(T)));
    }

    #[test]
    fn when_no_node_renews_nobody_is_lost() {
        let t0 = Instant::now();
        let r = two_nodes(t0);
        let s = r.silence(t0 + secs(30), Some(T));
        assert!(!s.is_lost(Some("a"), Some(T)) && !s.is_lost(Some("b"), Some(T)));
    }

    #[test]
    fn thresholds_come_from_the_leaderlock_else_the_default_and_zero_turns_it_off() {
        let t0 = Instant::now();
        let mut r = two_nodes(t0);
        r.observe("b", "b1", t0 + secs(10));
        let s = r.silence(t0 + secs(12), Some(T));
        assert_eq!(s.threshold(None), Some(T));
        assert_eq!(s.threshold(Some(11)), Some(secs(11)));
        assert_eq!(s.threshold(Some(0)), None);
        assert!(s.is_lost(Some("a"), s.threshold(Some(11))));
        assert!(!s.is_lost(Some("a"), s.threshold(None)));
        assert!(!s.is_lost(Some("a"), s.threshold(Some(0))));
        assert_eq!(s.verdict(Some("c"), Some(T)), NodeVerdict::NoLease);
        assert_eq!(s.verdict(None, Some(T)), NodeVerdict::Trusted, "an unscheduled pod");
        assert_eq!(r.next_deadline(&[secs(11), T].into(), t0 + secs(12)), Some(t0 + T));
    }

    #[test]
    fn unreadable_leases_judge_nothing_and_a_deleted_lease_is_forgotten() {
        let t0 = Instant::now();
        let mut r = two_nodes(t0);
        r.forget("a", t0 + secs(1));
        assert_eq!(r.silence(t0 + secs(30), Some(T)).verdict(Some("a"), Some(T)), NodeVerdict::NoLease);
        r.unreadable("forbidden".into());
        assert_eq!(r.silence(t0 + secs(30), Some(T)).verdict(Some("b"), Some(T)), NodeVerdict::Trusted);
        assert!(matches!(r.sight(), Sight::Unreadable(_)));
    }
}
