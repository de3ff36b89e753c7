//! The LeaderLock table as one reconcile sees it, and the conflict component it resolves.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{Entry, Key, LeaderLocks, PrefixOf, key_of, overlaps};
use crate::resource::LeaderLock;

/// The LeaderLock table, with the reconciled LeaderLock as the reconcile sees it (it may be a
/// newer version than the table's, or already gone from it).
pub(super) struct Lookup<'a> {
    pub(super) table: &'a LeaderLocks,
    pub(super) origin_key: Key,
    pub(super) origin: Entry,
}

impl<'a> Lookup<'a> {
    pub(super) fn new(table: &'a LeaderLocks, ll: &Arc<LeaderLock>, prefix_of: &PrefixOf) -> Self {
        Lookup { table, origin_key: key_of(&**ll), origin: Entry::new(ll.clone(), prefix_of) }
    }

    pub(super) fn get(&self, key: &Key) -> Option<&Entry> {
        if *key == self.origin_key { Some(&self.origin) } else { self.table.by_key.get(key) }
    }

    /// Whether a lock of any LeaderLock now (the origin as the reconcile sees it) has a prefix
    /// equal to, inside, or enclosing `prefix`.
    pub(super) fn in_use(&self, prefix: &str) -> bool {
        let others = self.table.overlapping(prefix).into_iter().any(|k| *k != self.origin_key);
        others || self.origin.prefixes.iter().any(|(p, _)| overlaps(p, prefix))
    }

    /// Every LeaderLock connected to `seeds` by a shared lock name (same namespace as the
    /// origin) or an overlapping prefix: the only ones that can change how the seeds resolve.
    /// The origin must be a seed (the table may not know its current version).
    pub(super) fn component(&self, seeds: impl IntoIterator<Item = Key>) -> BTreeSet<Key> {
        let ns = &self.origin_key.0;
        let mut seen: BTreeSet<Key> = BTreeSet::new();
        let mut todo: Vec<Key> = seeds.into_iter().collect();
        while let Some(key) = todo.pop() {
            if !seen.insert(key.clone()) {
                continue;
            }
            let Some(e) = self.get(&key) else { continue };
            let local = key.0 == *ns;
            let mut next: HashSet<Key> = HashSet::new();
            if local {
                for l in e.ll.spec.lock_specs().iter() {
                    next.extend(self.table.by_lock.get(&(ns.clone(), l.name.clone())).map(|n| (ns.clone(), n.clone())));
                }
            }
            for (p, overridden) in &e.prefixes {
                if local || *overridden {
                    next.extend(self.table.overlapping(p).into_iter().cloned());
                }
            }
            todo.extend(next.into_iter().filter(|k| !seen.contains(k)));
        }
        seen
    }
}
