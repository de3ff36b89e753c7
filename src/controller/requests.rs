//! Handover requests' side of a reconcile: writing their status (and an Event once final), and
//! carrying out a move in etcd.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::error::{Error, Result, kube_err};
use super::events::{About, Severity, publish_event};
use super::{Context, FIELD_MANAGER};
use crate::lock::{Target, Unmovable};
use crate::resource::handover::{Handover, HandoverStatus, Phase, reasons};

/// Applies `status` to the Handover `name` and remembers it until the watch shows it; announces
/// a final phase with one Event (best effort: the status already says it).
pub async fn write_status(ctx: &Context, ns: &str, name: &str, status: &HandoverStatus) -> Result<()> {
    let updated = match apply_status(&ctx.client, ns, name, status).await {
        Ok(updated) => updated,
        // Deleted meanwhile: nobody is left to read the outcome.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(kube_err("apply Handover status")(e)),
    };
    let written = updated.status.clone().unwrap_or_default();
    ctx.expected_requests.record(updated.metadata.uid.as_deref(), updated.metadata.resource_version.as_deref(), written);
    if status.phase.is_some_and(Phase::is_final) {
        announce(ctx, &updated, status).await;
    }
    Ok(())
}

/// Server-side applies `status` to the Handover `name`, as the controller's one field manager.
async fn apply_status(client: &kube::Client, ns: &str, name: &str, status: &HandoverStatus) -> Result<Handover, kube::Error> {
    let api: Api<Handover> = Api::namespaced(client.clone(), ns);
    let patch = json!({"apiVersion": "leaderlock.dev/v1alpha1", "kind": "Handover", "status": status});
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
}

async fn announce(ctx: &Context, r: &Handover, status: &HandoverStatus) {
    let about = About { regarding: r.object_ref(&()), namespace: r.namespace().unwrap_or_default(), name: r.name_any() };
    let reason = status.reason.clone().unwrap_or_default();
    let note = format!("lock {}: {}", r.spec.lock, status.message.as_deref().unwrap_or_default());
    if let Err(e) = publish_event(ctx, &about, Severity::Normal, &reason, format!("Handover/{}", r.spec.lock), note, None).await {
        tracing::warn!(error = %e, "cannot publish Event");
    }
}

/// Moves the lock at `prefix` from the holder with `from_token` to the candidate `to` (None:
/// the next in line) for the Handover `request`. Keys that
/// no longer allow the move settle the request as refused; a holder that changed meanwhile
/// is an error, so the reconcile is retried and judges the request again.
pub async fn hand_over(ctx: &Context, ns: &str, request: &str, lock: &str, prefix: &str, from_token: i64, to: Option<&str>) -> Result<()> {
    let target = to.map_or(Target::Next, Target::Candidate);
    match ctx.engine.move_lock(prefix, from_token, target).await? {
        Ok(moved) => {
            tracing::info!(handover = request, lock, prefix, to = %moved.target.0, token = moved.target.1, "lock handed over");
            Ok(())
        }
        Err(Unmovable::HolderChanged { .. }) => Err(Error::Etcd(crate::etcd::Error::Raced { op: "hand over lock" })),
        Err(why) => {
            let reason = match why {
                Unmovable::NoHolder => reasons::NO_HOLDER,
                Unmovable::ExternalHolder { .. } => reasons::EXTERNAL_HOLDER,
                Unmovable::ExternalAhead { .. } => reasons::EXTERNAL_AHEAD,
                Unmovable::NobodyNext => reasons::NO_OTHER_CANDIDATE,
                Unmovable::NotQueued | Unmovable::AlreadyHolder | Unmovable::HolderChanged { .. } => reasons::NOT_CANDIDATE,
            };
            let status = super::handover::refused(reason, &format!("lock {lock:?}: {why}"), jiff::Timestamp::now());
            write_status(ctx, ns, request, &status).await
        }
    }
}

/// Refuses a request naming a LeaderLock that does not exist. Best effort: a failure is
/// logged, and the next event of the request tries again.
pub async fn refuse_orphan(client: &kube::Client, r: &Handover) {
    let (Some(ns), name) = (r.namespace(), r.name_any()) else { return };
    let message = format!("there is no LeaderLock {:?} in namespace {ns}", r.spec.leader_lock);
    let status = super::handover::refused(reasons::LEADER_LOCK_NOT_FOUND, &message, jiff::Timestamp::now());
    if let Err(e) = apply_status(client, &ns, &name, &status).await {
        tracing::warn!(handover = name, namespace = ns, error = %e, "cannot refuse a Handover naming no LeaderLock");
    }
}
