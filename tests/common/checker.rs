//! The one safety checker of the tests: it watches the pods of one namespace through the
//! apiserver — or of one namespace in each of several clusters, through each cluster's
//! apiserver — AND the whole keyspace of the lock etcd through its own etcd client, and checks
//! LeaderLock's promises (docs/contract.md §3, §4) continuously, from outside the controller.
//! Everything is keyed by the etcd lock (its prefix), so clusters sharing a lock through an
//! `etcdKey` (§4.7) are checked as one lock:
//!
//! * at most one pod per lock, in all clusters, carries `leader` (hard violation at the instant
//!   it is seen; across watches, in commit order, see [`order`]);
//! * a pod annotated `leader` with token T holds the lowest create revision under the lock's
//!   prefix, that key's create revision is T and its value names the pod — except during the
//!   window while the two views disagree (observation lag, demote/promote in flight); every
//!   window is measured and the longest is compared with a bound;
//! * fencing tokens strictly increase per lock (a new (pod, token) pair needs a larger token);
//! * every holder change seen in etcd has a cause (the holder pod was deleted, became not
//!   Ready, or an external holder released): causeless ones are counted;
//! * every key written in the lock etcd is under a root or an allowed prefix (isolation).
//!
//! [`converged`] and [`converged_across`] are the end-of-scenario checks, read fresh from the
//! apiservers and etcd.
#![allow(dead_code)]

#[path = "checker/converged.rs"]
mod converged;
#[path = "checker/order.rs"]
mod order;

#[allow(unused_imports)] // each test binary uses some of them
pub use converged::{converged, converged_across, wait_converged, wait_converged_across};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::watcher;

/// One cluster as the checker sees it: the pods of `ns` through `client`, the controller's
/// `--etcd-prefix` root and its `--cluster-id` (None: any writer's keys naming `ns/<pod>`).
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub ns: String,
    pub root: String,
    pub id: Option<String>,
}

impl Cluster {
    /// How messages name it: `<id>/<namespace>`, or the namespace alone.
    pub fn label(&self) -> String {
        self.id.as_ref().map_or_else(|| self.ns.clone(), |id| format!("{id}/{}", self.ns))
    }
}

#[derive(Clone, Debug)]
struct PodView {
    uid: String,
    candidate: bool,
    roles: BTreeMap<String, String>,
    tokens: BTreeMap<String, i64>,
    /// The pod's resourceVersion: its storage etcd's revision when written.
    rv: u64,
}

#[derive(Clone, Debug)]
struct KeyView {
    create_rev: i64,
    value: String,
    seen: Instant,
}

/// A change of the lowest-create-revision key under a lock prefix, seen in etcd.
#[derive(Clone, Debug)]
pub struct HolderChange {
    /// The lock's name (as its first cluster calls it; with its prefix when that is an etcdKey).
    pub lock: String,
    pub from: Option<(String, String, Instant)>, // key, value, when it was created (as seen)
    pub from_deleted: bool,
    pub to: Option<String>,
    pub at: Instant,
    prefix: String,
}

/// One watched cluster: its identity, its pods, and the lock names it maps to etcdKeys.
struct Source {
    cluster: Cluster,
    /// lock name → etcd prefix, for locks with an etcdKey.
    prefixes: HashMap<String, String>,
    pods: HashMap<String, PodView>,
    /// pod name → instants it was seen not a candidate (deleted, not Ready, terminating).
    not_candidate: HashMap<String, Vec<Instant>>,
    synced: bool,
    /// The largest resourceVersion seen: what a pod gone during a re-list is closed at.
    max_rv: u64,
}

impl Source {
    fn prefix_of(&self, lock: &str) -> String {
        self.prefixes.get(lock).cloned().unwrap_or_else(|| format!("{}locks/{}/{lock}", self.cluster.root, self.cluster.ns))
    }

    /// The lock name whose prefix is `prefix` here, if this cluster uses that lock.
    fn lock_at(&self, prefix: &str) -> Option<String> {
        if let Some((lock, _)) = self.prefixes.iter().find(|(_, p)| p.as_str() == prefix) {
            return Some(lock.clone());
        }
        let lock = prefix.strip_prefix(&format!("{}locks/{}/", self.cluster.root, self.cluster.ns))?;
        (!lock.contains('/')).then(|| lock.to_string())
    }

    /// (prefix, token) of every lock `view` leads.
    fn led(&self, view: Option<&PodView>) -> BTreeMap<String, Option<i64>> {
        view.into_iter()
            .flat_map(|v| {
                v.roles.iter().filter(|(_, r)| r.as_str() == "leader").map(|(l, _)| (self.prefix_of(l), v.tokens.get(l).copied()))
            })
            .collect()
    }
}

#[derive(Default)]
struct State {
    sources: Vec<Source>,
    /// Every source's resourceVersions are one order (their apiservers share one storage etcd):
    /// two leaders in different sources are judged in that order, not as observed.
    ordered: bool,
    allowed: Vec<String>,
    /// Prefixes the test itself writes to (fault injection, noise): excluded from isolation.
    test_prefixes: Vec<String>,
    keys: BTreeMap<String, KeyView>,
    violations: Vec<String>,
    outside_keys: Vec<String>,
    /// lock prefix → when the test removed it (LeaderLock deleted): its keys go without a pod cause.
    retired: HashMap<String, Instant>,
    /// lock prefix → last (source, pod, token) seen as leader, and the largest token seen.
    last_leader: HashMap<String, (usize, String, i64)>,
    max_token: HashMap<String, i64>,
    transitions: u64,
    /// Transitions whose new leader is in another cluster than the one before.
    cross_transitions: u64,
    /// Moments the watches showed leaders of one lock in two clusters, judged in commit order.
    seen_overlaps: u64,
    /// Lock prefixes the watches show led in two clusters right now.
    overlapping: std::collections::HashSet<String>,
    /// Changes of a `leaderlock.dev/<lock>` role or token annotation after the first lists.
    role_changes: u64,
    intervals: order::Intervals,
    mismatch_since: HashMap<String, Instant>,
    windows: Vec<Duration>,
    /// lock prefix → since when no pod leads it (after one did), and the gaps measured.
    leaderless_since: HashMap<String, Instant>,
    gaps: Vec<Duration>,
    holder_changes: Vec<HolderChange>,
    pod_events: u64,
    etcd_events: u64,
    etcd_relists: u64,
    etcd_synced: bool,
    /// How far back before a key's creation a not-candidate observation still explains its
    /// deletion: the controller's view of pods may lag the checker's (after an apiserver
    /// partition it replays the pod history it missed).
    lag_allowance: Duration,
}

/// What one scenario's checker saw.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub violations: Vec<String>,
    pub outside_keys: Vec<String>,
    pub transitions: u64,
    /// Transitions whose new leader is in another cluster than the one before.
    pub cross_transitions: u64,
    /// Moments the watches showed leaders of one lock in two clusters at once; each was judged
    /// in commit order (a violation only if their resourceVersion intervals overlap).
    pub seen_overlaps: u64,
    /// Changes of a pod's role or token annotation after the checker's first lists.
    pub role_changes: u64,
    pub holder_changes: usize,
    /// Holder changes in etcd with no cause on the apiserver side: caused by the fault itself.
    pub causeless: Vec<String>,
    pub max_window: Duration,
    pub windows: usize,
    pub open_window: Option<Duration>,
    /// Leaderless gaps (a lock led, then no pod annotated leader, then one again): max, median.
    pub max_gap: Duration,
    pub median_gap: Duration,
    pub gaps: usize,
    pub pod_events: u64,
    pub etcd_events: u64,
    pub etcd_relists: u64,
}

#[derive(Clone)]
pub struct Checker {
    state: Arc<Mutex<State>>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            self.tasks.iter().for_each(|t| t.abort());
        }
    }
}

impl Checker {
    /// Starts watching `ns` through `client` and the lock etcd at `endpoint`; returns once both
    /// initial lists are in.
    pub async fn start(client: kube::Client, ns: &str, endpoint: &str, root: &str, allowed: &[&str]) -> Checker {
        let cluster = Cluster { client, ns: ns.to_string(), root: root.to_string(), id: None };
        Checker::spawn(vec![cluster], false, endpoint, allowed).await
    }

    /// Watches several clusters sharing the lock etcd at `endpoint`, as one: a lock is its etcd
    /// prefix, whichever clusters use it. The clusters' apiservers must share one storage etcd
    /// (hack/cluster.sh's second apiserver does), whose revisions order their pod writes.
    pub async fn across(clusters: Vec<Cluster>, endpoint: &str, allowed: &[&str]) -> Checker {
        Checker::spawn(clusters, true, endpoint, allowed).await
    }

    async fn spawn(clusters: Vec<Cluster>, ordered: bool, endpoint: &str, allowed: &[&str]) -> Checker {
        let sources = clusters
            .iter()
            .map(|c| Source {
                cluster: c.clone(),
                prefixes: HashMap::new(),
                pods: HashMap::new(),
                not_candidate: HashMap::new(),
                synced: false,
                max_rv: 0,
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            sources,
            ordered,
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }));
        let mut tasks: Vec<_> =
            clusters.into_iter().enumerate().map(|(i, c)| tokio::spawn(watch_pods(c.client, c.ns, i, state.clone()))).collect();
        tasks.push(tokio::spawn(watch_etcd(endpoint.to_string(), state.clone())));
        let checker = Checker { state, tasks: Arc::new(tasks) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !{
            let s = checker.state.lock().unwrap();
            s.sources.iter().all(|x| x.synced) && s.etcd_synced
        } {
            assert!(Instant::now() < deadline, "the checker could not list pods and etcd keys");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        checker
    }

    /// A lock using `spec.locks[].etcdKey` (in every watched cluster).
    pub fn map_lock(&self, lock: &str, prefix: &str) {
        let mut s = self.state.lock().unwrap();
        s.sources.iter_mut().for_each(|x| {
            x.prefixes.insert(lock.to_string(), prefix.to_string());
        });
    }

    /// See [`State::lag_allowance`].
    pub fn allow_controller_lag(&self, d: Duration) {
        self.state.lock().unwrap().lag_allowance = d;
    }

    /// The test is about to delete the LeaderLock of `lock`: the deletion of its keys that
    /// follows has a cause.
    pub fn retire_lock(&self, lock: &str) {
        let mut s = self.state.lock().unwrap();
        let prefix = s.sources[0].prefix_of(lock);
        s.retired.insert(prefix, Instant::now());
    }

    /// The pod last seen leading `lock`.
    pub fn leader_of(&self, lock: &str) -> Option<String> {
        self.leader_in(lock).map(|(_, pod)| pod)
    }

    /// The cluster (its index in [`Checker::across`]'s list) and pod last seen leading `lock`.
    pub fn leader_in(&self, lock: &str) -> Option<(usize, String)> {
        let s = self.state.lock().unwrap();
        s.last_leader.get(&s.sources[0].prefix_of(lock)).map(|(src, pod, _)| (*src, pod.clone()))
    }

    /// Fails the test if the checker saw two leaders of a lock, a token that did not grow, a
    /// holder displaced while its key remained, or a key written outside the root and allowed
    /// prefixes.
    pub fn assert_clean(&self) {
        let s = self.summary();
        assert!(s.violations.is_empty(), "safety violations in {}: {:#?}", self.namespace(), s.violations);
        assert!(s.outside_keys.is_empty(), "keys written outside the root and allowed prefixes: {:?}", s.outside_keys);
    }

    pub fn namespace(&self) -> String {
        self.state.lock().unwrap().sources.iter().map(|x| x.cluster.label()).collect::<Vec<_>>().join(", ")
    }

    /// Keys the test itself writes (not the controller): left out of the isolation check.
    pub fn test_writes_under(&self, prefix: &str) {
        self.state.lock().unwrap().test_prefixes.push(prefix.to_string());
    }

    /// Everything seen so far. `window_bound`: longest tolerated leader/etcd disagreement.
    pub fn summary(&self) -> Summary {
        let s = self.state.lock().unwrap();
        let now = Instant::now();
        let causeless = s
            .holder_changes
            .iter()
            .filter(|h| h.from_deleted)
            .filter(|h| s.retired.get(&h.prefix).is_none_or(|t| *t > h.at))
            .filter_map(|h| {
                let (key, value, created) = h.from.as_ref()?;
                // External holders release by themselves; so do other clusters' unwatched pods.
                let (src, pod) = s.sources.iter().find_map(|x| Some((x, pod_in(value, &x.cluster)?)))?;
                let explained = src.not_candidate.get(pod).is_some_and(|ts| {
                    ts.iter()
                        .any(|t| *t + s.lag_allowance.max(Duration::from_millis(500)) >= *created && *t <= h.at + Duration::from_secs(5))
                });
                (!explained).then(|| {
                    format!(
                        "lock {}: holder {}/{pod} ({key}) lost its key at +{:?} while still a candidate",
                        h.lock,
                        src.cluster.label(),
                        now - h.at
                    )
                })
            })
            .collect();
        let mut violations = s.violations.clone();
        if s.ordered {
            violations.extend(s.intervals.violations(|i| s.sources[i].cluster.label(), |p| s.lock_name(p)));
        }
        Summary {
            violations,
            outside_keys: s.outside_keys.clone(),
            transitions: s.transitions,
            cross_transitions: s.cross_transitions,
            seen_overlaps: s.seen_overlaps,
            role_changes: s.role_changes,
            holder_changes: s.holder_changes.len(),
            causeless,
            max_window: s.windows.iter().copied().max().unwrap_or_default(),
            windows: s.windows.len(),
            open_window: s.mismatch_since.values().map(|t| now - *t).max(),
            max_gap: s.gaps.iter().copied().max().unwrap_or_default(),
            median_gap: {
                let mut g = s.gaps.clone();
                g.sort();
                g.get(g.len() / 2).copied().unwrap_or_default()
            },
            gaps: s.gaps.len(),
            pod_events: s.pod_events,
            etcd_events: s.etcd_events,
            etcd_relists: s.etcd_relists,
        }
    }

    /// Waits (bounded) until the checker has seen etcd reach `revision`-ish quiet and pods quiet:
    /// used before reading a summary so in-flight events are counted.
    pub async fn settle(&self) {
        let mut last = (u64::MAX, u64::MAX);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = {
                let s = self.state.lock().unwrap();
                (s.pod_events, s.etcd_events)
            };
            if now == last || Instant::now() > deadline {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl State {
    /// How messages name a lock prefix: the first cluster's lock name, with the prefix when it
    /// is an etcdKey.
    fn lock_name(&self, prefix: &str) -> String {
        let default = self.sources.iter().find_map(|x| {
            let name = x.lock_at(prefix)?;
            Some(if x.prefixes.contains_key(&name) { format!("{name} ({prefix})") } else { name })
        });
        default.unwrap_or_else(|| prefix.to_string())
    }

    fn lock_of_key(&self, key: &str) -> Option<String> {
        let (prefix, id) = key.rsplit_once('/')?;
        if id.is_empty() {
            return None;
        }
        self.sources.iter().any(|x| x.lock_at(prefix).is_some()).then(|| prefix.to_string())
    }

    fn holder(&self, prefix: &str) -> Option<(String, KeyView)> {
        let p = format!("{prefix}/");
        self.keys
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .filter(|(k, _)| !k[p.len()..].contains('/'))
            .min_by_key(|(_, v)| v.create_rev)
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    fn locks(&self) -> Vec<String> {
        let mut locks: Vec<String> =
            self.sources.iter().flat_map(|x| x.pods.values().flat_map(|p| p.roles.keys().map(|l| x.prefix_of(l)))).collect();
        locks.extend(self.mismatch_since.keys().cloned());
        locks.sort();
        locks.dedup();
        locks
    }

    fn check_all(&mut self) {
        for lock in self.locks() {
            self.check_lock(&lock);
        }
    }

    /// (source, pod, token) of every pod annotated `leader` of the lock at `prefix`.
    fn leaders(&self, prefix: &str) -> Vec<(usize, String, Option<i64>)> {
        let mut leaders: Vec<_> = self
            .sources
            .iter()
            .enumerate()
            .flat_map(|(i, x)| {
                let lock = x.lock_at(prefix);
                x.pods
                    .iter()
                    .filter(move |(_, p)| lock.as_ref().is_some_and(|l| p.roles.get(l).map(String::as_str) == Some("leader")))
                    .map(move |(n, p)| (i, n.clone(), x.lock_at(prefix).and_then(|l| p.tokens.get(&l).copied())))
            })
            .collect();
        leaders.sort();
        leaders
    }

    fn check_lock(&mut self, prefix: &str) {
        let name = self.lock_name(prefix);
        let leaders = self.leaders(prefix);
        // Across sources in commit order (see `order`), when they have one; else as observed.
        let at_once = |a: &(usize, String, Option<i64>), b: &(usize, String, Option<i64>)| !self.ordered || a.0 == b.0;
        if leaders.iter().enumerate().any(|(i, a)| leaders[i + 1..].iter().any(|b| at_once(a, b))) {
            let shown: Vec<String> =
                leaders.iter().map(|(i, p, t)| format!("{}/{p} token {t:?}", self.sources[*i].cluster.label())).collect();
            let shown = if self.sources.len() == 1 {
                format!("{:?}", leaders.iter().map(|(_, p, t)| (p, t)).collect::<Vec<_>>())
            } else {
                format!("{shown:?}")
            };
            self.violations.push(format!("{} pods lead {name} at once: {shown}", leaders.len()));
        }
        let clusters = leaders.iter().map(|l| l.0).collect::<std::collections::BTreeSet<_>>().len();
        if clusters < 2 {
            self.overlapping.remove(prefix);
        } else if self.overlapping.insert(prefix.to_string()) {
            self.seen_overlaps += 1;
        }
        // Fencing tokens: every new (pod, token) pair carries a token larger than any before.
        if let [(src, pod, Some(token))] = leaders.as_slice() {
            let pair = (*src, pod.clone(), *token);
            if self.last_leader.get(prefix) != Some(&pair) {
                let max = self.max_token.get(prefix).copied().unwrap_or(i64::MIN);
                // Across sources the order of observation is not the order of commit: see `order`.
                if *token <= max && !self.ordered {
                    self.violations.push(format!("lock {name}: {pod} leads with token {token}, not above the largest seen {max}"));
                }
                self.transitions += 1;
                self.cross_transitions += u64::from(self.last_leader.get(prefix).is_some_and(|(was, _, _)| was != src));
                self.last_leader.insert(prefix.to_string(), pair);
                self.max_token.insert(prefix.to_string(), max.max(*token));
            }
        }
        match (leaders.is_empty(), self.leaderless_since.get(prefix).copied()) {
            (true, None) if self.last_leader.contains_key(prefix) => {
                self.leaderless_since.insert(prefix.to_string(), Instant::now());
            }
            (false, Some(since)) => {
                self.gaps.push(since.elapsed());
                self.leaderless_since.remove(prefix);
            }
            _ => {}
        }
        // The leader must hold the lowest create revision in etcd, with its token.
        let consistent = match leaders.first() {
            None => true,
            Some((src, pod, token)) => {
                let x = &self.sources[*src];
                let uid = x.pods.get(pod).map(|p| p.uid.clone()).unwrap_or_default();
                self.holder(prefix).is_some_and(|(key, kv)| {
                    Some(kv.create_rev) == *token && pod_in(&kv.value, &x.cluster) == Some(pod.as_str()) && key_candidate(&key) == uid
                })
            }
        };
        match (consistent, self.mismatch_since.get(prefix).copied()) {
            (false, None) => {
                self.mismatch_since.insert(prefix.to_string(), Instant::now());
            }
            (true, Some(since)) => {
                self.windows.push(since.elapsed());
                self.mismatch_since.remove(prefix);
            }
            _ => {}
        }
    }

    /// Records what a pod's new state (None: gone) means: its leader intervals and role changes.
    fn pod_changed(&mut self, src: usize, name: &str, new: Option<PodView>, rv: u64) {
        let x = &mut self.sources[src];
        x.max_rv = x.max_rv.max(rv);
        let old = match &new {
            Some(v) => x.pods.insert(name.to_string(), v.clone()),
            None => x.pods.remove(name),
        };
        let (before, after) = (x.led(old.as_ref()), x.led(new.as_ref()));
        let annotations = |v: &Option<PodView>| v.as_ref().map(|v| (v.roles.clone(), v.tokens.clone())).unwrap_or_default();
        if x.synced && annotations(&old) != annotations(&new) {
            self.role_changes += 1;
        }
        for (prefix, token) in &before {
            if after.get(prefix) != Some(token) {
                self.intervals.close(prefix, src, name, rv);
            }
        }
        for (prefix, token) in &after {
            if before.get(prefix) != Some(token) {
                self.intervals.open(prefix, src, name, *token, rv);
            }
        }
    }

    fn saw_key(&mut self, key: String, kv: Option<KeyView>) {
        self.etcd_events += 1;
        let roots = self.sources.iter().map(|x| &x.cluster.root);
        let allowed = roots.chain(&self.allowed).chain(&self.test_prefixes).any(|p| key.starts_with(p.as_str()));
        // Only writes seen while watching count: keys listed at the start were there before
        // (another test's under another root), and deletions are not the controller's writes
        // (another test's lease expiring removes its keys).
        if !allowed && kv.is_some() && self.etcd_synced && !self.outside_keys.contains(&key) {
            self.outside_keys.push(key.clone());
        }
        let lock = self.lock_of_key(&key);
        let before = lock.as_ref().and_then(|l| self.holder(l));
        match kv {
            Some(kv) => {
                let keep_seen = self.keys.get(&key).filter(|old| old.create_rev == kv.create_rev).map(|old| old.seen);
                self.keys.insert(key.clone(), KeyView { seen: keep_seen.unwrap_or(kv.seen), ..kv });
            }
            None => {
                self.keys.remove(&key);
            }
        }
        if let Some(lock) = lock {
            let after = self.holder(&lock);
            let name = self.lock_name(&lock);
            if before.as_ref().map(|(k, v)| (k, v.create_rev)) != after.as_ref().map(|(k, v)| (k, v.create_rev)) {
                let from_deleted = before.as_ref().is_some_and(|(k, v)| self.keys.get(k).is_none_or(|now| now.create_rev != v.create_rev));
                if before.is_some() && !from_deleted {
                    self.violations.push(format!(
                        "lock {name}: holder {:?} displaced by {:?} although its key remains",
                        before.as_ref().map(|b| &b.0),
                        after.as_ref().map(|a| &a.0)
                    ));
                }
                self.holder_changes.push(HolderChange {
                    lock: name,
                    from: before.map(|(k, v)| (k, v.value, v.seen)),
                    from_deleted,
                    to: after.map(|(k, _)| k),
                    at: Instant::now(),
                    prefix: lock.clone(),
                });
            }
            self.check_lock(&lock);
        }
    }
}

/// The pod of namespace `ns` a LeaderLock key's value names, whichever cluster wrote it.
fn pod_of<'a>(value: &'a str, ns: &str) -> Option<&'a str> {
    use leaderlock::etcd::ownership::{Writer, writer};
    match writer(value.as_bytes()) {
        Writer::Cluster { name, .. } | Writer::Unnamed { name } => name.strip_prefix(ns)?.strip_prefix('/'),
        Writer::Outside => None,
    }
}

/// The pod of `cluster` a key's value names, if that cluster wrote it (any writer naming its
/// namespace when the cluster has no id).
fn pod_in<'a>(value: &'a str, cluster: &Cluster) -> Option<&'a str> {
    use leaderlock::etcd::ownership::{Writer, writer};
    match (writer(value.as_bytes()), cluster.id.as_deref()) {
        (Writer::Cluster { cluster: id, name }, want) if want.is_none_or(|w| w == id) => {
            name.strip_prefix(cluster.ns.as_str())?.strip_prefix('/')
        }
        (Writer::Unnamed { name }, None) => name.strip_prefix(cluster.ns.as_str())?.strip_prefix('/'),
        _ => None,
    }
}

fn pod_view(p: &Pod) -> PodView {
    let mut roles = BTreeMap::new();
    let mut tokens = BTreeMap::new();
    for (k, v) in p.annotations() {
        let Some(rest) = k.strip_prefix("leaderlock.dev/") else { continue };
        if let Some(lock) = rest.strip_suffix(".token") {
            tokens.insert(lock.to_string(), v.parse().unwrap_or(-1));
        } else {
            roles.insert(rest.to_string(), v.clone());
        }
    }
    let rv = p.resource_version().and_then(|v| v.parse().ok()).unwrap_or_default();
    PodView { uid: p.uid().unwrap_or_default(), candidate: is_candidate(p), roles, tokens, rv }
}

/// The candidate (pod UID) a key of ours belongs to: `<prefix>/<uid>`, or `<prefix>/<uid>.<n>`
/// once a handover sent it to the back of the line.
pub fn key_candidate(key: &str) -> &str {
    let id = key.rsplit_once('/').map_or(key, |(_, id)| id);
    id.split_once('.').map_or(id, |(uid, _)| uid)
}

pub fn is_candidate(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running") && s.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

async fn watch_pods(client: kube::Client, ns: String, src: usize, state: Arc<Mutex<State>>) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut init: Option<HashMap<String, PodView>> = None;
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut s = state.lock().unwrap();
        s.pod_events += 1;
        let now = Instant::now();
        match ev {
            watcher::Event::Init => init = Some(HashMap::new()),
            watcher::Event::InitApply(p) => {
                if let Some(i) = init.as_mut() {
                    i.insert(p.name_any(), pod_view(&p));
                }
            }
            watcher::Event::InitDone => {
                let fresh = init.take().unwrap_or_default();
                let listed_at = fresh.values().map(|v| v.rv).max().unwrap_or_default().max(s.sources[src].max_rv);
                let gone: Vec<String> = s.sources[src].pods.keys().filter(|n| !fresh.contains_key(*n)).cloned().collect();
                for n in gone {
                    s.sources[src].not_candidate.entry(n.clone()).or_default().push(now);
                    s.pod_changed(src, &n, None, listed_at);
                }
                for (n, v) in fresh {
                    if !v.candidate {
                        s.sources[src].not_candidate.entry(n.clone()).or_default().push(now);
                    }
                    let rv = v.rv;
                    s.pod_changed(src, &n, Some(v), rv);
                }
                s.sources[src].synced = true;
                s.check_all();
            }
            watcher::Event::Apply(p) => {
                let v = pod_view(&p);
                if !v.candidate {
                    s.sources[src].not_candidate.entry(p.name_any()).or_default().push(now);
                }
                let rv = v.rv;
                s.pod_changed(src, &p.name_any(), Some(v), rv);
                s.check_all();
            }
            watcher::Event::Delete(p) => {
                s.sources[src].not_candidate.entry(p.name_any()).or_default().push(now);
                let rv = pod_view(&p).rv;
                s.pod_changed(src, &p.name_any(), None, rv);
                s.check_all();
            }
        }
    }
}

/// Lists the whole keyspace and watches it from there; after a disconnect or a compaction,
/// lists again and applies the difference.
async fn watch_etcd(endpoint: String, state: Arc<Mutex<State>>) {
    loop {
        let _ = watch_etcd_once(&endpoint, &state).await;
        state.lock().unwrap().etcd_relists += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn watch_etcd_once(endpoint: &str, state: &Arc<Mutex<State>>) -> Result<(), etcd_client::Error> {
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
    let mut c = etcd_client::Client::connect([endpoint], Some(opts)).await?;
    let resp = c.get("", Some(GetOptions::new().with_all_keys())).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    {
        let mut s = state.lock().unwrap();
        let now = Instant::now();
        let listed: BTreeMap<String, KeyView> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    KeyView { create_rev: kv.create_revision(), value: String::from_utf8_lossy(kv.value()).into_owned(), seen: now },
                )
            })
            .collect();
        let gone: Vec<String> = s.keys.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
        for k in gone {
            s.saw_key(k, None);
        }
        for (k, v) in listed {
            if s.keys.get(&k).map(|o| (o.create_rev, &o.value)) != Some((v.create_rev, &v.value)) {
                s.saw_key(k, Some(v));
            }
        }
        s.etcd_synced = true;
    }
    let mut stream = c.watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(rev + 1))).await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() || resp.compact_revision() > 0 {
            return Ok(());
        }
        let mut s = state.lock().unwrap();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    let v = KeyView {
                        create_rev: kv.create_revision(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        seen: Instant::now(),
                    };
                    s.saw_key(key, Some(v));
                }
                EventType::Delete => s.saw_key(key, None),
            }
        }
    }
    Ok(())
}
