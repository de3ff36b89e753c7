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

/// One key in a lock's line; the first one holds the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockKey {
    pub key: String,
    /// The key's create revision: the fencing token while it holds, strictly increasing from
    /// holder to holder.
    pub token: i64,
    /// `Some(candidate id)` for our keys, `None` for a key outside LeaderLock.
    pub owner: Option<String>,
    /// The name recorded in the value, for our keys.
    pub name: Option<String>,
}

impl LockKey {
    /// How users see a key LeaderLock did not write here: the name it records (another
    /// cluster's `<cluster>/<namespace>/<pod>`) or `etcd:<key>` (e.g. an `etcdctl lock` client).
    pub fn outside_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("etcd:{}", self.key))
    }
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

/// The candidate a key suffix belongs to: `<id>`, or `<id>.<n>` once [`plan_move`] sent the key to
/// the back of the line (a transaction cannot delete and create the same key, so a moved key
/// gets the next name). Pod UIDs have no dot.
pub fn candidate_id(suffix: &str) -> &str {
    suffix.split_once('.').map_or(suffix, |(id, _)| id)
}

/// The name a moved key is created under: `<id>.1`, then `<id>.2`, ...
fn moved_key(key: &str) -> String {
    let (dir, suffix) = key.rsplit_once('/').unwrap_or(("", key));
    let next = match suffix.split_once('.') {
        Some((id, n)) => format!("{id}.{}", n.parse::<u64>().map_or(1, |n| n + 1)),
        None => format!("{suffix}.1"),
    };
    format!("{dir}/{next}")
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
pub fn holder(prefix: &str, keys: &[KeyState]) -> Option<LockKey> {
    keys_of(prefix, keys).first().map(|k| as_lock_key(prefix, k))
}

/// Everyone in line for the lock `prefix`, holder first: each key as a [`LockKey`] (its create
/// revision is the token it would hold with).
pub fn line(prefix: &str, keys: &[KeyState]) -> Vec<LockKey> {
    keys_of(prefix, keys).iter().map(|k| as_lock_key(prefix, k)).collect()
}

fn as_lock_key(prefix: &str, k: &KeyState) -> LockKey {
    let name = k.candidate_name().map(str::to_string);
    let id = candidate_id(&k.key[prefix.len() + 1..]).to_string();
    LockKey { key: k.key.clone(), token: k.create_revision, owner: name.as_ref().map(|_| id), name }
}

/// The operations that make the keys under `prefix` match `wanted`: a key for each wanted
/// candidate (created in `wanted` order, so the first one leads when none holds), no key of
/// ours for anyone else, every key of ours on `lease`. Foreign keys are never touched.
///
/// Deletions go last in line first: when several leave at once (the pods of a lost node), the
/// holder's key goes last and the lock passes once, straight to the first key that stays,
/// instead of resting for a moment on each leaving key behind it.
pub fn plan(prefix: &str, keys: &[KeyState], wanted: &[Candidate], lease: i64) -> Vec<Op> {
    let dir = format!("{prefix}/");
    let wanted_ids: BTreeSet<&str> = wanted.iter().map(|c| c.id.as_str()).collect();
    let mut ops = Vec::new();
    let mut deletes = Vec::new();
    let mut present = BTreeSet::new();
    for k in keys_of(prefix, keys) {
        let id = candidate_id(&k.key[dir.len()..]);
        let first_of_its_candidate = present.insert(id.to_string());
        if k.candidate_name().is_none() {
            continue; // not ours: an external holder or waiter
        }
        if !wanted_ids.contains(id) || !first_of_its_candidate {
            deletes.push(Op::Delete { key: k.key.clone(), create_revision: k.create_revision });
        } else if k.lease != lease {
            ops.push(Op::Reattach { key: k.key.clone(), mod_revision: k.mod_revision, value: k.value.clone(), lease });
        }
    }
    ops.extend(deletes.into_iter().rev());
    let mut seen = BTreeSet::new();
    for c in wanted {
        if !present.contains(&c.id) && seen.insert(c.id.as_str()) {
            ops.push(Op::Create { key: candidate_key(prefix, &c.id), value: candidate_value(&c.name), lease });
        }
    }
    ops
}

/// Whom a planned handover moves a lock to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The next in line after the holder (a step-down).
    Next,
    /// This candidate (by id).
    Candidate(&'a str),
}

/// Why a handover cannot be made from the keys as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unmovable {
    #[error("the lock has no holder")]
    NoHolder,
    #[error("the holder changed (its fencing token is {now}, not {expected})")]
    HolderChanged { expected: i64, now: i64 },
    #[error("the lock is held outside this cluster's LeaderLock ({key}); only its owner can release it")]
    ExternalHolder { key: String },
    #[error("the target has no key in the lock's queue")]
    NotQueued,
    #[error("the target already holds the lock")]
    AlreadyHolder,
    #[error("nobody else is in line")]
    NobodyNext,
    #[error("{key}, a key of another etcd client, is in line ahead of the target and cannot be moved")]
    ExternalAhead { key: String },
}

/// A handover as one etcd transaction: delete the keys ahead of the target (the holder and any
/// waiter before it), each guarded on its create revision, and recreate the holder's at the back
/// of the line, so the target leads at once. The queue's front is never empty, so `etcdctl lock`
/// and Go `Mutex` waiters stay right. Waiters that were ahead of the target are recreated after
/// it, in their order, one transaction each: keys created in one transaction would share a create
/// revision, and the recipe needs every key's to be distinct (it is the fencing token, and a
/// `Mutex` waiter waits only for keys with a lower one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The transaction: guarded deletes, then the guarded create of the holder's new key.
    pub ops: Vec<Op>,
    /// Guarded creates of the other moved keys, each in its own transaction, in order.
    pub then: Vec<Op>,
    /// The key that leads once the transaction lands, and its create revision (the new fencing
    /// token), which the transaction also checks.
    pub target: (String, i64),
}

/// Plans the handover of the lock `prefix`, whose holder must still have the fencing token
/// `holder_token`, to `target`.
pub fn plan_move(prefix: &str, keys: &[KeyState], holder_token: i64, target: Target) -> Result<Move, Unmovable> {
    let dir = format!("{prefix}/");
    let line = keys_of(prefix, keys);
    let front = line.first().ok_or(Unmovable::NoHolder)?;
    if front.create_revision != holder_token {
        return Err(Unmovable::HolderChanged { expected: holder_token, now: front.create_revision });
    }
    if front.candidate_name().is_none() {
        return Err(Unmovable::ExternalHolder { key: front.key.clone() });
    }
    let at = match target {
        Target::Next => 1,
        Target::Candidate(id) => {
            line.iter().position(|k| k.candidate_name().is_some() && candidate_id(&k.key[dir.len()..]) == id).ok_or(Unmovable::NotQueued)?
        }
    };
    if at == 0 {
        return Err(Unmovable::AlreadyHolder);
    }
    let to = line.get(at).ok_or(Unmovable::NobodyNext)?;
    let ahead = &line[..at];
    if let Some(k) = ahead.iter().find(|k| k.candidate_name().is_none()) {
        return Err(Unmovable::ExternalAhead { key: k.key.clone() });
    }
    let mut ops: Vec<Op> = ahead.iter().map(|k| Op::Delete { key: k.key.clone(), create_revision: k.create_revision }).collect();
    let mut creates = ahead.iter().map(|k| Op::Create { key: moved_key(&k.key), value: k.value.clone(), lease: k.lease });
    ops.extend(creates.next());
    Ok(Move { ops, then: creates.collect(), target: (to.key.clone(), to.create_revision) })
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
        /// One transaction: every write in it gets the same revision, as in etcd.
        fn txn(&mut self, ops: &[Op]) {
            let rev = self.rev + 1;
            for op in ops {
                self.rev = rev - 1;
                self.apply(std::slice::from_ref(op));
            }
            self.rev = rev;
        }
        fn apply_move(&mut self, r: &Move) {
            self.txn(&r.ops);
            self.apply(&r.then);
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
    fn when_the_holder_and_the_next_in_line_leave_together_the_lock_passes_once() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(1), cand(2), cand(3)], 7));
        let mut holders = vec![];
        for op in plan(P, &etcd.view(), &[cand(3)], 7) {
            etcd.apply(std::slice::from_ref(&op));
            holders.push(holder(P, &etcd.view()).and_then(|h| h.owner));
        }
        assert_eq!(holders, [Some("uid-1".to_string()), Some("uid-3".to_string())], "never held by uid-2 on its way out");
    }

    #[test]
    fn first_wanted_candidate_holds_an_empty_lock() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(2), cand(1)], 7));
        let h = holder(P, &etcd.view()).unwrap();
        assert_eq!(h.owner.as_deref(), Some("uid-2"));
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
        assert_eq!((h.key.as_str(), h.owner), (&*format!("{P}/694d9a1b2c3d"), None));
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

    fn line(etcd: &FakeEtcd) -> Vec<String> {
        keys_of(P, &etcd.view()).iter().map(|k| k.key[P.len() + 1..].to_string()).collect()
    }

    #[test]
    fn a_handover_sends_the_keys_ahead_of_the_target_to_the_back_in_their_order() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(1), cand(2), cand(3), cand(4)], 7));
        let r = plan_move(P, &etcd.view(), 1, Target::Candidate("uid-3")).unwrap();
        assert_eq!(r.target, (format!("{P}/uid-3"), 3));
        etcd.apply_move(&r);
        assert_eq!(line(&etcd), ["uid-3", "uid-4", "uid-1.1", "uid-2.1"]);
        assert_eq!(holder(P, &etcd.view()).unwrap().owner.as_deref(), Some("uid-3"));
        // The moved keys are still their candidates' keys: nothing to create or delete.
        assert_eq!(plan(P, &etcd.view(), &[cand(1), cand(2), cand(3), cand(4)], 7), []);
        // A step-down moves only the holder; a moved key is renamed again.
        let token = holder(P, &etcd.view()).unwrap().token;
        etcd.apply_move(&plan_move(P, &etcd.view(), token, Target::Next).unwrap());
        let token = holder(P, &etcd.view()).unwrap().token;
        etcd.apply_move(&plan_move(P, &etcd.view(), token, Target::Candidate("uid-1")).unwrap());
        assert_eq!(line(&etcd), ["uid-1.1", "uid-2.1", "uid-3.1", "uid-4.1"]);
        let token = holder(P, &etcd.view()).unwrap().token;
        etcd.apply_move(&plan_move(P, &etcd.view(), token, Target::Next).unwrap());
        assert_eq!(line(&etcd), ["uid-2.1", "uid-3.1", "uid-4.1", "uid-1.2"]);
    }

    #[test]
    fn a_handover_is_refused_when_it_cannot_be_made_as_asked() {
        let mut etcd = FakeEtcd::default();
        etcd.apply(&plan(P, &[], &[cand(1), cand(2)], 7));
        let keys = etcd.view();
        assert_eq!(plan_move(P, &keys, 9, Target::Next), Err(Unmovable::HolderChanged { expected: 9, now: 1 }));
        assert_eq!(plan_move(P, &keys, 1, Target::Candidate("uid-1")), Err(Unmovable::AlreadyHolder));
        assert_eq!(plan_move(P, &keys, 1, Target::Candidate("uid-7")), Err(Unmovable::NotQueued));
        assert_eq!(plan_move(P, &[], 1, Target::Next), Err(Unmovable::NoHolder));
        etcd.put(&format!("{P}/694d"), b"", 99); // an `etcdctl lock` waiter, after uid-2
        etcd.apply(&plan(P, &etcd.view(), &[cand(1), cand(2), cand(3)], 7));
        let keys = etcd.view();
        assert_eq!(plan_move(P, &keys, 1, Target::Candidate("uid-3")), Err(Unmovable::ExternalAhead { key: format!("{P}/694d") }));
        assert!(plan_move(P, &keys, 1, Target::Candidate("uid-2")).is_ok());
        let mut single = FakeEtcd::default();
        single.apply(&plan(P, &[], &[cand(1)], 7));
        assert_eq!(plan_move(P, &single.view(), 1, Target::Next), Err(Unmovable::NobodyNext));
        let mut outside = FakeEtcd::default();
        outside.put(&format!("{P}/694d"), b"", 99);
        assert_eq!(plan_move(P, &outside.view(), 1, Target::Next), Err(Unmovable::ExternalHolder { key: format!("{P}/694d") }));
    }

    /// A step of a random history: candidates join and leave, outsiders lock, leases change.
    #[derive(Clone, Debug)]
    enum Step {
        Wanted(Vec<u8>),
        ExternalLock(u8),
        ExternalUnlock(u8),
        NewLease(i64),
        /// A handover to the next in line (None) or to candidate `uid-<i>`.
        Handover(Option<u8>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => proptest::collection::vec(0u8..8, 0..6).prop_map(Step::Wanted),
            1 => (0u8..3).prop_map(Step::ExternalLock),
            1 => (0u8..3).prop_map(Step::ExternalUnlock),
            1 => (1i64..4).prop_map(Step::NewLease),
            2 => proptest::option::of(0u8..8).prop_map(Step::Handover),
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
                    Step::Handover(to) => {
                        let before = etcd.view();
                        let token = holder(P, &before).map_or(0, |h| h.token);
                        let id = to.map(|i| format!("uid-{i}"));
                        let target = id.as_deref().map_or(Target::Next, Target::Candidate);
                        if let Ok(r) = plan_move(P, &before, token, target) {
                            etcd.apply_move(&r);
                            let h = holder(P, &etcd.view()).unwrap();
                            prop_assert_eq!((&h.key, h.token), (&r.target.0, r.target.1));
                            prop_assert!(h.token > token, "the new holder's token grows");
                            prop_assert_eq!(etcd.view().len(), before.len(), "nobody lost their key");
                        }
                    }
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
                let mut key_ids: Vec<String> = ours.iter().map(|k| candidate_id(&k.key[P.len() + 1..]).to_string()).collect();
                key_ids.sort();
                prop_assert_eq!(key_ids, ids);
                prop_assert!(ours.iter().all(|k| k.lease == lease));
                // Every key has its own create revision: the recipe's order and tokens need it.
                let mut revs: Vec<i64> = view.iter().map(|k| k.create_revision).collect();
                revs.sort();
                revs.dedup();
                prop_assert_eq!(revs.len(), view.len(), "two keys share a create revision");
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
