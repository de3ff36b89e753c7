//! Announcing holder changes: one `HolderChanged` Event each, the holder-change counter and,
//! when a deleted key caused the change, the failover latency.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::Context;
use super::plan::HolderChange;
use crate::metrics::LockLabels;
use crate::resource::LeaderLock;

/// `reportingController` of our Events.
const REPORTING_CONTROLLER: &str = "leaderlock";

/// Counts and announces each change. A failed Event is logged, not retried: the status
/// already reports the holder, and a retry would announce the change twice.
pub async fn publish(ctx: &Context, ll: &LeaderLock, changes: &[HolderChange]) {
    for change in changes {
        let labels = LockLabels { namespace: ll.namespace().unwrap_or_default(), leaderlock: ll.name_any(), lock: change.lock.clone() };
        ctx.metrics.holder_changes.get_or_create(&labels).inc();
        let deleted = change.prefix.as_deref().and_then(|p| ctx.engine.mirror().last_delete(p));
        if let Some(deleted) = deleted.filter(|_| change.from.is_some()) {
            ctx.metrics.failover_latency.observe(deleted.elapsed().as_secs_f64());
        }
        let mut note = format!(
            "lock {}: {} -> {} (fencing token {})",
            change.lock,
            change.from.as_deref().unwrap_or("<none>"),
            change.to,
            change.token.as_deref().unwrap_or("-")
        );
        // A move placement made says why (docs/contract.md §8): Spread, Preference, NeverLead, HolderLeft.
        let action = match change.why {
            Some(why) => {
                note.push_str(&format!("; placement: {why:?}"));
                format!("Place/{}", change.lock)
            }
            None => format!("Elect/{}", change.lock),
        };
        let related = Some(&change.to).filter(|h| !h.starts_with("etcd:")).map(|pod| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.clone()),
            namespace: ll.namespace(),
            ..Default::default()
        });
        let about = About { regarding: ll.object_ref(&()), namespace: ll.namespace().unwrap_or_default(), name: ll.name_any() };
        if let Err(e) = publish_event(ctx, &about, Severity::Normal, "HolderChanged", action, note, related).await {
            tracing::warn!(error = %e, "cannot publish Event");
        }
    }
}

/// Announces lost nodes of `ll`'s pods (its `NodeLost` condition's message); best effort, like
/// the holder changes.
pub async fn node_lost(ctx: &Context, ll: &LeaderLock, note: &str) {
    let about = About { regarding: ll.object_ref(&()), namespace: ll.namespace().unwrap_or_default(), name: ll.name_any() };
    if let Err(e) = publish_event(ctx, &about, Severity::Warning, "NodeLost", "NodeLost".into(), note.to_string(), None).await {
        tracing::warn!(error = %e, "cannot publish Event");
    }
}

/// An Event's `type`: `Warning` for what may need someone's attention.
#[derive(Clone, Copy, Debug)]
pub enum Severity {
    Normal,
    Warning,
}

/// The object an Event is about.
pub struct About {
    pub regarding: ObjectReference,
    pub namespace: String,
    pub name: String,
}

/// Creates one Event (events.k8s.io/v1) about an object. Not kube-runtime's `Recorder`: it
/// folds equal Events into a series, so a transition repeated within minutes would show the
/// first one's note and fencing token, and it keeps every Event it sent for six minutes (28 MB
/// of a 155 MB heap at 10,000 LeaderLocks, measured with heaptrack).
pub async fn publish_event(
    ctx: &Context,
    about: &About,
    severity: Severity,
    reason: &str,
    action: String,
    note: String,
    related: Option<ObjectReference>,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let ns = about.namespace.clone();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", about.name, now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        type_: Some(format!("{severity:?}")),
        reason: Some(reason.into()),
        action: Some(action),
        note: Some(note),
        event_time: Some(MicroTime(now)),
        regarding: Some(about.regarding.clone()),
        related,
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(ctx.instance.clone()),
        ..Default::default()
    };
    Api::<Event>::namespaced(ctx.client.clone(), &ns).create(&PostParams::default(), &event).await.map(drop)
}
