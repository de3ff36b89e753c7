//! The one safety checker of the tests: it watches the pods of one namespace through the
//! apiserver AND the whole keyspace of the lock etcd through its own etcd client, and checks
//! LeaderLock's promises (docs/contract.md §3, §4) continuously, from outside the controller:
//!
//! * at most one pod per lock carries `leader` (hard violation at the instant it is seen);
//! * a pod annotated `leader` with token T holds the lowest create revision under the lock's
//!   prefix, that key's create revision is T and its value names the pod — except during the
//!   window while the two views disagree (observation lag, demote/promote in flight); every
//!   window is measured and the longest is compared with a bound;
//! * fencing tokens strictly increase per lock (a new (pod, token) pair needs a larger token);
//! * every holder change seen in etcd has a cause (the holder pod was deleted, became not
//!   Ready, or an external holder released): causeless ones are counted;
//! * every key written in the lock etcd is under the root or an allowed prefix (isolation).
//!
//! [`converged`] is the end-of-scenario check, read fresh from both the apiserver and etcd.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher;
use leaderlock::resource::LeaderLock;

#[derive(Clone, Debug)]
struct PodView {
    uid: String,
    candidate: bool,
    roles: BTreeMap<String, String>,
    tokens: BTreeMap<String, i64>,
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
    pub lock: String,
    pub from: Option<(String, String, Instant)>, // key, value, when it was created (as seen)
    pub from_deleted: bool,
    pub to: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    ns: String,
    root: String,
    allowed: Vec<String>,
    /// Prefixes the test itself writes to (fault injection, noise): excluded from isolation.
    test_prefixes: Vec<String>,
    /// lock name → etcd prefix, for locks with an etcdKey.
    prefixes: HashMap<String, String>,
    pods: HashMap<String, PodView>,
    keys: BTreeMap<String, KeyView>,
    /// pod name → instants it was seen not a candidate (deleted, not Ready, terminating).
    not_candidate: HashMap<String, Vec<Instant>>,
    violations: Vec<String>,
    outside_keys: Vec<String>,
    /// lock → when the test removed it (LeaderLock deleted): its keys go without a pod cause.
    retired: HashMap<String, Instant>,
    /// lock → last (pod, token) seen as leader, and the largest token seen.
    last_leader: HashMap<String, (String, i64)>,
    max_token: HashMap<String, i64>,
    transitions: u64,
    mismatch_since: HashMap<String, Instant>,
    windows: Vec<Duration>,
    /// lock → since when no pod leads it (after one did), and the gaps measured.
    leaderless_since: HashMap<String, Instant>,
    gaps: Vec<Duration>,
    holder_changes: Vec<HolderChange>,
    pod_events: u64,
    etcd_events: u64,
    etcd_relists: u64,
    pods_synced: bool,
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
        let state = Arc::new(Mutex::new(State {
            ns: ns.to_string(),
            root: root.to_string(),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }));
        let pods = tokio::spawn(watch_pods(client, ns.to_string(), state.clone()));
        let etcd = tokio::spawn(watch_etcd(endpoint.to_string(), state.clone()));
        let checker = Checker { state, tasks: Arc::new(vec![pods, etcd]) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !{
            let s = checker.state.lock().unwrap();
            s.pods_synced && s.etcd_synced
        } {
            assert!(Instant::now() < deadline, "the checker could not list pods and etcd keys");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        checker
    }

    /// A lock using `spec.locks[].etcdKey`.
    pub fn map_lock(&self, lock: &str, prefix: &str) {
        self.state.lock().unwrap().prefixes.insert(lock.to_string(), prefix.to_string());
    }

    /// See [`State::lag_allowance`].
    pub fn allow_controller_lag(&self, d: Duration) {
        self.state.lock().unwrap().lag_allowance = d;
    }

    /// The test is about to delete the LeaderLock of `lock`: the deletion of its keys that
    /// follows has a cause.
    pub fn retire_lock(&self, lock: &str) {
        self.state.lock().unwrap().retired.insert(lock.to_string(), Instant::now());
    }

    /// The pod last seen leading `lock`.
    pub fn leader_of(&self, lock: &str) -> Option<String> {
        self.state.lock().unwrap().last_leader.get(lock).map(|(pod, _)| pod.clone())
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
        self.state.lock().unwrap().ns.clone()
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
            .filter(|h| s.retired.get(&h.lock).is_none_or(|t| *t > h.at))
            .filter_map(|h| {
                let (key, value, created) = h.from.as_ref()?;
                let pod = pod_of(value, &s.ns)?; // external holders release by themselves
                let explained = s.not_candidate.get(pod).is_some_and(|ts| {
                    ts.iter()
                        .any(|t| *t + s.lag_allowance.max(Duration::from_millis(500)) >= *created && *t <= h.at + Duration::from_secs(5))
                });
                (!explained)
                    .then(|| format!("lock {}: holder {pod} ({key}) lost its key at +{:?} while still a candidate", h.lock, now - h.at))
            })
            .collect();
        Summary {
            violations: s.violations.clone(),
            outside_keys: s.outside_keys.clone(),
            transitions: s.transitions,
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
    fn prefix_of(&self, lock: &str) -> String {
        self.prefixes.get(lock).cloned().unwrap_or_else(|| format!("{}locks/{}/{lock}", self.root, self.ns))
    }

    fn lock_of_key(&self, key: &str) -> Option<String> {
        let (prefix, id) = key.rsplit_once('/')?;
        if id.is_empty() {
            return None;
        }
        if let Some((lock, _)) = self.prefixes.iter().find(|(_, p)| p.as_str() == prefix) {
            return Some(lock.clone());
        }
        let lock = prefix.strip_prefix(&format!("{}locks/{}/", self.root, self.ns))?;
        (!lock.contains('/')).then(|| lock.to_string())
    }

    fn holder(&self, lock: &str) -> Option<(String, KeyView)> {
        let p = format!("{}/", self.prefix_of(lock));
        self.keys
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .filter(|(k, _)| !k[p.len()..].contains('/'))
            .min_by_key(|(_, v)| v.create_rev)
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    fn locks(&self) -> Vec<String> {
        let mut locks: Vec<String> = self.pods.values().flat_map(|p| p.roles.keys().cloned()).collect();
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

    fn check_lock(&mut self, lock: &str) {
        let mut leaders: Vec<(String, Option<i64>)> = self
            .pods
            .iter()
            .filter(|(_, p)| p.roles.get(lock).map(String::as_str) == Some("leader"))
            .map(|(n, p)| (n.clone(), p.tokens.get(lock).copied()))
            .collect();
        leaders.sort();
        if leaders.len() > 1 {
            self.violations.push(format!("{} pods lead {lock} at once: {leaders:?}", leaders.len()));
        }
        // Fencing tokens: every new (pod, token) pair carries a token larger than any before.
        if let [(pod, Some(token))] = leaders.as_slice() {
            let pair = (pod.clone(), *token);
            if self.last_leader.get(lock) != Some(&pair) {
                let max = self.max_token.get(lock).copied().unwrap_or(i64::MIN);
                if *token <= max && !(self.last_leader.get(lock).is_some_and(|(p, t)| p == pod && t == token)) {
                    self.violations.push(format!("lock {lock}: {pod} leads with token {token}, not above the largest seen {max}"));
                }
                self.transitions += 1;
                self.last_leader.insert(lock.to_string(), pair);
                self.max_token.insert(lock.to_string(), max.max(*token));
            }
        }
        match (leaders.is_empty(), self.leaderless_since.get(lock).copied()) {
            (true, None) if self.last_leader.contains_key(lock) => {
                self.leaderless_since.insert(lock.to_string(), Instant::now());
            }
            (false, Some(since)) => {
                self.gaps.push(since.elapsed());
                self.leaderless_since.remove(lock);
            }
            _ => {}
        }
        // The leader must hold the lowest create revision in etcd, with its token.
        let consistent = match leaders.first() {
            None => true,
            Some((pod, token)) => {
                let uid = self.pods.get(pod).map(|p| p.uid.clone()).unwrap_or_default();
                self.holder(lock).is_some_and(|(key, kv)| {
                    Some(kv.create_rev) == *token && pod_of(&kv.value, &self.ns) == Some(pod.as_str()) && key_candidate(&key) == uid
                })
            }
        };
        match (consistent, self.mismatch_since.get(lock).copied()) {
            (false, None) => {
                self.mismatch_since.insert(lock.to_string(), Instant::now());
            }
            (true, Some(since)) => {
                self.windows.push(since.elapsed());
                self.mismatch_since.remove(lock);
            }
            _ => {}
        }
    }

    fn saw_key(&mut self, key: String, kv: Option<KeyView>) {
        self.etcd_events += 1;
        let allowed = std::iter::once(&self.root).chain(&self.allowed).chain(&self.test_prefixes).any(|p| key.starts_with(p.as_str()));
        if !allowed && !self.outside_keys.contains(&key) {
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
            if before.as_ref().map(|(k, v)| (k, v.create_rev)) != after.as_ref().map(|(k, v)| (k, v.create_rev)) {
                let from_deleted = before.as_ref().is_some_and(|(k, v)| self.keys.get(k).is_none_or(|now| now.create_rev != v.create_rev));
                if before.is_some() && !from_deleted {
                    self.violations.push(format!(
                        "lock {lock}: holder {:?} displaced by {:?} although its key remains",
                        before.as_ref().map(|b| &b.0),
                        after.as_ref().map(|a| &a.0)
                    ));
                }
                self.holder_changes.push(HolderChange {
                    lock: lock.clone(),
                    from: before.map(|(k, v)| (k, v.value, v.seen)),
                    from_deleted,
                    to: after.map(|(k, _)| k),
                    at: Instant::now(),
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
    PodView { uid: p.uid().unwrap_or_default(), candidate: is_candidate(p), roles, tokens }
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

async fn watch_pods(client: kube::Client, ns: String, state: Arc<Mutex<State>>) {
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
                let gone: Vec<String> = s.pods.keys().filter(|n| !fresh.contains_key(*n)).cloned().collect();
                for n in gone {
                    s.not_candidate.entry(n).or_default().push(now);
                }
                for (n, v) in &fresh {
                    if !v.candidate {
                        s.not_candidate.entry(n.clone()).or_default().push(now);
                    }
                }
                s.pods = fresh;
                s.pods_synced = true;
                s.check_all();
            }
            watcher::Event::Apply(p) => {
                let v = pod_view(&p);
                if !v.candidate {
                    s.not_candidate.entry(p.name_any()).or_default().push(now);
                }
                s.pods.insert(p.name_any(), v);
                s.check_all();
            }
            watcher::Event::Delete(p) => {
                s.not_candidate.entry(p.name_any()).or_default().push(now);
                s.pods.remove(&p.name_any());
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

/// The end-of-scenario check, read fresh from the apiserver and etcd: every LeaderLock that is
/// not being deleted and not rejected has, per lock, exactly one key per candidate pod (and none
/// for other pods), the holder in status is the lowest-create-revision key's pod with its create
/// revision as token, that pod is annotated `leader` with the token, every other candidate
/// `standby`, and non-candidates carry no key of the lock. Returns what is still wrong.
pub async fn converged(client: &kube::Client, ns: &str, endpoint: &str, root: &str, only: Option<&[String]>) -> Result<(), String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&Default::default()).await.map_err(|e| e.to_string())?;
    let lls = Api::<LeaderLock>::namespaced(client.clone(), ns).list(&Default::default()).await.map_err(|e| e.to_string())?;
    let mut etcd = etcd_client::Client::connect([endpoint], None).await.map_err(|e| e.to_string())?;
    let kvs = etcd.get(format!("{root}locks/{ns}/"), Some(GetOptions::new().with_prefix())).await.map_err(|e| e.to_string())?;
    let keys: Vec<(String, i64, String)> = kvs
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()))
        .collect();
    for ll in &lls.items {
        if ll.metadata.deletion_timestamp.is_some() || only.is_some_and(|o| !o.contains(&ll.name_any())) {
            continue;
        }
        let sel = Selector::try_from(ll.spec.selector.clone()).map_err(|e| e.to_string())?;
        let cands: Vec<&Pod> =
            pods.items.iter().filter(|p| is_candidate(p) && sel.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))).collect();
        let st = ll.status.clone().unwrap_or_default();
        if st.observed_generation != ll.metadata.generation {
            return Err(format!("{}: status not observed yet", ll.name_any()));
        }
        // Candidates marked never to lead own no etcd key (docs/contract.md §8).
        let never = match ll.spec.placement.as_ref().and_then(|p| p.never_lead.clone()) {
            Some(s) => Some(Selector::try_from(s).map_err(|e| e.to_string())?),
            None => None,
        };
        let queued: Vec<&&Pod> = cands
            .iter()
            .filter(|p| !never.as_ref().is_some_and(|s| s.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))))
            .collect();
        for lock in ll.spec.lock_specs().iter() {
            let prefix = lock.etcd_key.clone().unwrap_or_else(|| format!("{root}locks/{ns}/{}", lock.name));
            let mine: Vec<&(String, i64, String)> =
                keys.iter().filter(|(k, _, _)| k.rsplit_once('/').is_some_and(|(p, _)| p == prefix)).collect();
            let mut want: Vec<String> = queued.iter().map(|p| format!("{prefix}/{}", p.uid().unwrap_or_default())).collect();
            let mut have: Vec<String> = mine.iter().map(|(k, _, _)| format!("{prefix}/{}", key_candidate(k))).collect();
            want.sort();
            have.sort();
            if want != have {
                return Err(format!("lock {}: etcd keys {have:?}, candidates' keys {want:?}", lock.name));
            }
            let ls = st.locks.iter().find(|l| l.name == lock.name).cloned().unwrap_or_default();
            let holder = mine.iter().min_by_key(|(_, r, _)| *r);
            let want_holder = holder.map(|(_, r, v)| (pod_of(v, ns).unwrap_or(v).to_string(), r.to_string()));
            if (ls.holder.clone(), ls.fencing_token.clone()) != (want_holder.clone().map(|h| h.0), want_holder.clone().map(|h| h.1)) {
                return Err(format!("lock {}: status says {:?}/{:?}, etcd {want_holder:?}", lock.name, ls.holder, ls.fencing_token));
            }
            for p in &pods.items {
                let a = p.annotations();
                let role = a.get(&format!("leaderlock.dev/{}", lock.name)).cloned();
                let token = a.get(&format!("leaderlock.dev/{}.token", lock.name)).cloned();
                let is_cand = cands.iter().any(|c| c.name_any() == p.name_any());
                let is_holder = want_holder.as_ref().is_some_and(|h| h.0 == p.name_any());
                let want = match (is_cand, is_holder) {
                    (true, true) => (Some("leader".to_string()), want_holder.clone().map(|h| h.1)),
                    (true, false) => (Some("standby".to_string()), None),
                    (false, _) => (None, None),
                };
                if (role.clone(), token.clone()) != want {
                    return Err(format!("lock {}: pod {} carries {role:?}/{token:?}, want {want:?}", lock.name, p.name_any()));
                }
            }
        }
    }
    Ok(())
}

/// Polls [`converged`] until it holds; returns how long that took, or what was still wrong.
pub async fn wait_converged(
    client: &kube::Client,
    ns: &str,
    endpoint: &str,
    root: &str,
    only: Option<&[String]>,
    bound: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let r = converged(client, ns, endpoint, root, only).await;
        match r {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > bound => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
