//! Writing a pod's `leaderlock.dev/*` keys: server-side apply under our field manager, guarded
//! by the pod's UID.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::error::{Result, kube_err};
use super::{Context, FIELD_MANAGER};
use crate::pods::PodKeys;

/// Server-side applies `want` as the pod's `leaderlock.dev/*` keys under our field manager.
/// Keys we do not own (a manual edit under another manager) are removed explicitly.
pub async fn write_pod_keys(ctx: &Context, ns: &str, name: &str, uid: Option<&str>, have: &PodKeys, want: &PodKeys) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
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
            ctx.expected_pods.record(pod.metadata.uid.as_deref(), pod.metadata.resource_version.as_deref(), PodKeys::current(&pod));
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
