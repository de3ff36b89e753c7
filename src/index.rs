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

use crate::lock::Holder;
use crate::pods::{LockRoles, Matcher, PodInfo};
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
        let prefixes = ll.spec.locks.iter().filter_map(|l| prefix_of(&ns, l).ok().map(|p| (p, l.etcd_key.is_some()))).collect();
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
}

impl LeaderLocks {
    fn unindex(&mut self, key: &Key, e: &Entry) {
        let (ns, name) = key;
        match e.anchor() {
            Some((k, v)) => self.by_label.remove(&(ns.clone(), k.clone(), v.clone()), name),
            None if e.selector.is_some() => self.unanchored.remove(ns, name),
            None => {}
        }
        for l in &e.ll.spec.locks {
            self.by_lock.remove(&(ns.clone(), l.name.clone()), name);
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
        for l in &e.ll.spec.locks {
            self.by_lock.add((ns.clone(), l.name.clone()), name.clone());
        }
        for (p, _) in &e.prefixes {
            self.by_prefix.entry(p.clone()).or_default().insert(key.clone());
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
        let carrying = ll.spec.locks.iter().flat_map(|l| pods.by_lock.get(&(ns.clone(), l.name.clone())));
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
        View { leaderlocks: selectors, pods: concerned, selecting: selecting_pod, resolved, released }
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

/// The LeaderLock table, with the reconciled LeaderLock as the reconcile sees it (it may be a
/// newer version than the table's, or already gone from it).
struct Lookup<'a> {
    table: &'a LeaderLocks,
    origin_key: Key,
    origin: Entry,
}

impl<'a> Lookup<'a> {
    fn new(table: &'a LeaderLocks, ll: &Arc<LeaderLock>, prefix_of: &PrefixOf) -> Self {
        Lookup { table, origin_key: key_of(&**ll), origin: Entry::new(ll.clone(), prefix_of) }
    }

    fn get(&self, key: &Key) -> Option<&Entry> {
        if *key == self.origin_key { Some(&self.origin) } else { self.table.by_key.get(key) }
    }

    /// Whether a lock of any LeaderLock now (the origin as the reconcile sees it) has a prefix
    /// equal to, inside, or enclosing `prefix`.
    fn in_use(&self, prefix: &str) -> bool {
        let others = self.table.overlapping(prefix).into_iter().any(|k| *k != self.origin_key);
        others || self.origin.prefixes.iter().any(|(p, _)| overlaps(p, prefix))
    }

    /// Every LeaderLock connected to `seeds` by a shared lock name (same namespace as the
    /// origin) or an overlapping prefix: the only ones that can change how the seeds resolve.
    /// The origin must be a seed (the table may not know its current version).
    fn component(&self, seeds: impl IntoIterator<Item = Key>) -> BTreeSet<Key> {
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
                for l in &e.ll.spec.locks {
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

/// What one reconcile reads, taken under the index's lock in one go.
pub struct View {
    /// The reconciled LeaderLock and every LeaderLock selecting a pod in `pods`, by name, with
    /// its parsed selector (None: selects nothing).
    pub leaderlocks: BTreeMap<String, (Arc<LeaderLock>, Option<Matcher>)>,
    /// The pods the reconciled LeaderLock selects or whose keys name one of its locks, by name.
    pub pods: BTreeMap<String, Arc<PodInfo>>,
    /// For each pod in `pods`, the LeaderLocks (names) selecting it.
    pub selecting: BTreeMap<String, Vec<String>>,
    /// How every lock of the LeaderLocks in `leaderlocks` resolves.
    pub resolved: BTreeMap<String, Vec<(String, Resolution)>>,
    /// The locks (name, etcd prefix) the reconciled LeaderLock held and no longer has, whose
    /// keys nobody else's lock covers: to be deleted.
    pub released: Vec<(String, String)>,
}

impl View {
    fn selects(&self, ll: &str, pod: &PodInfo) -> bool {
        self.leaderlocks.get(ll).and_then(|(_, s)| s.as_ref()).is_some_and(|s| s.matches(&pod.labels))
    }

    /// Candidate pods of `ll`, in creation-priority order (oldest pod first).
    pub fn candidates(&self, ll: &str) -> Vec<Arc<PodInfo>> {
        let mut c: Vec<Arc<PodInfo>> = self.pods.values().filter(|p| p.candidate && self.selects(ll, p)).cloned().collect();
        c.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        c
    }

    /// The roles every accepted lock of the namespace assigns to `pod`, given each lock
    /// prefix's holder. LeaderLocks being deleted assign nothing: their keys are to be removed.
    pub fn roles_for(&self, pod: &PodInfo, holder: impl Fn(&str) -> Option<Holder>) -> Vec<LockRoles> {
        if !pod.candidate {
            return vec![];
        }
        let name = pod.name.clone();
        let mut out = Vec::new();
        for ll in self.selecting.get(&name).into_iter().flatten() {
            let Some((obj, _)) = self.leaderlocks.get(ll) else { continue };
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            for (lock, res) in self.resolved.get(ll).into_iter().flatten() {
                let Resolution::Accepted(prefix) = res else { continue };
                let holds = |h: &Holder| h.candidate.is_some() && h.candidate == pod.uid;
                let leader = holder(prefix).filter(holds).map(|h| (name.clone(), h.token));
                out.push(LockRoles { lock: lock.clone(), candidates: vec![name.clone()], leader, labels: obj.spec.pod_labels });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::LeaderLockSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time};

    fn prefix_of(ns: &str, l: &LockSpec) -> Result<String, String> {
        match &l.etcd_key {
            Some(k) if k.starts_with("/shared/") => Ok(k.clone()),
            Some(k) => Err(format!("{k} is not allowed")),
            None => Ok(format!("/ll/locks/{ns}/{}", l.name)),
        }
    }

    fn ll(ns: &str, name: &str, age: i64, app: &str, locks: &[(&str, Option<&str>)]) -> LeaderLock {
        let mut l = LeaderLock::new(
            name,
            LeaderLockSpec {
                selector: LabelSelector { match_labels: Some([("app".to_string(), app.to_string())].into()), ..Default::default() },
                locks: locks.iter().map(|(n, k)| LockSpec { name: n.to_string(), etcd_key: k.map(str::to_string) }).collect(),
                ttl_seconds: 15,
                pod_labels: false,
            },
        );
        l.metadata.namespace = Some(ns.into());
        l.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(1_700_000_000 + age).unwrap()));
        l
    }

    fn pod(ns: &str, name: &str, app: &str, keys: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p.metadata.annotations = Some(keys.iter().map(|k| (k.to_string(), "standby".to_string())).collect());
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
            ..Default::default()
        });
        p
    }

    /// An index and the store it shares LeaderLocks with, fed as the controller feeds them.
    struct Fixture {
        idx: Index,
        writer: kube::runtime::reflector::store::Writer<LeaderLock>,
    }

    impl Fixture {
        fn ll_event(&mut self, ev: watcher::Event<LeaderLock>) -> Vec<ObjectRef<LeaderLock>> {
            self.writer.apply_watcher_event(&ev);
            self.idx.on_leaderlock_event(&ev)
        }
    }

    impl std::ops::Deref for Fixture {
        type Target = Index;
        fn deref(&self) -> &Index {
            &self.idx
        }
    }

    fn index(lls: &[LeaderLock], pods: &[Pod]) -> Fixture {
        let (reader, writer) = kube::runtime::reflector::store();
        let mut f = Fixture { idx: Index::new(prefix_of, reader), writer };
        for l in lls {
            f.ll_event(watcher::Event::Apply(l.clone()));
        }
        for p in pods {
            f.idx.on_pod_event(&watcher::Event::Apply(p.clone()));
        }
        f
    }

    #[test]
    fn leaderlocks_are_shared_with_the_store_not_copied() {
        let idx = index(&[ll("a", "web", 0, "web", &[("w", None)])], &[]);
        let stored = idx.stored.state().pop().unwrap();
        assert!(Arc::ptr_eq(&idx.read().lls.by_key[&("a".to_string(), "web".to_string())].ll, &stored));
    }

    fn names(refs: Vec<ObjectRef<LeaderLock>>) -> Vec<String> {
        let mut v: Vec<String> = refs.into_iter().map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_pod_concerns_the_leaderlocks_selecting_it_and_those_whose_keys_it_carries() {
        let idx = index(
            &[ll("a", "web", 0, "web", &[("w", None)]), ll("a", "db", 0, "db", &[("d", None)]), ll("b", "web", 0, "web", &[("w", None)])],
            &[],
        );
        let applied = |p: Pod| names(idx.on_pod_event(&watcher::Event::Apply(p)));
        assert_eq!(applied(pod("a", "p", "web", &[])), ["a/web"]);
        // Relabelled away from db, still carrying db's lock key: db must remove it.
        assert_eq!(applied(pod("a", "p", "web", &["leaderlock.dev/d.token"])), ["a/db", "a/web"]);
        assert_eq!(applied(pod("c", "p", "web", &[])), Vec::<String>::new());
        // A relabelled pod concerns the LeaderLock it leaves too.
        assert_eq!(applied(pod("c", "p", "db", &[])), Vec::<String>::new());
        assert_eq!(applied(pod("a", "p", "db", &[])), ["a/db", "a/web"]);
        assert_eq!(names(idx.on_pod_event(&watcher::Event::Delete(pod("a", "p", "db", &[])))), ["a/db"]);
    }

    #[test]
    fn a_view_holds_the_selected_pods_and_the_leaderlocks_sharing_them() {
        let web = Arc::new(ll("a", "web", 0, "web", &[("w", None)]));
        let mut both = ll("a", "both", 1, "", &[("b", None)]);
        both.spec.selector = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement { key: "app".into(), operator: "Exists".into(), values: None }]),
            ..Default::default()
        };
        let idx = index(
            &[(*web).clone(), both, ll("a", "db", 2, "db", &[("d", None)])],
            &[pod("a", "w1", "web", &[]), pod("a", "d1", "db", &[])],
        );
        let v = idx.view(&web);
        assert_eq!(v.pods.keys().collect::<Vec<_>>(), ["w1"]);
        assert_eq!(v.selecting["w1"], ["both", "web"]);
        assert_eq!(v.candidates("web").len(), 1);
        let holder = |p: &str| {
            (p == "/ll/locks/a/w").then(|| Holder { key: format!("{p}/1"), token: 7, candidate: Some("uid-w1".into()), name: None })
        };
        let roles = v.roles_for(&v.pods["w1"], holder);
        assert_eq!(
            roles.iter().map(|r| (r.lock.as_str(), r.leader.clone())).collect::<Vec<_>>(),
            [("b", None), ("w", Some(("w1".to_string(), 7)))]
        );
        assert!(!v.leaderlocks.contains_key("db"), "db selects none of web's pods");
    }

    #[test]
    fn views_resolve_conflicts_like_the_whole_namespace_would() {
        let older = ll("a", "older", 0, "x", &[("shared", None)]);
        let newer = Arc::new(ll("a", "newer", 5, "y", &[("shared", None), ("own", None)]));
        let mut idx = index(&[older.clone(), (*newer).clone()], &[]);
        let v = idx.view(&newer);
        assert!(matches!(&v.resolved["newer"][0].1, Resolution::Rejected { .. }));
        assert_eq!(v.resolved["newer"][1].1, Resolution::Accepted("/ll/locks/a/own".into()));
        assert_eq!(names(refs(idx.contenders(&idx.read().lls, &newer))), ["a/older"]);
        // Deleted: the name goes to the newer one.
        assert_eq!(names(idx.ll_event(watcher::Event::Delete(older))), ["a/newer"], "its contenders are reconciled");
        assert_eq!(idx.view(&newer).resolved["newer"][0].1, Resolution::Accepted("/ll/locks/a/shared".into()));
    }

    #[test]
    fn etcd_key_overlaps_reach_across_namespaces_and_chains_resolve_in_order() {
        // x (oldest) claims /shared/p/x; y claims /shared/p (overlaps x: rejected); z claims
        // /shared/p/z: overlaps only the rejected y, so it is accepted.
        let x = ll("one", "x", 0, "x", &[("l", Some("/shared/p/x"))]);
        let y = ll("two", "y", 1, "y", &[("l", Some("/shared/p"))]);
        let z = Arc::new(ll("three", "z", 2, "z", &[("l", Some("/shared/p/z"))]));
        let idx = index(&[x, y, (*z).clone()], &[]);
        assert_eq!(idx.view(&z).resolved["z"][0].1, Resolution::Accepted("/shared/p/z".into()));
        let y = Arc::new(ll("two", "y", 1, "y", &[("l", Some("/shared/p"))]));
        assert!(matches!(&idx.view(&y).resolved["y"][0].1, Resolution::Rejected { message, .. } if message.contains("one/x")));
        assert_eq!(names(idx.leaderlocks_with_prefix("/shared/p")), ["two/y"]);
    }

    fn reporting(mut l: LeaderLock, locks: &[&str]) -> LeaderLock {
        let locks = locks.iter().map(|n| crate::resource::LockStatus { name: n.to_string(), ..Default::default() }).collect();
        l.status = Some(crate::resource::LeaderLockStatus { locks, ..Default::default() });
        l.metadata.uid = Some(format!("uid-{}", l.name_any()));
        l
    }

    #[test]
    fn a_lock_no_longer_in_the_spec_is_released_at_the_prefix_it_held_unless_another_lock_covers_it() {
        let before = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None), ("x", Some("/shared/x")), ("y", None)]), &[]));
        let mut idx = index(&[(*before).clone()], &[]);
        let resolved = idx.view(&before).resolved["web"].clone();
        idx.record_claims(&before, &resolved);
        // w stays; x and y are removed, and another LeaderLock now has a lock named y.
        let after = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None)]), &["w", "x", "y"]));
        idx.ll_event(watcher::Event::Apply((*after).clone()));
        idx.ll_event(watcher::Event::Apply(ll("a", "db", 1, "db", &[("y", None)])));
        assert_eq!(idx.view(&after).released, [("x".to_string(), "/shared/x".to_string())]);
        // Claims once the release succeeded: only the status still names x and y; x's prefix
        // is then unknown, its default one holds nothing of ours.
        idx.record_claims(&after, &idx.view(&after).resolved["web"].clone());
        assert_eq!(idx.view(&after).released, [("x".to_string(), "/ll/locks/a/x".to_string())]);
        let settled = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None)]), &["w"]));
        assert!(idx.view(&settled).released.is_empty(), "nothing more once the status no longer names them");
    }

    #[test]
    fn a_lock_whose_etcd_key_moved_releases_the_old_prefix() {
        let before = Arc::new(reporting(ll("a", "web", 0, "web", &[("x", Some("/shared/old"))]), &["x"]));
        let idx = index(&[(*before).clone()], &[]);
        idx.record_claims(&before, &idx.view(&before).resolved["web"].clone());
        let moved = Arc::new(reporting(ll("a", "web", 0, "web", &[("x", Some("/shared/new"))]), &["x"]));
        assert_eq!(idx.view(&moved).released, [("x".to_string(), "/shared/old".to_string())]);
        assert!(idx.view(&before).released.is_empty(), "nothing while the spec still has it there");
    }

    #[test]
    fn a_relist_replaces_everything_at_once() {
        let mut idx = index(&[ll("a", "gone", 0, "web", &[("w", None)])], &[pod("a", "p", "web", &[])]);
        idx.ll_event(watcher::Event::Init);
        idx.ll_event(watcher::Event::InitApply(ll("a", "new", 0, "web", &[("w", None)])));
        assert_eq!(names(idx.all_leaderlocks()), ["a/gone"], "the old table serves until InitDone");
        assert_eq!(names(idx.ll_event(watcher::Event::InitDone)), ["a/new"]);
        assert_eq!(names(idx.all_leaderlocks()), ["a/new"]);
        assert_eq!(names(idx.on_pod_event(&watcher::Event::Apply(pod("a", "p", "web", &[])))), ["a/new"]);
    }

    fn versioned<K: kube::Resource>(mut o: K, rv: &str) -> K {
        o.meta_mut().resource_version = Some(rv.into());
        o
    }

    #[test]
    fn a_pod_relist_concerns_the_leaderlocks_of_the_pods_that_changed_appeared_or_vanished() {
        let lls: Vec<LeaderLock> = ["a", "b", "c", "d"].iter().map(|x| ll("ns", x, 0, x, &[(x, None)])).collect();
        let pods = ["a", "b", "c"].map(|x| versioned(pod("ns", &format!("p{x}"), x, &[]), "1"));
        let idx = index(&lls, &pods);
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(versioned(pod("ns", "pa", "a", &[]), "1")), // unchanged
            watcher::Event::InitApply(versioned(pod("ns", "pb", "b", &[]), "2")), // changed
            watcher::Event::InitApply(versioned(pod("ns", "pd", "d", &[]), "3")), // new; pc vanished
        ] {
            assert!(idx.on_pod_event(&ev).is_empty(), "nothing before the relist is complete");
        }
        let c = Arc::new(lls[2].clone());
        assert_eq!(idx.view(&c).pods.keys().collect::<Vec<_>>(), ["pc"], "the old table serves until InitDone");
        assert_eq!(names(idx.on_pod_event(&watcher::Event::InitDone)), ["ns/b", "ns/c", "ns/d"]);
        assert!(idx.view(&c).pods.is_empty());
    }

    #[test]
    fn a_leaderlock_relist_concerns_those_that_changed_or_appeared_and_the_contenders_of_those_that_vanished() {
        let x = versioned(ll("ns", "x", 0, "x", &[("x", None)]), "1");
        let y = versioned(ll("ns", "y", 0, "y", &[("y", None)]), "1");
        let z = versioned(ll("ns", "z", 0, "z", &[("shared", None)]), "1");
        let w = versioned(ll("ns", "w", 5, "w", &[("shared", None)]), "1");
        let mut idx = index(&[x.clone(), y, z, w.clone()], &[]);
        idx.ll_event(watcher::Event::Init);
        for l in [x, versioned(ll("ns", "y", 0, "y", &[("y", None)]), "2"), w, versioned(ll("ns", "v", 9, "v", &[("v", None)]), "3")] {
            assert!(idx.ll_event(watcher::Event::InitApply(l)).is_empty());
        }
        // y changed, v is new, z vanished: w may now hold "shared". x is as it was.
        assert_eq!(names(idx.ll_event(watcher::Event::InitDone)), ["ns/v", "ns/w", "ns/y"]);
    }

    #[test]
    fn updates_and_deletions_leave_no_stale_entries() {
        let mut idx = index(&[ll("a", "l", 0, "web", &[("w", None)])], &[pod("a", "p", "web", &["leaderlock.dev/w"])]);
        idx.ll_event(watcher::Event::Apply(ll("a", "l", 0, "db", &[("d", None)])));
        assert!(idx.leaderlocks_with_prefix("/ll/locks/a/w").is_empty());
        assert_eq!(names(idx.leaderlocks_with_prefix("/ll/locks/a/d")), ["a/l"]);
        idx.on_pod_event(&watcher::Event::Apply(pod("a", "p", "db", &[])));
        let l = Arc::new(ll("a", "l", 0, "db", &[("d", None)]));
        assert_eq!(idx.view(&l).pods.keys().collect::<Vec<_>>(), ["p"]);
        idx.on_pod_event(&watcher::Event::Delete(pod("a", "p", "db", &[])));
        assert!(idx.view(&l).pods.is_empty());
        let inner = idx.read();
        assert!(inner.pods.by_label.0.is_empty() && inner.pods.by_namespace.0.is_empty() && inner.pods.by_lock.0.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// (namespace, age, locks as (name, etcdKey)) from small alphabets, so that names and
        /// prefixes collide often (including disallowed keys and nested prefixes).
        fn arb_ll() -> impl Strategy<Value = (u8, i64, Vec<(u8, Option<u8>)>)> {
            let key = prop_oneof![Just(None), (0u8..6).prop_map(Some)];
            (0u8..2, 0i64..4, proptest::collection::vec((0u8..4, key), 1..3))
        }

        const KEYS: [&str; 6] = ["/shared/p", "/shared/p/x", "/shared/p/x/y", "/shared/q", "/elsewhere", "/shared/p-x"];

        proptest! {
            #[test]
            fn each_view_resolves_its_leaderlock_as_the_whole_namespace_does(specs in proptest::collection::vec(arb_ll(), 1..12)) {
                let lls: Vec<Arc<LeaderLock>> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, (ns, age, locks))| {
                        let mut locks: Vec<(String, Option<&str>)> = locks.iter().map(|(n, k)| (format!("l{n}"), k.map(|k| KEYS[k as usize]))).collect();
                        locks.sort_by(|a, b| a.0.cmp(&b.0));
                        locks.dedup_by(|a, b| a.0 == b.0);
                        let locks: Vec<(&str, Option<&str>)> = locks.iter().map(|(n, k)| (n.as_str(), *k)).collect();
                        Arc::new(ll(&format!("ns{ns}"), &format!("ll{i}"), *age, "x", &locks))
                    })
                    .collect();
                let idx = index(&lls.iter().map(|l| (**l).clone()).collect::<Vec<_>>(), &[]);
                for l in &lls {
                    let ns = l.namespace().unwrap();
                    let (local, foreign): (Vec<_>, Vec<_>) = lls.iter().cloned().partition(|o| o.namespace().unwrap() == ns);
                    let foreign: Vec<_> = foreign.into_iter().filter(|o| o.spec.locks.iter().any(|k| k.etcd_key.is_some())).collect();
                    let whole = resolve_namespace(&local, &foreign, prefix_of, |_, _| false);
                    let view = idx.view(l);
                    prop_assert_eq!(&view.resolved[&l.name_any()], &whole[&l.name_any()], "LeaderLock {}/{}", ns, l.name_any());
                }
            }
        }
    }
}
