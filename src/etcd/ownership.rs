//! Whose key is it (docs/contract.md §4), pure: several clusters' controllers may share one etcd
//! and one lock prefix, so a key carrying LeaderLock's marker is not necessarily ours. Every key
//! value this controller creates names its cluster, `leaderlock@<cluster>:<namespace>/<pod>`; a
//! controller deletes or rewrites only keys carrying its own cluster.
//!
//! [`crate::lock`] judges "ours" by the plain `leaderlock:` marker. [`decision_view`] presents
//! each key to it the way it must be judged: our keys in the plain form, every other cluster's
//! key without the marker (so the decision never touches it), and [`stamp`] puts our cluster
//! back into the values the decision writes.
//!
//! Keys written before clusters had an identity (`leaderlock:<namespace>/<pod>`) are adopted
//! without a write when they live on one of our recorded leases: only this cluster's controller
//! attaches keys to those leases. Keys of that form on anyone else's lease are not ours.

use crate::lock::{self, KeyState, Op, VALUE_MARKER};

/// The marker of key values that name their cluster.
const CLUSTER_MARKER: &str = "leaderlock@";

/// A `--cluster-id` that cannot be written into key values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cluster id {0:?} is not valid: use 1 to 63 characters among letters, digits, '.', '_' and '-' (the kube-system namespace's UID is one)"
)]
pub struct InvalidClusterId(pub String);

/// Which cluster a controller serves: written into every key value it creates and into its root's
/// registration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(String);

impl ClusterId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidClusterId> {
        let id = id.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if (1..=63).contains(&id.len()) && id.chars().all(valid_char) { Ok(ClusterId(id)) } else { Err(InvalidClusterId(id)) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = InvalidClusterId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterId::new(s)
    }
}

/// Who wrote a key, read from its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writer<'a> {
    /// A LeaderLock controller of `cluster`, for the candidate `name` (`<namespace>/<pod>`).
    Cluster { cluster: &'a str, name: &'a str },
    /// A LeaderLock controller from before clusters had an identity.
    Unnamed { name: &'a str },
    /// Anyone else (`etcdctl lock`, Go's `concurrency.Mutex`, ...).
    Outside,
}

/// Reads who wrote `value`.
pub fn writer(value: &[u8]) -> Writer<'_> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Writer::Outside;
    };
    if let Some(rest) = text.strip_prefix(CLUSTER_MARKER)
        && let Some((cluster, name)) = rest.split_once(':')
    {
        return Writer::Cluster { cluster, name };
    }
    match text.strip_prefix(VALUE_MARKER) {
        Some(name) => Writer::Unnamed { name },
        None => Writer::Outside,
    }
}

/// The value of a key this cluster's controller creates for the candidate `name`.
pub fn value_for(me: &ClusterId, name: &str) -> Vec<u8> {
    format!("{CLUSTER_MARKER}{me}:{name}").into_bytes()
}

/// Whether a key is ours: it names our cluster, or it predates cluster identities and lives on
/// one of `our_leases` (the leases recorded under our registered root).
pub fn is_ours(key: &KeyState, me: &ClusterId, our_leases: &[i64]) -> bool {
    match writer(&key.value) {
        Writer::Cluster { cluster, .. } => cluster == me.as_str(),
        Writer::Unnamed { .. } => our_leases.contains(&key.lease),
        Writer::Outside => false,
    }
}

/// The keys as [`crate::lock`] must judge them: ours with the plain marker (so it may delete,
/// reattach and report them), everyone else's without it (so it never touches them).
pub fn decision_view(keys: Vec<KeyState>, me: &ClusterId, our_leases: &[i64]) -> Vec<KeyState> {
    keys.into_iter()
        .map(|mut key| {
            let plain = match writer(&key.value) {
                Writer::Cluster { name, .. } | Writer::Unnamed { name } if is_ours(&key, me, our_leases) => {
                    Some(lock::candidate_value(name))
                }
                _ => None,
            };
            key.value = plain.unwrap_or_default();
            key
        })
        .collect()
}

/// `op` as written to etcd: values from the decision (plain marker) carry our cluster. A
/// reattach of a key from before cluster identities thereby migrates its value for free.
pub fn stamp(op: Op, me: &ClusterId) -> Op {
    let named = |value: Vec<u8>| match writer(&value) {
        Writer::Unnamed { name } => value_for(me, name),
        _ => value,
    };
    match op {
        Op::Create { key, value, lease } => Op::Create { key, value: named(value), lease },
        Op::Reattach { key, mod_revision, value, lease } => Op::Reattach { key, mod_revision, value: named(value), lease },
        delete @ Op::Delete { .. } => delete,
    }
}

/// How a holder written by another cluster is shown: `<cluster>/<namespace>/<pod>`.
pub fn foreign_holder(key: &KeyState, me: &ClusterId) -> Option<String> {
    match writer(&key.value) {
        Writer::Cluster { cluster, name } if cluster != me.as_str() => Some(format!("{cluster}/{name}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ClusterId {
        ClusterId::new("east").unwrap()
    }

    fn key(value: &[u8], lease: i64) -> KeyState {
        KeyState { key: "/ll/locks/ns/a/uid-1".into(), create_revision: 5, mod_revision: 5, lease, value: value.to_vec() }
    }

    #[test]
    fn cluster_ids_must_fit_in_a_key_value() {
        assert!(ClusterId::new("0f6c3c1e-4b0a-4c7e-9f39-2d2b7f0d9a11").is_ok());
        for bad in ["", "a:b", "a/b", "with space", &"x".repeat(64)] {
            let err = ClusterId::new(bad).expect_err(bad);
            assert!(err.to_string().contains("kube-system"), "{err}");
        }
    }

    #[test]
    fn our_values_name_our_cluster_and_read_back() {
        let v = value_for(&me(), "shop/pod-1");
        assert_eq!(v, b"leaderlock@east:shop/pod-1".to_vec());
        assert_eq!(writer(&v), Writer::Cluster { cluster: "east", name: "shop/pod-1" });
        assert_eq!(writer(b"leaderlock:shop/pod-1"), Writer::Unnamed { name: "shop/pod-1" });
        assert_eq!(writer(b""), Writer::Outside);
        assert_eq!(writer(b"leaderlock@nocolon"), Writer::Outside);
    }

    #[test]
    fn another_clusters_keys_are_never_ours_and_look_foreign_to_the_decision() {
        let theirs = key(b"leaderlock@west:shop/pod-1", 7);
        assert!(!is_ours(&theirs, &me(), &[7]), "not even on a lease number we also use");
        let view = decision_view(vec![theirs.clone()], &me(), &[7]);
        assert_eq!(view[0].candidate_name(), None);
        assert!(lock::plan("/ll/locks/ns/a", &view, &[], 7).is_empty(), "nothing of theirs is deleted");
        assert_eq!(foreign_holder(&theirs, &me()).as_deref(), Some("west/shop/pod-1"));
    }

    #[test]
    fn keys_from_before_identities_are_ours_only_on_our_leases() {
        let old = key(b"leaderlock:shop/pod-1", 7);
        assert!(is_ours(&old, &me(), &[7]));
        assert!(!is_ours(&old, &me(), &[8]));
        let view = decision_view(vec![old.clone()], &me(), &[7]);
        assert_eq!(view[0].candidate_name(), Some("shop/pod-1"));
        let foreign = decision_view(vec![old], &me(), &[8]);
        assert_eq!(foreign[0].candidate_name(), None);
    }

    #[test]
    fn an_adopted_old_key_on_the_current_lease_needs_no_write() {
        let old = key(b"leaderlock:shop/pod-1", 7);
        let view = decision_view(vec![old], &me(), &[7]);
        let wanted = [lock::Candidate { id: "uid-1".into(), name: "shop/pod-1".into() }];
        assert_eq!(lock::plan("/ll/locks/ns/a", &view, &wanted, 7), vec![]);
    }

    #[test]
    fn written_values_carry_our_cluster() {
        let create = Op::Create { key: "k".into(), value: lock::candidate_value("shop/pod-1"), lease: 7 };
        assert_eq!(stamp(create, &me()), Op::Create { key: "k".into(), value: value_for(&me(), "shop/pod-1"), lease: 7 });
        let reattach = Op::Reattach { key: "k".into(), mod_revision: 3, value: lock::candidate_value("shop/pod-1"), lease: 8 };
        assert!(matches!(stamp(reattach, &me()), Op::Reattach { value, .. } if value == value_for(&me(), "shop/pod-1")));
        let delete = Op::Delete { key: "k".into(), create_revision: 3 };
        assert_eq!(stamp(delete.clone(), &me()), delete);
    }
}
