//! The lock decision: who holds, who waits, which etcd operations bring the keys under one lock
//! prefix to what is wanted. Pure — no I/O — so it is unit- and property-tested in isolation.
//!
//! The recipe is etcd's own mutex (client/v3/concurrency): every candidate owns one key
//! `<prefix>/<id>` created once, guarded by `create_revision == 0`; the key with the lowest create
//! revision holds the lock and that revision is its fencing token. Because every new key gets a
//! revision above all existing ones, the token strictly increases from holder to holder.
//!
//! ```text
//!   keys under <prefix>/ (from the etcd mirror) ──┐
//!   wanted candidates, in creation priority ──────┼─▶ plan() ─▶ [Create | Delete | Reattach]
//!   the lease new keys attach to ─────────────────┘   holder() ─▶ lowest create revision
//! ```

use std::collections::BTreeSet;

/// Values of our keys start with this marker, so a controller recognises its own keys and never
/// touches keys of other etcd clients (e.g. `etcdctl lock`) that share a prefix.
pub const VALUE_MARKER: &str = "leaderlock:";

/// One key under a lock prefix, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    pub key: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl KeyState {
    /// The candidate name recorded in our value (`leaderlock:<name>`), or None for foreign keys.
    pub fn candidate_name(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()?.strip_prefix(VALUE_MARKER)
    }
}

/// A pod (or any participant) that wants a key under a lock prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Candidate {
    /// Stable, unique within the lock, safe in an etcd key (a pod UID): the key is `<prefix>/<id>`.
    pub id: String,
    /// What users see as the holder (`<namespace>/<pod>` is recorded in the value).
    pub name: String,
}

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub key: String,
    /// The holder key's create revision: strictly increasing from holder to holder.
    pub token: i64,
    /// `Some(candidate id)` for our keys, `None` for a holder outside LeaderLock.
    pub candidate: Option<String>,
    /// The name recorded in the value, for our keys.
    pub name: Option<String>,
}

/// One etcd operation; [`plan`] returns the fewest that reach the wanted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put `key` with `lease` only if it does not exist (`create_revision == 0`).
    Create { key: String, value: Vec<u8>, lease: i64 },
    /// Delete `key` only if it is still the incarnation we saw.
    Delete { key: String, create_revision: i64 },
    /// Move an existing key to `lease`; a Put keeps the create revision, so the holder and its
    /// token are unchanged (used when the lease a key should live on changed, e.g. a new TTL).
    Reattach { key: String, mod_revision: i64, value: Vec<u8>, lease: i64 },
}

/// The key a candidate owns under `prefix`.
pub fn candidate_key(prefix: &str, id: &str) -> String {
    format!("{prefix}/{id}")
}

/// The value recorded in a candidate's key.
pub fn candidate_value(name: &str) -> Vec<u8> {
    format!("{VALUE_MARKER}{name}").into_bytes()
}

/// Keys that belong to the lock `prefix` (directly under `<prefix>/`), by create revision.
fn keys_of<'a>(prefix: &str, keys: &'a [KeyState]) -> Vec<&'a KeyState> {
    let dir = format!("{prefix}/");
    let mut ks: Vec<&KeyState> = keys.iter().filter(|k| k.key.starts_with(&dir)).collect();
    ks.sort_by_key(|k| (k.create_revision, k.key.clone()));
    ks
}

/// The holder of the lock `prefix`: the key with the lowest create revision, ours or not.
pub fn holder(prefix: &str, keys: &[KeyState]) -> Option<Holder> {
    let k = *keys_of(prefix, keys).first()?;
    let dir = format!("{prefix}/");
    let name = k.candidate_name().map(str::to_string);
    Some(Holder { key: k.key.clone(), token: k.create_revision, candidate: name.as_ref().map(|_| k.key[dir.len()..].to_string()), name })
}

/// The operations that make the keys under `prefix` match `wanted`: a key for each wanted
/// candidate (created in `wanted` order, so the first one leads when none holds), no key of
/// ours for anyone else, every key of ours on `lease`. Foreign keys are never touched.
pub fn plan(prefix: &str, keys: &[KeyState], wanted: &[Candidate], lease: i64) -> Vec<Op> {
    let dir = format!("{prefix}/");
    let wanted_ids: BTreeSet<&str> = wanted.iter().map(|c| c.id.as_str()).collect();
    let mut ops = Vec::new();
    let mut present = BTreeSet::new();
    for k in keys_of(prefix, keys) {
        let id = &k.key[dir.len()..];
        present.insert(id.to_string());
        if k.candidate_name().is_none() {
            continue; // not ours: an external holder or waiter
        }
        if !wanted_ids.contains(id) {
            ops.push(Op::Delete { key: k.key.clone(), create_revision: k.create_revision });
        } else if k.lease != lease {
            ops.push(Op::Reattach { key: k.key.clone(), mod_revision: k.mod_revision, value: k.value.clone(), lease });
        }
    }
    let mut seen = BTreeSet::new();
    for c in wanted {
        if !present.contains(&c.id) && seen.insert(c.id.as_str()) {
            ops.push(Op::Create { key: candidate_key(prefix, &c.id), value: candidate_value(&c.name), lease });
        }
    }
    ops
}

/// Puts `previous` (the last known holder) first, keeping the others' order: after a lost lease
/// wiped every key, recreating the previous holder's key first keeps the same pod in charge.
pub fn previous_holder_first(wanted: &mut [Candidate], previous: Option<&str>) {
    if let Some(p) = previous
        && let Some(i) = wanted.iter().position(|c| c.id == p)
    {
        wanted[..=i].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const P: &str = "/ll/locks/ns/a";

    /// A tiny etcd for one prefix: revisions grow by one per write, like the real one.
    #[derive(Default, Clone)]
    struct FakeEtcd {
        rev: i64,
        keys: BTreeMap<String, KeyState>,
    }

    impl FakeEtcd {
        fn view(&self) -> Vec<KeyState> {
            self.keys.values().cloned().collect()
        }
        fn put(&mut self, key: &str, value: &[u8], lease: i64) {
            self.rev += 1;
            let create = self.keys.get(key).map_or(self.rev, |k| k.create_revision);
            let ks = KeyState { key: key.into(), create_revision: create, mod_revision: self.rev, lease, value: value.into() };
            self.keys.insert(key.into(), ks);
        }
        fn delete(&mut self, key: &str) {
            if self.keys.remove(key).is_some() {
                self.rev += 1;
            }
        }
        fn apply(&mut self, ops: &[Op]) {
            for op in ops {
                match op {
                    Op::Create { key, value, lease } => {
                        if !self.keys.contains_key(key) {
                            self.put(key, value, *lease)
                        }
                    }
                    Op::Delete { key, create_revision } => {
                        if self.keys.get(key).map(|k| k.create_revision) == Some(*create_revision) {
                            self.delete(key)
                        }
                    }
                    Op::Reattach { key, mod_revision, value, lease } => {
                        if self.keys.get(key).map(|k| k.mod_revision) == Some(*mod_revision) {
                            self.put(key, value, *lease)
                        }
                    }
                }
            }
        }
    }

    fn cand(i: u8) -> Candidate {
        Candidate { id: format!("uid-{i}"), name: format!("ns/pod-{i}") }
    }

    #[test]
    fn first_wanted_candidate_holds_an_empty_lock() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(2), cand(1)], 7));
        let h = holder(P, &etcd.view()).unwrap();
        assert_eq!(h.candidate.as_deref(), Some("uid-2"));
        assert_eq!(h.name.as_deref(), Some("ns/pod-2"));
        assert_eq!(h.token, 1);
    }

    #[test]
    fn external_holder_is_reported_and_never_deleted() {
        let mut etcd = FakeEtcd::default();
        etcd.put(&format!("{P}/694d9a1b2c3d"), b"", 99);
        let ops = plan(P, &etcd.view(), &[cand(1)], 7);
        assert_eq!(ops.len(), 1, "only our candidate's key is created: {ops:?}");
        etcd.apply(&ops);
        let h = holder(P, &etcd.view()).unwrap();
        assert_eq!((h.key.as_str(), h.candidate), (&*format!("{P}/694d9a1b2c3d"), None));
        assert!(plan(P, &etcd.view(), &[], 7).iter().all(|op| matches!(op, Op::Delete { key, .. } if key.ends_with("uid-1"))));
    }

    #[test]
    fn keys_of_a_sibling_prefix_are_not_part_of_the_lock() {
        let mut etcd = FakeEtcd::default();
        etcd.put(&format!("{P}b/uid-9"), &candidate_value("x"), 7); // lock "ab", not "a"
        assert_eq!(holder(P, &etcd.view()), None);
        assert!(plan(P, &etcd.view(), &[], 7).is_empty());
    }

    #[test]
    fn a_new_lease_reattaches_keys_without_changing_the_holder() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(1), cand(2)], 7));
        let before = holder(P, &etcd.view()).unwrap();
        let ops = plan(P, &etcd.view(), &[cand(1), cand(2)], 8);
        assert!(ops.iter().all(|op| matches!(op, Op::Reattach { lease: 8, .. })) && ops.len() == 2);
        etcd.apply(&ops);
        assert_eq!(holder(P, &etcd.view()), Some(before));
    }

    #[test]
    fn previous_holder_moves_first_and_others_keep_their_order() {
        let mut w = vec![cand(1), cand(2), cand(3)];
        previous_holder_first(&mut w, Some("uid-3"));
        assert_eq!(w, vec![cand(3), cand(1), cand(2)]);
        previous_holder_first(&mut w, Some("unknown"));
        assert_eq!(w, vec![cand(3), cand(1), cand(2)]);
    }

    /// A step of a random history: candidates join and leave, outsiders lock, leases change.
    #[derive(Clone, Debug)]
    enum Step {
        Wanted(Vec<u8>),
        ExternalLock(u8),
        ExternalUnlock(u8),
        NewLease(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => proptest::collection::vec(0u8..8, 0..6).prop_map(Step::Wanted),
            1 => (0u8..3).prop_map(Step::ExternalLock),
            1 => (0u8..3).prop_map(Step::ExternalUnlock),
            1 => (1i64..4).prop_map(Step::NewLease),
        ]
    }

    proptest! {
        #[test]
        fn properties_hold_over_any_history(steps in proptest::collection::vec(step(), 1..40)) {
            let mut etcd = FakeEtcd::default();
            let mut wanted: Vec<Candidate> = Vec::new();
            let mut lease = 1;
            let mut last_token = 0;
            let mut last_holder_key: Option<String> = None;
            for s in steps {
                match s {
                    Step::Wanted(ids) => wanted = ids.into_iter().map(cand).collect(),
                    Step::ExternalLock(i) => etcd.put(&format!("{P}/ext{i}"), b"", 100 + i as i64),
                    Step::ExternalUnlock(i) => etcd.delete(&format!("{P}/ext{i}")),
                    Step::NewLease(l) => lease = l,
                }
                let ops = plan(P, &etcd.view(), &wanted, lease);
                etcd.apply(&ops);
                let view = etcd.view();

                // Fixed point: applying the plan leaves nothing more to do.
                prop_assert_eq!(plan(P, &view, &wanted, lease), vec![]);
                // Every wanted candidate has exactly one key, nobody else has one of ours.
                let ours: Vec<&KeyState> = view.iter().filter(|k| k.candidate_name().is_some()).collect();
                let mut ids: Vec<String> = wanted.iter().map(|c| c.id.clone()).collect();
                ids.sort(); ids.dedup();
                let mut key_ids: Vec<String> = ours.iter().map(|k| k.key[P.len() + 1..].to_string()).collect();
                key_ids.sort();
                prop_assert_eq!(key_ids, ids);
                prop_assert!(ours.iter().all(|k| k.lease == lease));
                // The holder has the lowest create revision of all keys.
                let h = holder(P, &view);
                let min = view.iter().map(|k| k.create_revision).min();
                prop_assert_eq!(h.as_ref().map(|h| h.token), min);
                // Tokens never decrease; a new holder has a strictly greater one.
                if let Some(h) = h {
                    prop_assert!(h.token >= last_token);
                    if last_holder_key.as_deref().is_some_and(|k| k != h.key) {
                        prop_assert!(h.token > last_token);
                    }
                    last_token = h.token;
                    last_holder_key = Some(h.key);
                }
            }
        }
    }
}
