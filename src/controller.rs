//! The reconciler (SPEC §2–§4): for each LeaderLock, make etcd hold one key per candidate pod
//! and lock, then make the pods' `leaderlock.dev/*` keys and the status say who holds.
//!
//! ```text
//!  LeaderLock ─┐                       ┌─▶ pods pass (demotions first)   ─▶ apiserver (SSA)
//!  Pod ────────┼─▶ reconcile(LeaderLock)┼─▶ etcd ops (create / delete)    ─▶ etcd
//!  etcd mirror ┘     (idempotent)       ├─▶ pods pass (promotions)        ─▶ apiserver (SSA)
//!                                       └─▶ status + Event on holder change
//! ```
//!
//! Nothing here polls: every reconcile is triggered by a LeaderLock, a pod or an etcd change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::etcd::engine::Engine;
use crate::lock::{Candidate, Holder, Op};
use crate::metrics::{LockLabels, Metrics};
use crate::index::{Index, View};
use crate::pods::{self, PodInfo, PodKeys};
use crate::resolve::{Resolution, selector_problem};
use crate::resource::{LeaderLock, LeaderLockStatus, LockStatus, reasons};

/// The one field manager for every status and pod write.
pub const FIELD_MANAGER: &str = "leaderlock";
/// `reportingController` of our Events.
const REPORTING_CONTROLLER: &str = "leaderlock";
/// Holds a LeaderLock until its etcd keys and pod keys are gone.
pub const FINALIZER: &str = "leaderlock.dev/cleanup";

/// Failures of one reconcile. Messages say what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] crate::etcd::Error),
    #[error("Kubernetes API call {what} failed: {source}")]
    Kube { what: &'static str, source: kube::Error },
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("LeaderLock has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Etcd(_) => "etcd",
            Error::Kube { .. } => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
        }
    }
}

fn kube_err(what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shared state of all reconciles.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client for pods, status and events.
    pub client: kube::Client,
    /// The lock engine: etcd writes and the mirror holders are read from.
    pub engine: Arc<Engine>,
    /// Every LeaderLock and pod, indexed: candidacy, lock-name conflicts and a pod's keys are
    /// decided without API reads, touching only the objects concerned.
    pub index: Arc<Index>,
    /// This replica's name, the `reportingInstance` of its Events.
    pub instance: String,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Our status writes the watch has not delivered yet.
    pub written: Arc<Written<LeaderLockStatus>>,
    /// Our pod key writes the watch has not delivered yet.
    pub written_pods: Arc<Written<PodKeys>>,
}

/// What this controller last wrote to objects of one kind (by UID), with the resourceVersion the
/// write produced, kept until the watch delivers that version. A reconcile can start before the
/// watch shows our previous write; deciding from the older copy it would announce the same
/// holder change twice and write the status again, or — for pods — think a pod it just promoted
/// is still standby and skip its demotion: two leaders.
pub struct Written<T>(std::sync::Mutex<HashMap<String, (u64, T)>>);

impl<T> Default for Written<T> {
    fn default() -> Self {
        Written(std::sync::Mutex::default())
    }
}

impl<T: Clone> Written<T> {
    /// Remembers that writing `value` produced version `rv` of object `uid`.
    pub fn record(&self, uid: Option<&str>, rv: Option<&str>, value: T) {
        if let (Some(uid), Some(rv)) = (uid, rv.and_then(|v| v.parse::<u64>().ok())) {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(uid.to_string(), (rv, value));
        }
    }

    /// What we wrote, if the copy at version `rv` the caller holds is older than that write.
    pub fn newer_than(&self, uid: Option<&str>, rv: Option<&str>) -> Option<T> {
        let (uid, rv) = (uid?, rv?.parse::<u64>().ok()?);
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(uid) {
            Some((wrote, value)) if rv < *wrote => Some(value.clone()),
            Some(_) => {
                m.remove(uid); // the watch has caught up
                None
            }
            None => None,
        }
    }
}

/// `ll`, with the status we last wrote if `ll` is older than that write.
fn with_latest_status(written: &Written<LeaderLockStatus>, ll: Arc<LeaderLock>) -> Arc<LeaderLock> {
    match written.newer_than(ll.metadata.uid.as_deref(), ll.metadata.resource_version.as_deref()) {
        Some(status) => {
            let mut newer = (*ll).clone();
            newer.status = Some(status);
            Arc::new(newer)
        }
        None => ll,
    }
}

/// The candidate pod whose key is `h` (matched by pod UID, never by name alone).
fn holder_pod(h: &Holder, candidates: &[Arc<PodInfo>]) -> Option<String> {
    let id = h.candidate.as_deref()?;
    candidates.iter().find(|p| p.uid.as_deref() == Some(id)).map(|p| p.name.clone())
}

fn candidate_of(pod: &PodInfo) -> Option<Candidate> {
    Some(Candidate { id: pod.uid.clone()?, name: format!("{}/{}", pod.namespace, pod.name) })
}

/// Which pod writes a [`sync_pods`] call makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Only pods losing a `leader` role (before their etcd keys go).
    Demotions,
    /// Everything: demotions and settled pods first, then promotions.
    All,
}

/// Writes the `leaderlock.dev/*` keys of the pods a view concerns — each pod's full set, across
/// every LeaderLock of the namespace, as one field manager must — every demotion before any
/// promotion. Writes nothing for pods already right, and each pod at most twice (only a pod
/// that loses one lock and gains another needs the intermediate step).
async fn sync_pods(ctx: &Context, ns: &str, view: &View, pass: Pass) -> Result<usize> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut plans = Vec::new();
    for (name, pod) in &view.pods {
        let roles = view.roles_for(pod, |prefix| ctx.engine.holder(prefix));
        let desired = pods::desired(name, &roles);
        let current = ctx.written_pods.newer_than(pod.uid.as_deref(), pod.resource_version.as_deref()).unwrap_or_else(|| pod.keys());
        if current != desired {
            let first = pods::demotions_only(&current, &desired, &roles);
            plans.push((name, pod.uid.as_deref(), current, first, desired));
        }
    }
    let mut writes = 0;
    for (name, uid, current, first, desired) in &mut plans {
        let settles = pass == Pass::All && first == desired;
        if first != current && (settles || pods::is_demotion(current, first)) {
            write_pod_keys(ctx, &api, name, *uid, current, first).await?;
            *current = first.clone();
            writes += 1;
        }
    }
    if pass == Pass::All {
        for (name, uid, current, _, desired) in &plans {
            if desired != current {
                write_pod_keys(ctx, &api, name, *uid, current, desired).await?;
                writes += 1;
            }
        }
    }
    Ok(writes)
}

/// Server-side applies `want` as the pod's `leaderlock.dev/*` keys under our field manager.
/// Keys we do not own (a manual edit under another manager) are removed explicitly.
async fn write_pod_keys(ctx: &Context, api: &Api<Pod>, name: &str, uid: Option<&str>, have: &PodKeys, want: &PodKeys) -> Result<()> {
    let stray = |h: &BTreeMap<String, String>, w: &BTreeMap<String, String>| -> serde_json::Map<String, serde_json::Value> {
        h.keys().filter(|k| !w.contains_key(*k)).map(|k| (k.clone(), serde_json::Value::Null)).collect()
    };
    let (sa, sl) = (stray(&have.annotations, &want.annotations), stray(&have.labels, &want.labels));
    if !sa.is_empty() || !sl.is_empty() {
        let remove = json!({"metadata": {"uid": uid, "annotations": sa, "labels": sl}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&remove)).await {
            Ok(_) => {}
            Err(e) if pod_replaced_or_gone(&e) => return Ok(()),
            Err(e) => return Err(kube_err("remove pod keys")(e)),
        }
    }
    // The UID is a precondition: keys computed for one pod never land on a namesake that
    // replaced it, and an apply never turns into the creation of a deleted pod.
    let apply = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "uid": uid, "annotations": want.annotations, "labels": want.labels},
    });
    match api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&apply)).await {
        Ok(pod) => {
            ctx.written_pods.record(pod.metadata.uid.as_deref(), pod.metadata.resource_version.as_deref(), PodKeys::current(&pod));
            Ok(())
        }
        Err(e) if pod_replaced_or_gone(&e) => Ok(()), // its own watch event reconciles again
        Err(e) => Err(kube_err("apply pod keys")(e)),
    }
}

/// 404: deleted; 409: the UID precondition failed (a namesake replaced it); 422: an apply of a
/// deleted pod was refused as an invalid creation.
fn pod_replaced_or_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 404 | 409 | 422))
}

/// Entry point of every reconcile: finalizer handling, then [`apply`] or [`cleanup`].
pub async fn reconcile(ll: Arc<LeaderLock>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ll.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LeaderLock> = Api::namespaced(ctx.client.clone(), &ns);
    tracing::debug!(leaderlock = %ll.name_any(), "reconcile: start");
    finalizer(&api, FINALIZER, ll, |event| async {
        match event {
            Finalizer::Apply(ll) => apply(ll, &ctx).await,
            Finalizer::Cleanup(ll) => cleanup(ll, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// Makes etcd and the pods match the LeaderLock, then reports what etcd says in the status.
async fn apply(ll: Arc<LeaderLock>, ctx: &Context) -> Result<Action> {
    let ll = with_latest_status(&ctx.written, ll);
    let ns = ll.namespace().ok_or(Error::NoNamespace)?;
    let name = ll.name_any();
    let view = ctx.index.view(&ll);
    let mine = view.resolved.get(&name).cloned().unwrap_or_default();
    ctx.index.record_claims(&ll, &mine);
    let candidates = view.candidates(&name);
    let wanted: Vec<Candidate> = candidates.iter().filter_map(|p| candidate_of(p)).collect();

    // Phase 1: demote pods that must not lead any more (before their keys go).
    tracing::debug!(leaderlock = %name, "reconcile: phase 1 (demotions)");
    let result = async {
        sync_pods(ctx, &ns, &view, Pass::Demotions).await?;
        tracing::debug!(leaderlock = %name, "reconcile: phase 2 (etcd)");
        // Phase 2: etcd — one create per joining candidate, one delete per leaving one.
        let mut wrote = false;
        for (_, res) in &mine {
            if let Resolution::Accepted(prefix) = res {
                let ops = ctx.engine.plan(prefix, &wanted, ll.spec.ttl_seconds).await?;
                ctx.engine.apply_all(prefix, &ops, |op| ctx.metrics.etcd_op(op_kind(op))).await?;
                ctx.engine.remember_holder(prefix);
                wrote |= !ops.is_empty();
                log_ops(&name, &ops);
            }
        }
        tracing::debug!(leaderlock = %name, wrote, "reconcile: phase 3 (promotions)");
        // Phase 3: everything else, promotions of the holders now visible in the mirror last.
        let view = if wrote { ctx.index.view(&ll) } else { view };
        sync_pods(ctx, &ns, &view, Pass::All).await?;
        Ok::<_, Error>(())
    }
    .await;

    if let Err(e) = &result
        && let Some((reason, message)) = failure_condition(e)
    {
        let mut status = ll.status.clone().unwrap_or_default();
        set_condition(&mut status.conditions, condition(&ll, false, reason, &message));
        if let Err(write) = write_status(ctx, &ll, &status).await {
            tracing::warn!(error = %write, "cannot report the failure in the LeaderLock status either");
        }
    }
    result?;

    let status = observed_status(ctx, &ll, &mine, &candidates);
    publish_holder_changes(ctx, &ll, &mine, &status).await;
    let status_changed = ll.status.as_ref() != Some(&status);
    if status_changed {
        write_status(ctx, &ll, &status).await?;
    }
    tracing::debug!(leaderlock = %name, namespace = %ns, status_changed, "reconciled");
    Ok(Action::await_change())
}

/// The condition a failed reconcile leaves on the LeaderLock, for failures users can act on.
fn failure_condition(e: &Error) -> Option<(&'static str, String)> {
    match e {
        Error::Etcd(e) => Some((reasons::ETCD_UNAVAILABLE, format!("{e}; retrying with backoff"))),
        Error::Kube { what, source: kube::Error::Api(s) } if s.code == 403 => Some((
            reasons::FORBIDDEN,
            format!("{what}: {}; grant the missing permission to the controller's ServiceAccount (see the Helm chart's ClusterRole)", s.message),
        )),
        _ => None,
    }
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "create",
        Op::Delete { .. } => "delete",
        Op::Reattach { .. } => "reattach",
    }
}

fn log_ops(ll: &str, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Create { key, .. } => tracing::info!(leaderlock = ll, key, "candidate joined"),
            Op::Delete { key, .. } => tracing::info!(leaderlock = ll, key, "candidate left"),
            Op::Reattach { key, lease, .. } => tracing::info!(leaderlock = ll, key, lease, "candidate key moved to lease"),
        }
    }
}

/// The status from what etcd's mirror says now.
fn observed_status(ctx: &Context, ll: &LeaderLock, mine: &[(String, Resolution)], candidates: &[Arc<PodInfo>]) -> LeaderLockStatus {
    let old = ll.status.clone().unwrap_or_default();
    let now = jiff_now();
    let mut locks = Vec::new();
    let mut rejected = Vec::new();
    let mut without_holder = 0;
    for (lock, res) in mine {
        let prev = old.locks.iter().find(|l| &l.name == lock).cloned().unwrap_or_default();
        let mut st = LockStatus { name: lock.clone(), candidates: candidates.len() as i32, transitions: prev.transitions, ..Default::default() };
        match res {
            Resolution::Rejected { reason, message } => {
                rejected.push((*reason, format!("lock {lock}: {message}")));
                st.candidates = 0;
            }
            Resolution::Accepted(prefix) => {
                if let Some(h) = ctx.engine.holder(prefix) {
                    st.holder = match holder_pod(&h, candidates) {
                        Some(pod) => Some(pod),
                        // Another cluster's pod (`<cluster>/<ns>/<pod>`) or an outside holder.
                        None if h.candidate.is_none() => Some(h.name.clone().unwrap_or_else(|| format!("etcd:{}", h.key))),
                        None => None, // a key of a pod that is leaving: not a holder to report
                    };
                    if st.holder.is_some() {
                        st.fencing_token = Some(h.token.to_string());
                    }
                }
                if st.holder.is_none() {
                    without_holder += 1;
                }
                if st.holder != prev.holder || st.fencing_token != prev.fencing_token {
                    if st.holder.is_some() {
                        st.transitions += 1;
                    }
                    st.since = st.holder.as_ref().map(|_| now.clone());
                } else {
                    st.since = prev.since.clone();
                }
            }
        }
        locks.push(st);
    }
    if let Some(problem) = selector_problem(&ll.spec.selector) {
        rejected.insert(0, (reasons::INVALID_SELECTOR, format!("{problem}; no pod is a candidate until it is fixed")));
    }
    let ready = if let Some((reason, _)) = rejected.first() {
        let msg = rejected.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
        condition(ll, false, reason, &msg)
    } else if candidates.is_empty() {
        condition(ll, true, reasons::NO_CANDIDATES, "the selector matches no Running and Ready pod; locks will be elected when one appears")
    } else if without_holder > 0 {
        condition(ll, false, "Electing", &format!("{without_holder} lock(s) have no holder yet"))
    } else {
        condition(ll, true, reasons::ELECTED, "every lock has a holder")
    };
    let mut conditions = old.conditions.clone();
    set_condition(&mut conditions, ready);
    LeaderLockStatus { observed_generation: ll.meta().generation, lock_count: ll.spec.locks.len() as i32, locks, conditions }
}

fn jiff_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn condition(ll: &LeaderLock, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: reasons::READY.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: ll.meta().generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

/// Replaces the condition of the same type, keeping its transition time if status is unchanged.
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

async fn write_status(ctx: &Context, ll: &LeaderLock, status: &LeaderLockStatus) -> Result<()> {
    let api: Api<LeaderLock> = Api::namespaced(ctx.client.clone(), &ll.namespace().ok_or(Error::NoNamespace)?);
    let patch = json!({"apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock", "status": status});
    let updated = api
        .patch_status(&ll.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err("apply LeaderLock status"))?;
    ctx.written.record(updated.metadata.uid.as_deref(), updated.metadata.resource_version.as_deref(), updated.status.clone().unwrap_or_default());
    Ok(())
}

/// One Event per holder change (not per reconcile): compares with the last reported status.
/// Also counts the change and, when a deleted key caused it, the failover latency.
async fn publish_holder_changes(ctx: &Context, ll: &LeaderLock, mine: &[(String, Resolution)], status: &LeaderLockStatus) {
    let old = ll.status.clone().unwrap_or_default();
    for st in &status.locks {
        let prev = old.locks.iter().find(|l| l.name == st.name);
        let (from, from_token) = (prev.and_then(|p| p.holder.clone()), prev.and_then(|p| p.fencing_token.clone()));
        if st.holder.is_none() || (st.holder == from && st.fencing_token == from_token) {
            continue;
        }
        let labels = LockLabels { namespace: ll.namespace().unwrap_or_default(), leaderlock: ll.name_any(), lock: st.name.clone() };
        ctx.metrics.holder_changes.get_or_create(&labels).inc();
        let prefix = mine.iter().find_map(|(n, r)| match r {
            Resolution::Accepted(p) if *n == st.name => Some(p),
            _ => None,
        });
        if let Some(deleted) = prefix.and_then(|p| ctx.engine.mirror().last_delete(p)).filter(|_| from.is_some()) {
            ctx.metrics.failover_latency.observe(deleted.elapsed().as_secs_f64());
        }
        let note = format!(
            "lock {}: {} -> {} (fencing token {})",
            st.name,
            from.as_deref().unwrap_or("<none>"),
            st.holder.as_deref().unwrap_or("<none>"),
            st.fencing_token.as_deref().unwrap_or("-")
        );
        let related = st.holder.as_ref().filter(|h| !h.starts_with("etcd:")).map(|pod| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.clone()),
            namespace: ll.namespace(),
            ..Default::default()
        });
        if let Err(e) = publish_event(ctx, ll, format!("Elect/{}", st.name), note, related).await {
            tracing::warn!(error = %e, "cannot publish Event");
        }
    }
}

/// Creates one `HolderChanged` Event (events.k8s.io/v1) about `ll`. Not kube-runtime's
/// `Recorder`: it folds equal Events into a series, so a transition repeated within minutes
/// would show the first one's note and fencing token, and it keeps every Event it sent for six
/// minutes (28 MB of a 155 MB heap at 10,000 LeaderLocks, measured with heaptrack).
async fn publish_event(ctx: &Context, ll: &LeaderLock, action: String, note: String, related: Option<ObjectReference>) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let ns = ll.namespace().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta { name: Some(format!("{}.{:x}", ll.name_any(), now.as_nanosecond())), namespace: Some(ns.clone()), ..Default::default() },
        type_: Some("Normal".into()),
        reason: Some("HolderChanged".into()),
        action: Some(action),
        note: Some(note),
        event_time: Some(MicroTime(now)),
        regarding: Some(ll.object_ref(&())),
        related,
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(ctx.instance.clone()),
        ..Default::default()
    };
    Api::<Event>::namespaced(ctx.client.clone(), &ns).create(&PostParams::default(), &event).await.map(drop)
}

/// Deleting a LeaderLock: demote and unlabel its pods, then delete its candidate keys in etcd.
async fn cleanup(ll: Arc<LeaderLock>, ctx: &Context) -> Result<Action> {
    let ns = ll.namespace().ok_or(Error::NoNamespace)?;
    let view = ctx.index.view(&ll); // this LeaderLock, being deleted, assigns no roles
    sync_pods(ctx, &ns, &view, Pass::All).await?;
    for (_, res) in view.resolved.get(&ll.name_any()).into_iter().flatten() {
        if let Resolution::Accepted(prefix) = res {
            let released = ctx.engine.release_all(prefix).await;
            if let Err(e) = released {
                let cond = condition(&ll, false, reasons::ETCD_UNAVAILABLE, &format!("cannot delete the etcd keys of this LeaderLock: {e}; retrying"));
                let mut status = ll.status.clone().unwrap_or_default();
                set_condition(&mut status.conditions, cond);
                let _ = write_status(ctx, &ll, &status).await;
                return Err(e.into());
            }
        }
    }
    // Lock names it held go to a newer neighbour once it is gone: its Delete event reconciles
    // them (the index resolves against it until then).
    Ok(Action::await_change())
}

/// Logs the failure and retries with backoff; etcd outages are also visible in the status.
pub fn error_policy(ll: Arc<LeaderLock>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(leaderlock = %ll.name_any(), namespace = ll.namespace().unwrap_or_default(), error = %err, kind = err.label(), "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Everything the controller needs from the command line.
pub struct Settings {
    /// Identifies this replica in Events.
    pub instance: String,
    pub metrics: Arc<Metrics>,
    /// Watch only this namespace (None: every namespace).
    pub namespace: Option<String>,
    /// How many reconciles may run at once.
    pub concurrency: u16,
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(client: kube::Client, engine: Arc<Engine>, settings: Settings) {
    let (lls, pods_api): (Api<LeaderLock>, Api<Pod>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let prefix_engine = engine.clone();
    let (reader, writer) = reflector::store();
    let prefix_of = move |ns: &str, lock: &crate::resource::LockSpec| {
        prefix_engine.lock_prefix(ns, &lock.name, lock.etcd_key.as_deref()).map_err(|e| e.to_string())
    };
    let index = Arc::new(Index::new(prefix_of, reader.clone()));

    // Reconciles wait for the first complete list of both kinds: an empty pod index would look
    // like every candidate left, and change every holder. (Not `Store::wait_until_ready`: it
    // wakes only the last of several concurrent waiters, which left LeaderLocks unreconciled
    // forever after a takeover; a watch channel wakes them all.)
    let (pods_synced_tx, pods_synced) = tokio::sync::watch::channel(false);
    // Reconciles the index asks for beyond an object's own event (relists, deletions).
    let (trigger, triggers) = mpsc::unbounded_channel();
    let (lls_synced_tx, lls_synced) = tokio::sync::watch::channel(false);
    // The pod watch only feeds the index, which names the LeaderLocks each event concerns.
    let pod_index = index.clone();
    let mut pod_indexing = indexing(move |ev| pod_index.on_pod_event(ev), pods_synced_tx);
    let pod_triggers = watcher(pods_api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .flat_map(move |ev| futures::stream::iter(pod_indexing(&ev)));

    // Paginated lists (not `any_semantic`, which returns every LeaderLock in one response).
    // Only Apply events trigger their object directly: a relist's objects are indexed when it
    // completes, and the index then names what changed (a reconcile run on a relisted object
    // before that would read the previous table).
    let ll_index = index.clone();
    let mut ll_indexing = indexing(move |ev| ll_index.on_leaderlock_event(ev), lls_synced_tx);
    let ll_events = watcher(lls, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|ll: &mut LeaderLock| ll.managed_fields_mut().clear()) // never read
        .reflect(writer)
        .inspect(move |ev| ll_indexing(ev).into_iter().for_each(|r| drop(trigger.send(r))))
        .filter_map(|ev| {
            futures::future::ready(match ev {
                Ok(watcher::Event::Apply(ll)) => Some(Ok(ll)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    let controller = Controller::for_stream(ll_events, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency));
    let ctx = Arc::new(Context {
        client: client.clone(),
        engine: engine.clone(),
        index: index.clone(),
        instance: settings.instance,
        metrics: settings.metrics.clone(),
        written: Default::default(),
        written_pods: Default::default(),
    });

    let etcd_changes = etcd_triggers(engine.clone(), index);
    let extra = tokio_stream::wrappers::UnboundedReceiverStream::new(triggers);

    controller
        .reconcile_on(pod_triggers)
        .reconcile_on(futures::stream::select(etcd_changes, extra))
        .shutdown_on_signal()
        .run(
            move |ll, ctx| {
                let (mut pods_synced, mut lls_synced) = (pods_synced.clone(), lls_synced.clone());
                async move {
                    let _ = pods_synced.wait_for(|synced| *synced).await;
                    let _ = lls_synced.wait_for(|synced| *synced).await;
                    let start = std::time::Instant::now();
                    let result = reconcile(ll, ctx.clone()).await;
                    ctx.metrics.watch_restarts.set(ctx.engine.mirror().restarts() as i64);
                    ctx.metrics.observe_reconcile(start.elapsed(), result.as_ref().err().map(Error::label));
                    result
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile result");
            }
        })
        .await;
}

/// Retry delays of the watches: 200 ms doubling up to 5 s. kube's default grows to 30 s plus
/// jitter, and every decision waits for the watches: after a 30 s apiserver cut the pod watch
/// came back 84 s after the cut began, then replayed all that pod history at once.
struct WatchBackoff(Duration);

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff(Self::FIRST)
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// Feeds each watch event to the index and returns the LeaderLocks it concerns; says when a
/// (re)list is complete.
fn indexing<K>(
    index: impl Fn(&watcher::Event<K>) -> Vec<ObjectRef<LeaderLock>>,
    synced: tokio::sync::watch::Sender<bool>,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) -> Vec<ObjectRef<LeaderLock>> {
    move |ev| match ev {
        Ok(ev) => {
            let concerned = index(ev);
            if matches!(ev, watcher::Event::InitDone) {
                let _ = synced.send(true);
            }
            concerned
        }
        Err(e) => {
            tracing::warn!(error = %e, "watch failed; retrying within 5 s");
            vec![]
        }
    }
}

/// Maps etcd mirror changes to the LeaderLocks owning the changed lock prefixes (ours or an
/// external client's keys). A lagging subscriber reconciles every LeaderLock rather than miss one.
fn etcd_triggers(engine: Arc<Engine>, index: Arc<Index>) -> impl futures::Stream<Item = ObjectRef<LeaderLock>> + Send + 'static {
    let rx = engine.mirror().subscribe();
    tokio_stream::wrappers::BroadcastStream::new(rx).flat_map(move |batch| {
        let refs: Vec<ObjectRef<LeaderLock>> = match batch {
            Ok(keys) => {
                let prefixes: BTreeSet<&str> = keys.iter().filter_map(|k| k.rfind('/').map(|i| &k[..i])).collect();
                prefixes.into_iter().flat_map(|p| index.leaderlocks_with_prefix(p)).collect()
            }
            Err(_) => index.all_leaderlocks(),
        };
        futures::stream::iter(refs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::LeaderLockSpec;

    fn ll(rv: &str, holder: Option<&str>) -> Arc<LeaderLock> {
        let spec = LeaderLockSpec { selector: Default::default(), locks: vec![], ttl_seconds: 15, pod_labels: false };
        let mut l = LeaderLock::new("payments", spec);
        l.metadata.uid = Some("u1".into());
        l.metadata.resource_version = Some(rv.into());
        l.status = Some(LeaderLockStatus {
            locks: vec![LockStatus { name: "ledger".into(), holder: holder.map(str::to_string), ..Default::default() }],
            ..Default::default()
        });
        Arc::new(l)
    }

    #[test]
    fn watches_retry_within_five_seconds_and_start_over_after_a_success() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn a_reconcile_reading_a_copy_older_than_our_status_write_sees_the_write() {
        let written = Written::default();
        let wrote = ll("20", Some("w-1"));
        written.record(Some("u1"), Some("20"), wrote.status.clone().unwrap());
        let stale = with_latest_status(&written, ll("19", None));
        assert_eq!(stale.status.as_ref().unwrap().locks[0].holder.as_deref(), Some("w-1"));
        assert_eq!(stale.resource_version().as_deref(), Some("19"), "only the status is replaced");
        // Once the watch delivers the write (or anything newer), the copy is used as it is.
        let caught_up = with_latest_status(&written, ll("21", Some("w-2")));
        assert_eq!(caught_up.status.as_ref().unwrap().locks[0].holder.as_deref(), Some("w-2"));
        assert_eq!(with_latest_status(&written, ll("19", None)).status.as_ref().unwrap().locks[0].holder, None, "forgotten once caught up");
    }

    #[test]
    fn a_pod_just_promoted_is_seen_as_leader_even_from_an_older_copy() {
        let written: Written<PodKeys> = Written::default();
        let leader = PodKeys { annotations: [("leaderlock.dev/ledger".to_string(), "leader".to_string())].into(), ..Default::default() };
        written.record(Some("p1"), Some("7"), leader.clone());
        assert_eq!(written.newer_than(Some("p1"), Some("6")), Some(leader), "the watch still shows version 6");
        assert_eq!(written.newer_than(Some("p2"), Some("6")), None, "another pod");
        assert_eq!(written.newer_than(Some("p1"), Some("7")), None);
        assert_eq!(written.newer_than(Some("p1"), Some("6")), None, "forgotten once caught up");
    }
}
