//! The pod contract (SPEC §3), pure: which pods are candidates, which `leaderlock.dev/*` keys
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

use k8s_openapi::api::core::v1::Pod;

use crate::resource::GROUP;

pub const LEADER: &str = "leader";
pub const STANDBY: &str = "standby";

/// `leaderlock.dev/<lock>`: the role annotation (and label, with `podLabels`).
pub fn role_key(lock: &str) -> String {
    format!("{GROUP}/{lock}")
}

/// `leaderlock.dev/<lock>.token`: the fencing token, on the holder only.
pub fn token_key(lock: &str) -> String {
    format!("{GROUP}/{lock}.token")
}

/// Whether an annotation or label key is one the controller owns.
pub fn is_ours(key: &str) -> bool {
    key.strip_prefix(GROUP).is_some_and(|rest| rest.starts_with('/'))
}

/// A pod competes while it is Running, Ready and not terminating.
pub fn is_candidate(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
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
        let ours = |m: &Option<BTreeMap<String, String>>| {
            m.iter().flatten().filter(|(k, _)| is_ours(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        PodKeys { annotations: ours(&pod.metadata.annotations), labels: ours(&pod.metadata.labels) }
    }

    fn is_leader(&self, lock: &str) -> bool {
        self.annotations.get(&role_key(lock)).map(String::as_str) == Some(LEADER)
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
    pub labels: BTreeMap<String, String>,
    /// Running, Ready and not terminating.
    pub candidate: bool,
    /// The `leaderlock.dev/*` annotations and labels it carries.
    pub keys: PodKeys,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            candidate: is_candidate(pod),
            keys: PodKeys::current(pod),
        }
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

/// Whether going from `current` to `next` takes a `leader` role away: such a write must land
/// before any promotion.
pub fn is_demotion(current: &PodKeys, next: &PodKeys) -> bool {
    current.annotations.iter().any(|(k, v)| v == LEADER && next.annotations.get(k).map(String::as_str) != Some(LEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(lock: &str, candidates: &[&str], leader: Option<(&str, i64)>, labels: bool) -> LockRoles {
        LockRoles {
            lock: lock.into(),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            leader: leader.map(|(p, t)| (p.to_string(), t)),
            labels,
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
        let was_standby = PodKeys {
            annotations: keys(&[("leaderlock.dev/ledger", "standby")]),
            labels: keys(&[("leaderlock.dev/ledger", "standby")]),
        };
        // a: demoted at once.
        assert_eq!(demotions_only(&was_leader, &desired("a", &locks), &locks), desired("a", &locks));
        // b: stays standby in phase 1, leader only in phase 2.
        assert_eq!(demotions_only(&was_standby, &desired("b", &locks), &locks), was_standby);
        assert_eq!(desired("b", &locks).annotations["leaderlock.dev/ledger"], "leader");
    }

    #[test]
    fn losing_a_leader_role_is_a_demotion_gaining_or_keeping_one_is_not() {
        let leader = PodKeys { annotations: keys(&[("leaderlock.dev/ledger", "leader"), ("leaderlock.dev/ledger.token", "42")]), ..Default::default() };
        let standby = PodKeys { annotations: keys(&[("leaderlock.dev/ledger", "standby")]), ..Default::default() };
        assert!(is_demotion(&leader, &standby));
        assert!(is_demotion(&leader, &PodKeys::default()), "removing the keys of a leader demotes it");
        assert!(!is_demotion(&standby, &leader));
        assert!(!is_demotion(&leader, &leader));
        assert!(!is_demotion(&PodKeys::default(), &standby));
    }

    #[test]
    fn only_keys_of_our_group_are_ours() {
        assert!(is_ours("leaderlock.dev/ledger"));
        assert!(is_ours("leaderlock.dev/ledger.token"));
        assert!(!is_ours("leaderlock.dev.evil/ledger"));
        assert!(!is_ours("app"));
    }
}
