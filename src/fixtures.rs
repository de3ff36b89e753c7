//! Test fixtures shared by the unit tests of every module: a LeaderLock spec builder, pods, the
//! index's view, holders and reconcile snapshots. One place, so a new spec field is added once.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

use crate::controller::plan::Step;
use crate::controller::snapshot::{Holders, Queues, Snapshot};
use crate::index::View;
use crate::lock::LockKey;
use crate::node_loss::Silence;
use crate::pods::{Matcher, Pairs, PodInfo};
use crate::resolve::Resolution;
use crate::resource::{LeaderLock, LeaderLockSpec, LeaderLockStatus, LockSpec};

/// The prefix of lock `ledger` of the LeaderLock `payments` in `ns`.
pub const P: &str = "/ll/locks/ns/ledger";

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

/// A spec with every optional field at its default: no selector, no locks, TTL 15 s.
pub fn spec() -> LeaderLockSpec {
    LeaderLockSpec {
        selector: LabelSelector::default(),
        locks: None,
        shards: None,
        placement: None,
        ttl_seconds: 15,
        pod_labels: false,
        node_lost_after_seconds: None,
        renew_deadline_seconds: None,
        paused: false,
    }
}

/// Builder methods on a spec, for the fields tests set.
pub trait SpecBuilder: Sized {
    /// Selects pods labelled `app=<app>`.
    fn selecting(self, app: &str) -> Self;
    /// Serves `locks`, each `(name, etcdKey)`.
    fn locks(self, locks: &[(&str, Option<&str>)]) -> Self;
}

impl SpecBuilder for LeaderLockSpec {
    fn selecting(mut self, app: &str) -> Self {
        self.selector = LabelSelector { match_labels: Some([("app".to_string(), app.to_string())].into()), ..Default::default() };
        self
    }

    fn locks(mut self, locks: &[(&str, Option<&str>)]) -> Self {
        self.locks = Some(locks.iter().map(|(n, k)| LockSpec { name: n.to_string(), etcd_key: k.map(str::to_string) }).collect());
        self
    }
}

/// LeaderLock `name` with `spec`, created `age` seconds in.
pub fn named(name: &str, age: i64, spec: LeaderLockSpec) -> LeaderLock {
    let mut l = LeaderLock::new(name, spec);
    l.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(1_700_000_000 + age).unwrap()));
    l
}

/// LeaderLock `payments` in `ns` selecting `app=worker`, with `locks`.
pub fn leaderlock(locks: &[&str], status: Option<LeaderLockStatus>) -> LeaderLock {
    let locks: Vec<(&str, Option<&str>)> = locks.iter().map(|l| (*l, None)).collect();
    let mut ll = LeaderLock::new("payments", spec().selecting("worker").locks(&locks));
    ll.metadata.namespace = Some("ns".into());
    ll.metadata.generation = Some(3);
    ll.status = status;
    ll
}

/// A Ready pod `name` (UID `uid-<name>`) selected by `payments`, created `age` seconds in.
pub fn pod(name: &str, age: i64, candidate: bool, keys: &[(&str, &str)]) -> Arc<PodInfo> {
    let keys: BTreeMap<String, String> = keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Arc::new(PodInfo {
        namespace: "ns".into(),
        name: name.into(),
        uid: Some(format!("uid-{name}")),
        resource_version: Some("1".into()),
        created: Some(jiff::Timestamp::from_second(1_700_000_000 + age).unwrap()),
        labels: [("app".to_string(), "worker".to_string())].iter().map(|(k, v)| (k, v)).collect::<Pairs>(),
        candidate,
        node: Some("node-a".into()),
        ready_since: Some(jiff::Timestamp::from_second(1_700_000_000 + age).unwrap()),
        our_annotations: keys.iter().collect(),
        our_labels: Pairs::default(),
    })
}

/// The view the index gives of `ll` when it alone selects `pods` and all its locks resolve
/// to `/ll/locks/ns/<lock>`.
pub fn view(ll: &LeaderLock, pods: &[Arc<PodInfo>]) -> View {
    let resolved =
        ll.spec.lock_specs().iter().map(|l| (l.name.clone(), Resolution::Accepted(format!("/ll/locks/ns/{}", l.name)))).collect();
    View {
        leaderlocks: [("payments".to_string(), (Arc::new(ll.clone()), Matcher::new(&ll.spec.selector)))].into(),
        pods: pods.iter().map(|p| (p.name.clone(), p.clone())).collect(),
        selecting: pods.iter().map(|p| (p.name.clone(), vec!["payments".to_string()])).collect(),
        resolved: [("payments".to_string(), resolved)].into(),
        released: vec![],
        nodes: Silence::default(),
    }
}

/// Our key for `pod` under `prefix`, with create revision `token`.
pub fn key(prefix: &str, pod: &str, token: i64) -> LockKey {
    LockKey { key: format!("{prefix}/uid-{pod}"), token, owner: Some(format!("uid-{pod}")), name: Some(format!("ns/{pod}")) }
}

/// `pod` holds lock `ledger` with `token`.
pub fn holds(pod: &str, token: i64) -> Holders {
    [(P.to_string(), key(P, pod, token))].into()
}

/// A snapshot of `view`'s pods with the keys they carry, `holders` holding (each alone in its
/// queue) and no open Handover.
pub fn snapshot<'a>(ll: &'a LeaderLock, view: &'a View, holders: Holders) -> Snapshot<'a> {
    let current = view.pods.iter().map(|(n, p)| (n.clone(), p.keys())).collect();
    let queues: Queues = holders.iter().map(|(p, h)| (p.clone(), vec![h.clone()])).collect();
    Snapshot { ll, view, current, holders, queues, requests: vec![], resync: Default::default() }
}

/// The snapshot a reconcile takes after its etcd stage: `before` with the pod and Handover
/// writes of `steps` as the expectations would report them, and etcd's `holders` now.
pub fn after<'a>(before: &Snapshot<'a>, steps: &[Step], holders: Holders) -> Snapshot<'a> {
    let mut current = before.current.clone();
    let mut requests = before.requests.clone();
    for step in steps {
        match step {
            Step::Pod { name, to, .. } => {
                current.insert(name.clone(), to.clone());
            }
            Step::Request { name, status } => {
                if let Some(r) = requests.iter_mut().find(|r| r.metadata.name.as_ref() == Some(name)) {
                    Arc::make_mut(r).status = Some(status.clone());
                }
            }
            _ => {}
        }
    }
    let queues = before.queues.clone();
    Snapshot { ll: before.ll, view: before.view, current, holders, queues, requests, resync: before.resync.clone() }
}
