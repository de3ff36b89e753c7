//! The pod contract (docs/contract.md §3), pure: which pods are candidates, which `leaderlock.dev/*` keys
//! each pod should carry, and in which order to write them so that a demotion always lands
//! before a promotion.
//!
//! ```text
//!  every lock of every LeaderLock in the namespace (candidates + holder in etcd)
//!        └─▶ desired keys of one pod ──diff current──▶ phase 1: demotions only
//!                                                      phase 2: everything else
//! ```
//!
//! A pod is annotated `leader` only while its key holds the lock in etcd *and* it is still a
//! candidate; the controller is the only writer of `leaderlock.dev/*` keys on pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Expression, Selector};

pub use crate::contract::{LEADER, RESYNC_KEY, STANDBY, is_ours, role_key, token_key};

/// The `leaderlock.dev/*` entries of a pod's annotations or labels.
fn ours(m: &Option<BTreeMap<String, String>>) -> impl Iterator<Item = (&String, &String)> {
    m.iter().flatten().filter(|(k, _)| is_ours(k))
}

/// A pod competes while it is Running, Ready and not terminating.
pub fn is_candidate(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running") && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// When the pod's `Ready` condition last turned `True`, if it is `True`.
fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    ready.last_transition_time.as_ref().map(|t| t.0)
}

/// The `leaderlock.dev/*` annotations and labels of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodKeys {
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

impl PodKeys {
    /// The keys a pod carries now.
    pub fn current(pod: &Pod) -> PodKeys {
        let owned = |m| ours(m).map(|(k, v)| (k.clone(), v.clone())).collect();
        PodKeys { annotations: owned(&pod.metadata.annotations), labels: owned(&pod.metadata.labels) }
    }

    fn is_leader(&self, lock: &str) -> bool {
        self.annotations.get(&role_key(lock)).map(String::as_str) == Some(LEADER)
    }
}

/// A small string map kept as one sorted slice. A pod's labels and our keys on it are a few
/// pairs each, and a `BTreeMap` allocates a 544-byte node for even one: with heaptrack, those
/// nodes were 35 MB of a 155 MB heap at 30,000 pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(Box<str>, Box<str>)]>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

impl<'a> FromIterator<(&'a String, &'a String)> for Pairs {
    fn from_iter<I: IntoIterator<Item = (&'a String, &'a String)>>(pairs: I) -> Pairs {
        let mut v: Vec<(Box<str>, Box<str>)> = pairs.into_iter().map(|(k, v)| (k.as_str().into(), v.as_str().into())).collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Pairs(v.into_boxed_slice())
    }
}

/// A label selector ready to match [`Pairs`]. None from [`Matcher::new`] when the selector
/// cannot be evaluated (see [`crate::resolve::selector_problem`]): it selects nothing.
/// Our own loop rather than kube's `Selector::matches`, which needs a `BTreeMap` per pod: building
/// one from the compact [`Pairs`] on every match would undo their memory saving at 10,000 pods.
#[derive(Clone, Debug)]
pub struct Matcher(Arc<[Expression]>);

impl Matcher {
    pub fn new(selector: &LabelSelector) -> Option<Matcher> {
        let parsed = Selector::try_from(selector.clone()).ok()?;
        Some(Matcher(parsed.into_iter().collect()))
    }

    /// Kubernetes' semantics, as `kube::core::Selector::matches` (property-tested against it).
    pub fn matches(&self, labels: &Pairs) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Expression::Equal(k, value) => labels.get(k) == Some(value.as_str()),
            Expression::NotEqual(k, value) => labels.get(k) != Some(value.as_str()),
            Expression::Exists(k) => labels.get(k).is_some(),
            Expression::DoesNotExist(k) => labels.get(k).is_none(),
        })
    }
}

/// What the controller keeps of a pod: identity, labels, candidacy and our keys. A full `Pod`
/// is 2.4 KB before any of its strings; at tens of thousands of pods they dominated memory.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub created: Option<jiff::Timestamp>,
    pub labels: Pairs,
    /// Running, Ready and not terminating (its node may still be lost: see [`crate::node_loss`]).
    pub candidate: bool,
    /// The node it was scheduled to (`spec.nodeName`).
    pub node: Option<String>,
    /// When it last became Ready (the condition's `lastTransitionTime`): placement's
    /// stabilisation delay counts from it, the same for every replica and across restarts.
    pub ready_since: Option<jiff::Timestamp>,
    /// The `leaderlock.dev/*` annotations it carries.
    pub our_annotations: Pairs,
    /// The `leaderlock.dev/*` labels it carries.
    pub our_labels: Pairs,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            labels: pod.metadata.labels.iter().flatten().collect(),
            candidate: is_candidate(pod),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready_since: ready_since(pod),
            our_annotations: ours(&pod.metadata.annotations).collect(),
            our_labels: ours(&pod.metadata.labels).collect(),
        }
    }

    /// The `leaderlock.dev/*` keys it carries.
    pub fn keys(&self) -> PodKeys {
        PodKeys { annotations: self.our_annotations.to_map(), labels: self.our_labels.to_map() }
    }
}

/// What one accepted lock says about the pods of its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRoles {
    pub lock: String,
    /// Names of the pods competing for the lock.
    pub candidates: Vec<String>,
    /// The candidate pod whose key holds the lock in etcd, with its fencing token.
    pub leader: Option<(String, i64)>,
    /// Mirror the role into a label too.
    pub labels: bool,
    /// The LeaderLock's `renewDeadlineSeconds`: its leader is renewed (see [`crate::renewal`]).
    pub renew_deadline: Option<i64>,
}

/// The keys `pod` should carry given every accepted lock of its namespace.
pub fn desired(pod: &str, locks: &[LockRoles]) -> PodKeys {
    let mut keys = PodKeys::default();
    for l in locks.iter().filter(|l| l.candidates.iter().any(|c| c == pod)) {
        let role = match &l.leader {
            Some((holder, token)) if holder == pod => {
                keys.annotations.insert(token_key(&l.lock), token.to_string());
                LEADER
            }
            _ => STANDBY,
        };
        keys.annotations.insert(role_key(&l.lock), role.to_string());
        if l.labels {
            keys.labels.insert(role_key(&l.lock), role.to_string());
        }
    }
    keys
}

/// The keys to write first: `desired`, except that no lock is promoted yet (a pod not already
/// leader of a lock stays standby for it). Writing this to every pod before `desired` makes every
/// demotion land before any promotion.
pub fn demotions_only(current: &PodKeys, desired: &PodKeys, locks: &[LockRoles]) -> PodKeys {
    let mut step = desired.clone();
    for l in locks {
        if desired.is_leader(&l.lock) && !current.is_leader(&l.lock) {
            step.annotations.insert(role_key(&l.lock), STANDBY.into());
            step.annotations.remove(&token_key(&l.lock));
            if step.labels.contains_key(&role_key(&l.lock)) {
                step.labels.insert(role_key(&l.lock), STANDBY.into());
            }
        }
    }
    step
}

/// The locks `keys` lead, each with its fencing token (absent when the keys carry none).
fn leadership(keys: &PodKeys) -> BTreeMap<&str, Option<&str>> {
    keys.annotations
        .iter()
        .filter(|(_, v)| *v == LEADER)
        .filter_map(|(k, _)| {
            let lock = k.strip_prefix(crate::contract::GROUP)?.strip_prefix('/')?;
            Some((lock, keys.annotations.get(&token_key(lock)).map(String::as_str)))
        })
        .collect()
}

/// The value of [`RESYNC_KEY`] that confirms `keys`' leadership: 16 hex digits of FNV-1a over
/// `lock=token` lines, so that every change of what a pod leads (tokens strictly increase)
/// gives a new value; None (no key) when it leads nothing.
pub fn leadership_digest(keys: &PodKeys) -> Option<String> {
    let led = leadership(keys);
    if led.is_empty() {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (lock, token) in &led {
        for b in lock.bytes().chain(*b"=").chain(token.unwrap_or_default().bytes()).chain(*b"\n") {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!("{hash:016x}"))
}

/// Whether writing `next` over `current` changes what the pod leads: such a write is followed by
/// a resync (docs/contract.md §3.1).
pub fn changes_leadership(current: &PodKeys, next: &PodKeys) -> bool {
    leadership(current) != leadership(next)
}

/// When a pod's [`RESYNC_KEY`] may be brought up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resync {
    /// Re-delivery is turned off: the key is not written (and removed where present).
    Off,
    /// Not yet: a leadership change was written less than the resync delay ago.
    Later,
    /// Now (the delay passed, or nobody remembers when the change was written).
    Now,
    /// With the other keys, in the same write: the LeaderLock is going away, nobody follows up.
    Final,
}

/// `desired` (the role keys) with the pod's [`RESYNC_KEY`]: kept as `current` has it while the
/// write changes leadership or the follow-up is not due, set to the new digest when it is.
/// Returns whether a follow-up is still to come.
pub fn with_resync(mut desired: PodKeys, current: &PodKeys, when: Resync) -> (PodKeys, bool) {
    let have = current.annotations.get(RESYNC_KEY).cloned();
    let want = leadership_digest(&desired);
    let (value, pending) = match when {
        Resync::Off => (None, false),
        Resync::Final => (want, false),
        _ if changes_leadership(current, &desired) => (have, true),
        _ if have == want => (have, false),
        Resync::Now => (want, false),
        Resync::Later => (have, true),
    };
    if let Some(v) = value {
        desired.annotations.insert(RESYNC_KEY.to_string(), v);
    }
    (desired, pending)
}

/// Whether going from `current` to `next` takes a `leader` role away: such a write must land
/// before any promotion.
pub fn is_demotion(current: &PodKeys, next: &PodKeys) -> bool {
    current.annotations.iter().any(|(k, v)| v == LEADER && next.annotations.get(k).map(String::as_str) != Some(LEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(pairs: &[(&str, &str)]) -> PodKeys {
        let mut k = PodKeys::default();
        for (lock, token) in pairs {
            k.annotations.insert(role_key(lock), LEADER.into());
            k.annotations.insert(token_key(lock), token.to_string());
        }
        k
    }

    #[test]
    fn a_leadership_change_keeps_the_old_resync_value_and_the_follow_up_writes_the_new_one() {
        let (was, now) = (led(&[("ledger", "7")]), led(&[("ledger", "9")]));
        let settled = with_resync(was.clone(), &was, Resync::Now).0;
        let digest = settled.annotations[RESYNC_KEY].clone();
        // The write that changes the token carries the old digest: the follow-up is a real change.
        let (first, pending) = with_resync(now.clone(), &settled, Resync::Now);
        assert_eq!((first.annotations.get(RESYNC_KEY), pending), (Some(&digest), true));
        let (later, pending) = with_resync(now.clone(), &first, Resync::Later);
        assert_eq!((later == first, pending), (true, true), "not due yet: nothing changes");
        let (follow_up, pending) = with_resync(now.clone(), &first, Resync::Now);
        assert!(!pending);
        assert_ne!(follow_up.annotations[RESYNC_KEY], digest);
        assert_eq!(with_resync(now, &follow_up, Resync::Now), (follow_up.clone(), false), "settled: no write");
    }

    #[test]
    fn a_pod_that_leads_nothing_carries_no_resync_key_once_followed_up() {
        let standby = PodKeys { annotations: [(role_key("ledger"), STANDBY.to_string())].into(), ..Default::default() };
        assert_eq!(with_resync(standby.clone(), &standby, Resync::Now), (standby.clone(), false), "never led: nothing to resync");
        let leader = with_resync(led(&[("ledger", "7")]), &led(&[("ledger", "7")]), Resync::Now).0;
        let (demoted, pending) = with_resync(standby.clone(), &leader, Resync::Now);
        assert!(pending && demoted.annotations.contains_key(RESYNC_KEY), "the demotion keeps the old digest");
        assert_eq!(with_resync(standby.clone(), &demoted, Resync::Now), (standby.clone(), false), "the follow-up removes it");
        assert_eq!(with_resync(PodKeys::default(), &leader, Resync::Final).0, PodKeys::default(), "cleanup removes it at once");
        assert_eq!(with_resync(led(&[("ledger", "7")]), &leader, Resync::Off).0, led(&[("ledger", "7")]), "off: never written");
    }

    #[test]
    fn every_change_of_what_a_pod_leads_gives_a_new_digest() {
        let digests = [led(&[]), led(&[("a", "1")]), led(&[("a", "2")]), led(&[("a", "2"), ("b", "3")]), led(&[("b", "3")])]
            .map(|k| leadership_digest(&k));
        assert_eq!(digests[0], None);
        for (i, d) in digests.iter().enumerate() {
            assert!(digests[i + 1..].iter().all(|o| o != d), "{digests:?}");
        }
    }

    fn roles(lock: &str, candidates: &[&str], leader: Option<(&str, i64)>, labels: bool) -> LockRoles {
        LockRoles {
            lock: lock.into(),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            leader: leader.map(|(p, t)| (p.to_string(), t)),
            labels,
            renew_deadline: None,
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn holder_gets_leader_and_token_others_standby_outsiders_nothing() {
        let locks = [roles("ledger", &["a", "b"], Some(("a", 42)), false)];
        assert_eq!(desired("a", &locks).annotations, keys(&[("leaderlock.dev/ledger", "leader"), ("leaderlock.dev/ledger.token", "42")]));
        assert_eq!(desired("b", &locks).annotations, keys(&[("leaderlock.dev/ledger", "standby")]));
        assert_eq!(desired("c", &locks), PodKeys::default());
    }

    #[test]
    fn external_holder_leaves_every_pod_standby_and_pod_labels_mirror_roles() {
        let locks = [roles("report", &["a", "b"], None, true)];
        for p in ["a", "b"] {
            let k = desired(p, &locks);
            assert_eq!(k.annotations, keys(&[("leaderlock.dev/report", "standby")]));
            assert_eq!(k.labels, keys(&[("leaderlock.dev/report", "standby")]));
        }
    }

    #[test]
    fn a_promotion_waits_for_the_second_phase_while_a_demotion_lands_in_the_first() {
        let locks = [roles("ledger", &["a", "b"], Some(("b", 50)), true)];
        let was_leader = PodKeys {
            annotations: keys(&[("leaderlock.dev/ledger", "leader"), ("leaderlock.dev/ledger.token", "42")]),
            labels: keys(&[("leaderlock.dev/ledger", "leader")]),
        };
        let was_standby =
            PodKeys { annotations: keys(&[("leaderlock.dev/ledger", "standby")]), labels: keys(&[("leaderlock.dev/ledger", "standby")]) };
        // a: demoted at once.
        assert_eq!(demotions_only(&was_leader, &desired("a", &locks), &locks), desired("a", &locks));
        // b: stays standby in phase 1, leader only in phase 2.
        assert_eq!(demotions_only(&was_standby, &desired("b", &locks), &locks), was_standby);
        assert_eq!(desired("b", &locks).annotations["leaderlock.dev/ledger"], "leader");
    }

    #[test]
    fn losing_a_leader_role_is_a_demotion_gaining_or_keeping_one_is_not() {
        let leader = PodKeys {
            annotations: keys(&[("leaderlock.dev/ledger", "leader"), ("leaderlock.dev/ledger.token", "42")]),
            ..Default::default()
        };
        let standby = PodKeys { annotations: keys(&[("leaderlock.dev/ledger", "standby")]), ..Default::default() };
        assert!(is_demotion(&leader, &standby));
        assert!(is_demotion(&leader, &PodKeys::default()), "removing the keys of a leader demotes it");
        assert!(!is_demotion(&standby, &leader));
        assert!(!is_demotion(&leader, &leader));
        assert!(!is_demotion(&PodKeys::default(), &standby));
    }

    #[test]
    fn pairs_are_sorted_and_looked_up_by_key() {
        let m = keys(&[("b", "2"), ("a", "1"), ("c", "3")]);
        let p: Pairs = m.iter().collect();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((p.get("a"), p.get("c"), p.get("d")), (Some("1"), Some("3"), None));
        assert_eq!(p.to_map(), m);
        assert_eq!(Pairs::default().get("a"), None);
    }

    mod matcher {
        use super::*;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        use kube::core::SelectorExt;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = String> {
            prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]
        }

        fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
            let op = prop_oneof![Just("In"), Just("NotIn"), Just("Exists"), Just("DoesNotExist")];
            (word(), op, proptest::collection::vec(word(), 1..3)).prop_map(|(key, op, values)| LabelSelectorRequirement {
                key,
                operator: op.to_string(),
                values: matches!(op, "In" | "NotIn").then_some(values),
            })
        }

        fn selector() -> impl Strategy<Value = LabelSelector> {
            let labels = proptest::collection::btree_map(word(), word(), 0..3);
            let exprs = proptest::collection::vec(requirement(), 0..3);
            (proptest::option::of(labels), proptest::option::of(exprs))
                .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions })
        }

        proptest! {
            #[test]
            fn matches_exactly_what_kubes_selector_matches(
                sel in selector(),
                labels in proptest::collection::btree_map(word(), word(), 0..4),
            ) {
                let kube = Selector::try_from(sel.clone()).unwrap();
                let ours = Matcher::new(&sel).unwrap();
                prop_assert_eq!(ours.matches(&labels.iter().collect()), kube.matches(&labels));
            }
        }

        #[test]
        fn an_empty_selector_matches_every_pod_and_not_in_matches_a_pod_without_the_key() {
            let all = Matcher::new(&LabelSelector::default()).unwrap();
            assert!(all.matches(&Pairs::default()));
            let req = LabelSelectorRequirement { key: "tier".into(), operator: "NotIn".into(), values: Some(vec!["db".into()]) };
            let not_db = Matcher::new(&LabelSelector { match_expressions: Some(vec![req]), ..Default::default() }).unwrap();
            assert!(not_db.matches(&Pairs::default()));
            assert!(!not_db.matches(&keys(&[("tier", "db")]).iter().collect()));
        }
    }

    #[test]
    fn only_keys_of_our_group_are_ours() {
        assert!(is_ours("leaderlock.dev/ledger"));
        assert!(is_ours("leaderlock.dev/ledger.token"));
        assert!(!is_ours("leaderlock.dev.evil/ledger"));
        assert!(!is_ours("app"));
    }
}
