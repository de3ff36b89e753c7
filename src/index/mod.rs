//! In-memory indexes over the watched LeaderLocks and pods, so that a reconcile or a pod event
//! touches only the objects that concern it. Without them every reconcile read, parsed and sorted
//! every LeaderLock and pod of its namespace, and every pod event evaluated every selector:
//! quadratic in the namespace's size, which starved the controller at 1,000 LeaderLocks.
//!
//! ```text
//!  watch events ─▶ Index ──view(LeaderLock)──▶ View: the LeaderLock, the pods it concerns,
//!                   │                               the LeaderLocks selecting those pods,
//!                   │                               and their lock resolutions
//!                   └──on_*_event / leaderlocks_with_prefix──▶ reconcile triggers
//! ```
//!
//! A relist (Init … InitDone) builds a new table and swaps it in whole, as kube's reflector does.
//! LeaderLocks are not copied: the index shares the objects of kube-runtime's store (which the
//! `Controller` needs anyway), and is fed each event after that store applied it.
//! Pure: no I/O, unit-tested below.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::pods::{Matcher, PodInfo};
use crate::resolve::{Resolution, resolve_namespace, selector_problem};
use crate::resource::{GROUP, LeaderLock, LockSpec};

/// The locks (name, etcd prefix) claimed for one LeaderLock.
type Claims = Box<[(String, String)]>;

/// `(namespace, name)` of an object.
type Key = (String, String);
/// `(namespace, label key, label value)`.
type LabelKey = (String, String, String);

/// Maps a lock of a LeaderLock in a namespace to its etcd prefix, or says why it may not have one.
pub type PrefixOf = dyn Fn(&str, &LockSpec) -> Result<String, String> + Send + Sync;

/// A multimap whose empty sets are dropped, so it never grows with deleted objects. Hash sets:
/// most hold one to three names, where a B-tree's node allocation is several times the data.
struct Multi<K, V>(HashMap<K, HashSet<V>>);

impl<K, V> Default for Multi<K, V> {
    fn default() -> Self {
        Multi(HashMap::new())
    }
}

impl<K: Hash + Eq, V: Hash + Eq> Multi<K, V> {
    fn add(&mut self, k: K, v: V) {
        self.0.entry(k).or_default().insert(v);
    }

    fn remove(&mut self, k: &K, v: &V) {
        if let Some(set) = self.0.get_mut(k) {
            set.remove(v);
            if set.is_empty() {
                self.0.remove(k);
            }
        }
    }

    fn get<'a>(&'a self, k: &K) -> impl Iterator<Item = &'a V> + use<'a, K, V> {
        self.0.get(k).into_iter().flatten()
    }
}

fn key_of<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// A LeaderLock with what is derived from its spec once per version, not once per reconcile.
struct Entry {
    ll: Arc<LeaderLock>,
    /// None when the selector cannot be evaluated: it selects nothing.
    selector: Option<Matcher>,
    /// The etcd prefix of each lock the operator allows, and whether it comes from `etcdKey`.
    prefixes: Vec<(String, bool)>,
}

impl Entry {
    fn new(ll: Arc<LeaderLock>, prefix_of: &PrefixOf) -> Entry {
        let selector = selector_problem(&ll.spec.selector).is_none().then(|| Matcher::new(&ll.spec.selector)).flatten();
        let ns = ll.namespace().unwrap_or_default();
        let prefixes = ll.spec.lock_specs().iter().filter_map(|l| prefix_of(&ns, l).ok().map(|p| (p, l.etcd_key.is_some()))).collect();
        Entry { ll, selector, prefixes }
    }

    /// The first `matchLabels` pair: every pod it selects carries it, so pods are looked up by it.
    fn anchor(&self) -> Option<(&String, &String)> {
        self.selector.as_ref()?;
        self.ll.spec.selector.match_labels.as_ref()?.iter().next()
    }

    fn selects(&self, pod: &PodInfo) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(&pod.labels))
    }
}

#[derive(Default)]
struct LeaderLocks {
    by_key: HashMap<Key, Entry>,
    /// By the anchor pair of their selector.
    by_label: Multi<LabelKey, String>,
    /// Valid selectors without `matchLabels`, by namespace: checked against every pod.
    unanchored: Multi<String, String>,
    /// By `(namespace, lock name)`.
    by_lock: Multi<Key, String>,
    /// By etcd prefix (ordered, for overlap queries).
    by_prefix: BTreeMap<String, HashSet<Key>>,
    /// How many LeaderLocks set each `nodeLostAfterSeconds`: the node-loss deadlines to wake at.
    node_lost_after: BTreeMap<i64, usize>,
}

impl LeaderLocks {
    fn unindex(&mut self, key: &Key, e: &Entry) {
        let (ns, name) = key;
        match e.anchor() {
            Some((k, v)) => self.by_label.remove(&(ns.clone(), k.clone(), v.clone()), name),
            None if e.selector.is_some() => self.unanchored.remove(ns, name),
            None => {}
        }
        for l in e.ll.spec.lock_specs().iter() {
            self.by_lock.remove(&(ns.clone(), l.name.clone()), name);
        }
        if let Some(secs) = e.ll.spec.node_lost_after_seconds
            && let Some(n) = self.node_lost_after.get_mut(&secs)
        {
            *n -= 1;
            if *n == 0 {
                self.node_lost_after.remove(&secs);
            }
        }
        for (p, _) in &e.prefixes {
            if let Some(set) = self.by_prefix.get_mut(p) {
                set.remove(key);
                if set.is_empty() {
                    self.by_prefix.remove(p);
                }
            }
        }
    }

    /// Keys of the LeaderLocks with a prefix equal to, inside, or enclosing `p`.
    fn overlapping(&self, p: &str) -> Vec<&Key> {
        let mut out: Vec<&Key> = Vec::new();
        for (q, keys) in self.by_prefix.range(p.to_string()..) {
            if !q.starts_with(p) {
                break;
            }
            if q.len() == p.len() || q.as_bytes()[p.len()] == b'/' {
                out.extend(keys);
            }
        }
        for (i, _) in p.match_indices('/').filter(|(i, _)| *i > 0) {
            out.extend(self.by_prefix.get(&p[..i]).into_iter().flatten());
        }
        out
    }

    fn insert(&mut self, ll: Arc<LeaderLock>, prefix_of: &PrefixOf) {
        let key = key_of(&*ll);
        self.remove(&key);
        let e = Entry::new(ll, prefix_of);
        let (ns, name) = &key;
        match e.anchor() {
            Some((k, v)) => self.by_label.add((ns.clone(), k.clone(), v.clone()), name.clone()),
            None if e.selector.is_some() => self.unanchored.add(ns.clone(), name.clone()),
            None => {}
        }
        for l in e.ll.spec.lock_specs().iter() {
            self.by_lock.add((ns.clone(), l.name.clone()), name.clone());
        }
        for (p, _) in &e.prefixes {
            self.by_prefix.entry(p.clone()).or_default().insert(key.clone());
        }
        if let Some(secs) = e.ll.spec.node_lost_after_seconds {
            *self.node_lost_after.entry(secs).or_default() += 1;
        }
        self.by_key.insert(key, e);
    }

    /// Returns the LeaderLock it removes.
    fn remove(&mut self, key: &Key) -> Option<Arc<LeaderLock>> {
        let old = self.by_key.remove(key)?;
        self.unindex(key, &old);
        Some(old.ll)
    }

    fn of(lls: Vec<Arc<LeaderLock>>, prefix_of: &PrefixOf) -> LeaderLocks {
        let mut table = LeaderLocks::default();
        for ll in lls {
            table.insert(ll, prefix_of);
        }
        table
    }
}

#[derive(Default)]
struct Pods {
    by_key: HashMap<Key, Arc<PodInfo>>,
    by_label: Multi<LabelKey, String>,
    by_namespace: Multi<String, String>,
    /// By the node they were scheduled to.
    by_node: Multi<String, Key>,
    /// Pods carrying a `leaderlock.dev/<lock>` key, by `(namespace, lock)`.
    by_lock: Multi<Key, String>,
}

/// The locks whose keys (`leaderlock.dev/<lock>`, `leaderlock.dev/<lock>.token`) a pod carries.
fn locks_named_on(pod: &PodInfo) -> BTreeSet<String> {
    let keys = pod.our_annotations.keys().chain(pod.our_labels.keys());
    keys.filter_map(|k| k.strip_prefix(GROUP)?.strip_prefix('/'))
        .map(|rest| rest.strip_suffix(".token").unwrap_or(rest).to_string())
        .collect()
}

impl Pods {
    fn index(&mut self, pod: &PodInfo, add: bool) {
        let (ns, name) = (&pod.namespace, &pod.name);
        let each = |m: &mut Multi<LabelKey, String>, k: LabelKey| if add { m.add(k, name.clone()) } else { m.remove(&k, name) };
        for (k, v) in pod.labels.iter() {
            each(&mut self.by_label, (ns.clone(), k.to_string(), v.to_string()));
        }
        let each = |m: &mut Multi<Key, String>, k: Key| if add { m.add(k, name.clone()) } else { m.remove(&k, name) };
        for lock in locks_named_on(pod) {
            each(&mut self.by_lock, (ns.clone(), lock));
        }
        if add {
            self.by_namespace.add(ns.clone(), name.clone());
        } else {
            self.by_namespace.remove(ns, name);
        }
        if let Some(node) = &pod.node {
            let key = (ns.clone(), name.clone());
            if add { self.by_node.add(node.clone(), key) } else { self.by_node.remove(node, &key) }
        }
    }

    /// Returns the version it replaces.
    fn insert(&mut self, pod: &Pod) -> (Arc<PodInfo>, Option<Arc<PodInfo>>) {
        let info = Arc::new(PodInfo::of(pod));
        let old = self.remove(&(info.namespace.clone(), info.name.clone()));
        self.index(&info, true);
        self.by_key.insert((info.namespace.clone(), info.name.clone()), info.clone());
        (info, old)
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<PodInfo>> {
        let old = self.by_key.remove(key)?;
        self.index(&old, false);
        Some(old)
    }
}

/// Adds the LeaderLocks one version of a pod concerns: those selecting it and those whose lock
/// keys it carries (to be removed).
fn concerned_by(lls: &LeaderLocks, pod: &PodInfo, out: &mut BTreeSet<Key>) {
    let ns = &pod.namespace;
    out.extend(selecting(lls, pod).into_iter().map(|n| (ns.clone(), n.clone())));
    for lock in locks_named_on(pod) {
        out.extend(lls.by_lock.get(&(ns.clone(), lock)).map(|n| (ns.clone(), n.clone())));
    }
}

fn refs(keys: impl IntoIterator<Item = Key>) -> Vec<ObjectRef<LeaderLock>> {
    keys.into_iter().map(|(ns, n)| ObjectRef::new(&n).within(&ns)).collect()
}

#[derive(Default)]
struct Inner {
    lls: LeaderLocks,
    pods: Pods,
    /// During a pod relist, the table being built to replace `pods`.
    pods_relist: Option<Pods>,
}

/// The indexes. Updated from the watch streams, read by reconciles and trigger mappers.
pub struct Index {
    inner: RwLock<Inner>,
    prefix_of: Box<PrefixOf>,
    /// kube-runtime's store of the LeaderLocks, whose objects the index shares.
    stored: Store<LeaderLock>,
    /// By UID, the locks (name, etcd prefix) the last reconcile here accepted for their
    /// LeaderLock, once their keys were written. For [`crate::resolve`]'s seniority (it settles
    /// same-second ties before the status shows it), and to find the keys of a lock removed
    /// from the spec, whose `etcdKey` the spec no longer says.
    /// (A boxed slice: a one-element `BTreeSet` is a 300-byte node, per LeaderLock.)
    claimed: RwLock<HashMap<String, Claims>>,
}

impl Index {
    pub fn new(prefix_of: impl Fn(&str, &LockSpec) -> Result<String, String> + Send + Sync + 'static, stored: Store<LeaderLock>) -> Index {
        Index { inner: RwLock::default(), prefix_of: Box::new(prefix_of), stored, claimed: RwLock::default() }
    }

    /// Records which locks the reconcile of `ll` just accepted (none: forget it).
    pub fn record_claims(&self, ll: &LeaderLock, resolved: &[(String, Resolution)]) {
        let Some(uid) = ll.metadata.uid.clone() else { return };
        let accepted: Claims = resolved
            .iter()
            .filter_map(|(n, r)| match r {
                Resolution::Accepted(p) => Some((n.clone(), p.clone())),
                Resolution::Rejected { .. } => None,
            })
            .collect();
        let mut claimed = self.claimed.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if accepted.is_empty() || ll.metadata.deletion_timestamp.is_some() {
            claimed.remove(&uid);
        } else {
            claimed.insert(uid, accepted);
        }
    }

    /// How many LeaderLocks have claims recorded (cheap: for `leaderlock_map_entries`).
    pub fn claims_len(&self) -> usize {
        self.claimed.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    fn is_claimed(&self, ll: &LeaderLock, lock: &str) -> bool {
        let claimed = self.claimed.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        ll.metadata.uid.as_ref().and_then(|u| claimed.get(u)).is_some_and(|locks| locks.iter().any(|(l, _)| l == lock))
    }

    /// The locks `ll` held in etcd (named in its status, or claimed here) that it no longer has
    /// at that prefix, and that no LeaderLock's lock overlaps now: their keys are ours alone to
    /// delete. A claim knows the prefix; a lock the status names but no claim does (after a
    /// restart) is looked for at its default one once the spec no longer accepts it.
    fn released(&self, lls: &Lookup, ll: &LeaderLock, mine: &[(String, Resolution)]) -> Vec<(String, String)> {
        let ns = ll.namespace().unwrap_or_default();
        let claimed: Vec<(String, String)> = {
            let claimed = self.claimed.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            ll.metadata.uid.as_ref().and_then(|u| claimed.get(u)).map(|c| c.to_vec()).unwrap_or_default()
        };
        let accepted = |lock: &str| mine.iter().any(|(n, r)| n == lock && matches!(r, Resolution::Accepted(_)));
        let reported = ll.status.iter().flat_map(|s| &s.locks).map(|l| l.name.clone()).filter(|n| !accepted(n));
        let mut held: BTreeMap<String, String> = BTreeMap::new();
        for name in reported {
            if let Ok(prefix) = (self.prefix_of)(&ns, &LockSpec { name: name.clone(), etcd_key: None }) {
                held.insert(name, prefix);
            }
        }
        held.extend(claimed);
        let has = |lock: &str, prefix: &str| mine.iter().any(|(n, r)| n == lock && *r == Resolution::Accepted(prefix.to_string()));
        let mut out: Vec<(String, String)> = held.into_iter().filter(|(lock, prefix)| !has(lock, prefix) && !lls.in_use(prefix)).collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out.dedup_by(|a, b| a.1 == b.1);
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Indexes `ev` once the store has applied it, and returns the LeaderLocks to reconcile
    /// besides the one applied (which the controller's own stream triggers): after a relist,
    /// those that changed or are new, and the contenders of those that vanished; after a
    /// deletion, its contenders. A relist's objects are indexed at InitDone, from the store.
    pub fn on_leaderlock_event(&self, ev: &watcher::Event<LeaderLock>) -> Vec<ObjectRef<LeaderLock>> {
        match ev {
            watcher::Event::Apply(ll) => {
                let shared = self.stored.get(&ObjectRef::from_obj(ll)).unwrap_or_else(|| Arc::new(ll.clone()));
                self.write().lls.insert(shared, &*self.prefix_of);
                vec![]
            }
            watcher::Event::Delete(ll) => {
                self.record_claims(ll, &[]);
                let mut inner = self.write();
                let gone = inner.lls.remove(&key_of(ll));
                refs(gone.map(|ll| self.contenders(&inner.lls, &ll)).unwrap_or_default())
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => vec![], // the store gathers them
            watcher::Event::InitDone => {
                let table = LeaderLocks::of(self.stored.state(), &*self.prefix_of);
                let mut inner = self.write();
                let version = |e: &Entry| e.ll.metadata.resource_version.clone();
                let mut changed: BTreeSet<Key> = table
                    .by_key
                    .iter()
                    .filter(|(k, e)| inner.lls.by_key.get(*k).map(version) != Some(version(e)))
                    .map(|(k, _)| k.clone())
                    .collect();
                let gone: Vec<Arc<LeaderLock>> =
                    inner.lls.by_key.iter().filter(|(k, _)| !table.by_key.contains_key(*k)).map(|(_, e)| e.ll.clone()).collect();
                inner.lls = table;
                for ll in &gone {
                    self.record_claims(ll, &[]);
                    changed.extend(self.contenders(&inner.lls, ll));
                }
                refs(changed)
            }
        }
    }

    /// Indexes `ev` and returns the LeaderLocks it concerns (see [`concerned_by`]), for the
    /// version it replaces too. A relist is indexed whole at InitDone: then only the pods that
    /// changed, appeared or vanished since the previous table count.
    pub fn on_pod_event(&self, ev: &watcher::Event<Pod>) -> Vec<ObjectRef<LeaderLock>> {
        let mut guard = self.write();
        let inner = &mut *guard;
        let mut concerned = BTreeSet::new();
        match ev {
            watcher::Event::Apply(pod) => {
                let (new, old) = inner.pods.insert(pod);
                for version in std::iter::once(&new).chain(&old) {
                    concerned_by(&inner.lls, version, &mut concerned);
                }
            }
            watcher::Event::Delete(pod) => {
                let old = inner.pods.remove(&key_of(pod)).unwrap_or_else(|| Arc::new(PodInfo::of(pod)));
                concerned_by(&inner.lls, &old, &mut concerned);
            }
            watcher::Event::Init => inner.pods_relist = Some(Pods::default()),
            watcher::Event::InitApply(pod) => drop(inner.pods_relist.get_or_insert_default().insert(pod)),
            watcher::Event::InitDone => {
                let Some(table) = inner.pods_relist.take() else { return vec![] };
                for (key, pod) in &table.by_key {
                    match inner.pods.by_key.get(key) {
                        Some(old) if old.resource_version == pod.resource_version => {}
                        Some(old) => {
                            concerned_by(&inner.lls, old, &mut concerned);
                            concerned_by(&inner.lls, pod, &mut concerned);
                        }
                        None => concerned_by(&inner.lls, pod, &mut concerned),
                    }
                }
                for (_, old) in inner.pods.by_key.iter().filter(|(k, _)| !table.by_key.contains_key(*k)) {
                    concerned_by(&inner.lls, old, &mut concerned);
                }
                inner.pods = table;
            }
        }
        refs(concerned)
    }

    /// The LeaderLocks with a lock under exactly `prefix` (an etcd change there concerns them).
    pub fn leaderlocks_with_prefix(&self, prefix: &str) -> Vec<ObjectRef<LeaderLock>> {
        let inner = self.read();
        inner.lls.by_prefix.get(prefix).into_iter().flatten().map(|(ns, n)| ObjectRef::new(n).within(ns)).collect()
    }

    /// The LeaderLocks concerned by the pods scheduled to `node`: a change of its verdict
    /// (lost, or renewing again) concerns them.
    pub fn leaderlocks_on_node(&self, node: &str) -> Vec<ObjectRef<LeaderLock>> {
        let inner = self.read();
        let mut concerned = BTreeSet::new();
        for key in inner.pods.by_node.get(&node.to_string()) {
            if let Some(pod) = inner.pods.by_key.get(key) {
                concerned_by(&inner.lls, pod, &mut concerned);
            }
        }
        refs(concerned)
    }

    /// Every `nodeLostAfterSeconds` a LeaderLock sets.
    pub fn node_lost_overrides(&self) -> BTreeSet<i64> {
        self.read().lls.node_lost_after.keys().copied().collect()
    }

    pub fn all_leaderlocks(&self) -> Vec<ObjectRef<LeaderLock>> {
        let inner = self.read();
        inner.lls.by_key.keys().map(|(ns, n)| ObjectRef::new(n).within(ns)).collect()
    }

    /// The other LeaderLocks of `table` whose lock resolution may depend on `ll` (shared lock
    /// names or overlapping prefixes, transitively): deleting `ll` may hand them a lock.
    fn contenders(&self, table: &LeaderLocks, ll: &Arc<LeaderLock>) -> BTreeSet<Key> {
        let me = key_of(&**ll);
        let mut component = Lookup::new(table, ll, &*self.prefix_of).component([me.clone()]);
        component.remove(&me);
        component
    }

    /// Everything a reconcile of `ll` reads: the pods it selects or whose keys name its locks,
    /// every LeaderLock selecting one of those pods, and how their locks resolve.
    pub fn view(&self, ll: &Arc<LeaderLock>) -> View {
        let inner = self.read();
        let (lls, pods) = (Lookup::new(&inner.lls, ll, &*self.prefix_of), &inner.pods);
        let (ns, me) = key_of(&**ll);
        let mut concerned: BTreeMap<String, Arc<PodInfo>> = BTreeMap::new();
        let anchored = lls.origin.anchor().map(|(k, v)| (ns.clone(), k.clone(), v.clone()));
        let selectable: Vec<&String> = match (&lls.origin.selector, anchored) {
            (None, _) => vec![],
            (Some(_), Some(anchor)) => pods.by_label.get(&anchor).collect(),
            (Some(_), None) => pods.by_namespace.get(&ns).collect(),
        };
        let carrying = ll.spec.lock_specs().iter().map(|l| l.name.clone()).collect::<Vec<_>>();
        let carrying = carrying.into_iter().flat_map(|l| pods.by_lock.get(&(ns.clone(), l)).collect::<Vec<_>>());
        for name in carrying
            .chain(selectable.into_iter().filter(|n| pods.by_key.get(&(ns.clone(), (*n).clone())).is_some_and(|p| lls.origin.selects(p))))
        {
            if let Some(p) = pods.by_key.get(&(ns.clone(), name.clone())) {
                concerned.insert(name.clone(), p.clone());
            }
        }
        let mut selecting_pod = BTreeMap::new();
        let mut seeds = BTreeSet::from([(ns.clone(), me.clone())]);
        for (name, pod) in &concerned {
            let mut by: Vec<String> = selecting(lls.table, pod).into_iter().filter(|n| **n != me).cloned().collect();
            if lls.origin.selects(pod) {
                by.push(me.clone());
            }
            seeds.extend(by.iter().map(|n| (ns.clone(), n.clone())));
            selecting_pod.insert(name.clone(), by);
        }
        let component = lls.component(seeds.iter().cloned());
        let (mut local, mut foreign) = (Vec::new(), Vec::new());
        for key in &component {
            if let Some(e) = lls.get(key) {
                if key.0 == ns { local.push(e.ll.clone()) } else { foreign.push(e.ll.clone()) }
            }
        }
        let resolved = resolve_namespace(&local, &foreign, &*self.prefix_of, |l, lock| self.is_claimed(l, lock));
        let selectors = seeds.iter().filter_map(|k| lls.get(k).map(|e| (k.1.clone(), (e.ll.clone(), e.selector.clone())))).collect();
        let released = self.released(&lls, ll, resolved.get(&me).map_or(&[][..], |m| &m[..]));
        View { leaderlocks: selectors, pods: concerned, selecting: selecting_pod, resolved, released, nodes: Default::default() }
    }
}

/// Whether one prefix is equal to, inside or enclosing the other (as whole path segments).
fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (format!("{a}/"), format!("{b}/"));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Names (same namespace) of the LeaderLocks with a valid selector matching `pod`.
fn selecting<'a>(lls: &'a LeaderLocks, pod: &PodInfo) -> Vec<&'a String> {
    let ns = &pod.namespace;
    let anchored = pod.labels.iter().flat_map(|(k, v)| lls.by_label.get(&(ns.clone(), k.to_string(), v.to_string())));
    let mut out: Vec<&String> = anchored
        .chain(lls.unanchored.get(ns))
        .filter(|n| lls.by_key.get(&(ns.clone(), (*n).clone())).is_some_and(|e| e.selects(pod)))
        .collect();
    out.sort();
    out.dedup();
    out
}

mod lookup;
mod view;

use lookup::Lookup;
pub use view::{NodeReport, View};

#[cfg(test)]
mod tests;
