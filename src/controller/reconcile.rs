//! One reconcile of a LeaderLock, in one pass: read the index's view once, decide everything to
//! write ([`super::plan`]), apply the writes in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::error::{Error, Result, kube_err};
use super::expectations::with_latest_status;
use super::plan::{self, Step};
use super::snapshot::{Holders, Queues, ResyncGate, Snapshot};
use super::{Context, FIELD_MANAGER, events, handover, placement, pod_writes, requests, status};
use crate::index::View;
use crate::lock::{Op, Target};
use crate::placement::Why;
use crate::pods::{self, PodKeys};
use crate::resource::handover::Handover;
use crate::resource::{LeaderLock, LeaderLockStatus};

/// Makes etcd and the pods match the LeaderLock, then reports what etcd says in the status.
pub async fn apply(ll: Arc<LeaderLock>, ctx: &Context) -> Result<Action> {
    let ll = with_latest_status(&ctx.expected_status, ll);
    let view = ctx.view(&ll);
    let result = async {
        let before = snapshot(ctx, &ll, &view);
        let decided = plan::decide(&before, jiff::Timestamp::now());
        let steps = plan::before_etcd(&before, &decided);
        execute_before_etcd(ctx, &ll, &steps).await?;
        // Only once the etcd stage succeeded: a claim recorded before a failed sync would win
        // seniority ties for a lock whose keys were never written; and the claims are what
        // remembers a removed lock's prefix until its keys are gone.
        ctx.index.record_claims(&ll, &decided.mine);
        // A fresh snapshot: the holders etcd shows now, and our own writes through the
        // expectations.
        let now = jiff::Timestamp::now();
        let after = snapshot(ctx, &ll, &view);
        let decided = plan::decide(&after, now);
        let writes = plan::after_etcd(&after, &decided, &plan::placement_moves(&steps), now);
        execute(ctx, &ll, &writes).await?;
        let resync = ctx.resyncs.next_due(resync_waiting(&view, &after, &writes));
        let renew = plan::next_renewal(&after, &writes, now);
        Ok::<_, Error>([placement::recheck_after(&decided.placed, now), resync, renew].into_iter().flatten().min())
    }
    .await;
    if let Err(e) = &result
        && let Some((reason, message)) = e.condition()
    {
        report_failure(ctx, &ll, reason, &message).await;
    }
    let recheck = result?;
    tracing::debug!(leaderlock = %ll.name_any(), namespace = ll.namespace().unwrap_or_default(), "reconciled");
    // The only timers: a candidate's stabilisation delay ending, a pod's resync or (opt-in) a
    // leader's renewal falling due.
    Ok(recheck.map_or_else(Action::await_change, Action::requeue))
}

/// What a plan decides from: the view, each pod's keys as we last knew them, the holders.
pub fn snapshot<'a>(ctx: &Context, ll: &'a LeaderLock, view: &'a View) -> Snapshot<'a> {
    let current = view
        .pods
        .iter()
        .map(|(name, pod)| {
            let keys = ctx.expected_pods.newer_than(pod.uid.as_deref(), pod.resource_version.as_deref()).unwrap_or_else(|| pod.keys());
            (name.clone(), keys)
        })
        .collect();
    let not_yet = view.pods.iter().filter(|(_, p)| p.uid.as_deref().is_some_and(|u| ctx.resyncs.not_yet(u))).map(|(n, _)| n.clone());
    let resync = ResyncGate { enabled: ctx.resync_after.is_some(), not_yet: not_yet.collect() };
    Snapshot { ll, view, current, holders: holders(ctx, view), queues: queues(ctx, view), requests: requests(ctx, ll), resync }
}

/// Every key in line for every accepted prefix of `view`, from etcd's mirror (no I/O).
fn queues(ctx: &Context, view: &View) -> Queues {
    Snapshot::prefixes(view).map(|p| (p.clone(), ctx.engine.line(p))).collect()
}

/// The open Handovers naming `ll`, each with the status we last wrote when the watch has not
/// delivered it yet.
fn requests(ctx: &Context, ll: &LeaderLock) -> Vec<Arc<Handover>> {
    let (ns, name) = (ll.namespace(), ll.name_any());
    let mut out = Vec::new();
    for r in ctx.requests.state() {
        if r.namespace() != ns || r.spec.leader_lock != name {
            continue;
        }
        let ours = ctx.expected_requests.newer_than(r.metadata.uid.as_deref(), r.metadata.resource_version.as_deref());
        let r = match ours {
            Some(status) => Arc::new(Handover { status: Some(status), ..(*r).clone() }),
            None => r,
        };
        if !handover::is_final(&r) {
            out.push(r);
        }
    }
    out
}

/// The holder of every accepted prefix of `view`, from etcd's mirror (no I/O).
fn holders(ctx: &Context, view: &View) -> Holders {
    let mut out = BTreeMap::new();
    for prefix in Snapshot::prefixes(view) {
        if let Some(h) = ctx.engine.holder(prefix) {
            out.insert(prefix.clone(), h);
        }
    }
    out
}

/// Applies the steps before etcd: the Handover status writes run alongside the pod demotions
/// (they are independent, and both must land before a lock moves: one round trip saved on
/// every handover), then the rest in order.
async fn execute_before_etcd(ctx: &Context, ll: &LeaderLock, steps: &[Step]) -> Result<()> {
    let requests = steps.iter().take_while(|s| matches!(s, Step::Request { .. })).count();
    let pods = steps[requests..].iter().take_while(|s| matches!(s, Step::Pod { .. })).count();
    let (first, rest) = steps.split_at(requests + pods);
    let (settled, demoted) = futures::join!(execute(ctx, ll, &first[..requests]), execute(ctx, ll, &first[requests..]));
    settled?;
    demoted?;
    execute(ctx, ll, rest).await
}

/// Applies `steps` in order, stopping at the first failure.
pub async fn execute(ctx: &Context, ll: &LeaderLock, steps: &[Step]) -> Result<()> {
    let ns = ll.namespace().ok_or(Error::NoNamespace)?;
    let name = ll.name_any();
    for step in steps {
        match step {
            Step::Pod { name, uid, from, to } => {
                pod_writes::write_pod_keys(ctx, &ns, name, uid.as_deref(), from, to).await?;
                note_resync(ctx, uid.as_deref(), from, to);
            }
            Step::Sync { prefix, wanted, ttl, .. } => {
                let ops = ctx.engine.sync_observed(prefix, wanted, *ttl, |op| ctx.metrics.etcd_op(op_kind(op))).await?;
                log_ops(&name, &ops);
            }
            Step::Release { lock, prefix } => {
                let released = ctx.engine.release_all(prefix).await?;
                if released > 0 {
                    tracing::info!(leaderlock = %name, lock, prefix, keys = released, "lock released");
                }
            }
            Step::Status(status) => write_status(ctx, ll, status).await?,
            Step::Publish(changes) => events::publish(ctx, ll, changes).await,
            Step::NodeLost(note) => events::node_lost(ctx, ll, note).await,
            Step::Request { name, status } => requests::write_status(ctx, &ns, name, status).await?,
            Step::Move { lock, prefix, from_token, to, request: Some(request), .. } => {
                requests::hand_over(ctx, &ns, request, lock, prefix, *from_token, to.as_deref()).await?;
            }
            Step::Move { lock, prefix, from_token, to, request: None, why } => {
                place(ctx, &name, lock, prefix, *from_token, to.as_deref(), *why).await?;
            }
        }
    }
    Ok(())
}

/// The pods whose follow-up this reconcile left waiting: those the snapshot held back and those
/// whose leadership it just changed. A pod outside both got its follow-up (or needs none).
fn resync_waiting<'a>(view: &'a View, after: &Snapshot, writes: &[Step]) -> impl Iterator<Item = &'a str> {
    let written: BTreeSet<&str> =
        writes.iter().filter_map(|s| if let Step::Pod { name, .. } = s { Some(name.as_str()) } else { None }).collect();
    view.pods
        .iter()
        .filter(move |(name, _)| after.resync.not_yet.contains(*name) || written.contains(name.as_str()))
        .filter_map(|(_, p)| p.uid.as_deref())
}

/// After a pod write: a leadership change schedules the pod's resync; a write of the resync key
/// itself is that resync, done.
fn note_resync(ctx: &Context, uid: Option<&str>, from: &PodKeys, to: &PodKeys) {
    let (Some(uid), Some(after)) = (uid, ctx.resync_after) else { return };
    if pods::changes_leadership(from, to) {
        // A write that also settled the key (a LeaderLock's cleanup) leaves nothing to follow up.
        if to.annotations.get(pods::RESYNC_KEY) != pods::leadership_digest(to).as_ref() {
            ctx.resyncs.changed(uid, after);
        }
    } else if from.annotations.get(pods::RESYNC_KEY) != to.annotations.get(pods::RESYNC_KEY) {
        ctx.resyncs.done(uid);
        ctx.metrics.role_resyncs.inc();
    }
}

/// Carries out a move placement planned (docs/contract.md §8): one handover transaction.
/// Keys that changed since the plan was made (etcd moved on
/// by itself) write nothing: that change triggers the next reconcile, which plans again.
async fn place(ctx: &Context, ll: &str, lock: &str, prefix: &str, from_token: i64, to: Option<&str>, why: Option<Why>) -> Result<()> {
    let target = to.map_or(Target::Next, Target::Candidate);
    let why = why.map(|w| w.to_string()).unwrap_or_default();
    match ctx.engine.move_lock(prefix, from_token, target).await? {
        Ok(moved) => {
            tracing::info!(leaderlock = ll, lock, prefix, to = %moved.target.0, token = moved.target.1, why, "lock placed");
            Ok(())
        }
        Err(unmovable) => {
            tracing::debug!(leaderlock = ll, lock, prefix, why, reason = %unmovable, "placement move not made: the keys changed");
            Ok(())
        }
    }
}

/// Puts a failure users can act on into the `Ready` condition; best effort (the API may be
/// what failed).
pub async fn report_failure(ctx: &Context, ll: &LeaderLock, reason: &str, message: &str) {
    let status = status::failed(ll, reason, message, jiff::Timestamp::now());
    if let Err(write) = write_status(ctx, ll, &status).await {
        tracing::warn!(error = %write, "cannot report the failure in the LeaderLock status either");
    }
}

/// Writes the status: a JSON merge patch of what changed since the status we last knew (ours, or
/// the watch's), under our field manager; we are its only writer. Server-side apply of the whole
/// status behind the bench switch ([`pod_writes::bench_apply`]).
async fn write_status(ctx: &Context, ll: &LeaderLock, status: &LeaderLockStatus) -> Result<()> {
    let api: Api<LeaderLock> = Api::namespaced(ctx.client.clone(), &ll.namespace().ok_or(Error::NoNamespace)?);
    let (params, patch) = if pod_writes::bench_apply() {
        let whole = json!({"apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock", "status": status});
        (PatchParams::apply(FIELD_MANAGER).force(), Patch::Apply(whole))
    } else {
        let json = |s: Option<&LeaderLockStatus>| s.map_or(Ok(Value::Null), serde_json::to_value);
        let serde = |e| kube_err("serialize LeaderLock status")(kube::Error::SerdeError(e));
        let changed = merge_diff(&json(ll.status.as_ref()).map_err(serde)?, &json(Some(status)).map_err(serde)?);
        (PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, Patch::Merge(json!({ "status": changed })))
    };
    let updated = api.patch_status(&ll.name_any(), &params, &patch).await.map_err(kube_err("patch LeaderLock status"))?;
    ctx.expected_status.record(
        updated.metadata.uid.as_deref(),
        updated.metadata.resource_version.as_deref(),
        updated.status.clone().unwrap_or_default(),
    );
    Ok(())
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed members only, null for
/// removed ones; arrays are replaced whole.
fn merge_diff(old: &Value, new: &Value) -> Value {
    let (Value::Object(o), Value::Object(n)) = (old, new) else { return new.clone() };
    let mut out = serde_json::Map::new();
    for (k, nv) in n {
        match o.get(k) {
            Some(ov) if ov == nv => {}
            Some(ov) => drop(out.insert(k.clone(), merge_diff(ov, nv))),
            None => drop(out.insert(k.clone(), nv.clone())),
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        out.insert(k.clone(), Value::Null);
    }
    Value::Object(out)
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
            Op::Reattach { key, lease, .. } => {
                tracing::info!(leaderlock = ll, key, lease, "candidate key moved to lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_merge_patch_carries_only_what_changed_and_nulls_what_went() {
        let old = json!({"lockCount": 1, "locks": [{"name": "a", "holder": "p-0"}], "placement": {"vacant": 1, "settled": false}});
        let new = json!({"lockCount": 1, "locks": [{"name": "a", "holder": "p-1"}], "placement": {"settled": true}});
        let want = json!({"locks": [{"name": "a", "holder": "p-1"}], "placement": {"vacant": null, "settled": true}});
        assert_eq!(merge_diff(&old, &new), want);
        assert_eq!(merge_diff(&Value::Null, &new), new, "a first status is written whole");
    }
}
