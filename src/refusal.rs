//! A controller whose etcd root belongs to another cluster serves nothing (docs/contract.md §5):
//! it writes nothing to etcd, and tells users why where they look — `Ready=False` with reason
//! `RootOwnedByOtherCluster` on every LeaderLock it watches. Each LeaderLock is patched once;
//! one that already says so is left alone, so an idle cluster costs no writes.

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::etcd::registration::RootOwnedByOtherCluster;
use crate::resource::{LeaderLock, reasons};

/// The field manager of the refusal's status patches.
const FIELD_MANAGER: &str = "leaderlock-refusal";

/// Marks every LeaderLock (of `namespace`, or all) not ready because of `refusal`, as they
/// appear, until `shutdown` is cancelled (then the process exits 0, as a serving controller does).
pub async fn run(client: kube::Client, namespace: Option<String>, refusal: RootOwnedByOtherCluster, shutdown: CancellationToken) {
    tokio::select! {
        () = mark_all(client, namespace, refusal) => {}
        () = shutdown.cancelled() => tracing::info!("shutting down"),
    }
}

/// Watch errors are retried by the watcher's backoff.
async fn mark_all(client: kube::Client, namespace: Option<String>, refusal: RootOwnedByOtherCluster) {
    let api: Api<LeaderLock> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let message = refusal.to_string();
    let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
    while let Some(event) = events.next().await {
        let lls = match event {
            Ok(watcher::Event::Apply(ll) | watcher::Event::InitApply(ll)) => vec![ll],
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching LeaderLocks failed; retrying");
                continue;
            }
        };
        for ll in lls {
            if let Err(e) = mark(&client, &ll, &message).await {
                tracing::warn!(error = %e, leaderlock = %ll.name_any(), "cannot write the RootOwnedByOtherCluster condition");
            }
        }
    }
}

/// Writes `Ready=False, RootOwnedByOtherCluster` unless the LeaderLock already carries it.
async fn mark(client: &kube::Client, ll: &LeaderLock, message: &str) -> Result<(), kube::Error> {
    let Some(conditions) = refused_conditions(ll, message) else {
        return Ok(());
    };
    let api: Api<LeaderLock> = Api::namespaced(client.clone(), &ll.namespace().unwrap_or_default());
    let patch = json!({"status": {"conditions": conditions}});
    api.patch_status(&ll.name_any(), &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch)).await.map(drop)
}

/// The LeaderLock's conditions with `Ready` replaced by the refusal; None when it already says so.
fn refused_conditions(ll: &LeaderLock, message: &str) -> Option<Vec<Condition>> {
    let mut conditions = ll.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = ll.meta().generation;
    let current = conditions.iter().position(|c| c.type_ == reasons::READY);
    if let Some(c) = current.map(|i| &conditions[i])
        && c.status == "False"
        && c.reason == reasons::ROOT_OWNED_BY_OTHER_CLUSTER
        && c.message == message
        && c.observed_generation == generation
    {
        return None;
    }
    let refused = Condition {
        type_: reasons::READY.into(),
        status: "False".into(),
        reason: reasons::ROOT_OWNED_BY_OTHER_CLUSTER.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    };
    match current {
        Some(i) => conditions[i] = refused,
        None => conditions.push(refused),
    }
    Some(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::LeaderLockSpec;

    fn ll() -> LeaderLock {
        let spec: LeaderLockSpec =
            serde_json::from_value(json!({"selector": {"matchLabels": {"app": "w"}}, "locks": [{"name": "a"}]})).unwrap();
        LeaderLock::new("payments", spec)
    }

    #[test]
    fn a_leaderlock_is_marked_once_and_then_left_alone() {
        let mut ll = ll();
        let conditions = refused_conditions(&ll, "root taken").unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!((conditions[0].status.as_str(), conditions[0].reason.as_str()), ("False", "RootOwnedByOtherCluster"));
        ll.status = Some(crate::resource::LeaderLockStatus { conditions, ..Default::default() });
        assert_eq!(refused_conditions(&ll, "root taken"), None, "a second pass writes nothing");
        assert!(refused_conditions(&ll, "another reason").is_some());
    }
}
