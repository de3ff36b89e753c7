//! Writing a pod's `leaderlock.dev/*` keys: one JSON merge patch guarded by the pod's UID, under
//! our field manager. Server-side apply did the same in up to two requests and cost the
//! apiserver more per write (BENCHMARKS.md, phase `price`); it stays behind a switch the
//! benchmark flips to compare the two in one run (the status write follows the same switch).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use super::error::{Result, kube_err};
use super::{Context, FIELD_MANAGER};
use crate::pods::PodKeys;

/// Bench-only: `LEADERLOCK_BENCH_WRITES=apply` writes pods and the status by server-side apply,
/// as before the merge patches; read once. Not a user setting (not in `--help` or the contract).
static BENCH_APPLY: LazyLock<bool> = LazyLock::new(|| std::env::var("LEADERLOCK_BENCH_WRITES").is_ok_and(|v| v == "apply"));

/// Whether the bench asked for the server-side apply path (see [`BENCH_APPLY`]).
pub fn bench_apply() -> bool {
    *BENCH_APPLY
}

/// Writes `want` as the pod's `leaderlock.dev/*` keys; keys in `have` but not in `want` (ours,
/// or a manual edit under another manager) are removed in the same request.
pub async fn write_pod_keys(ctx: &Context, ns: &str, name: &str, uid: Option<&str>, have: &PodKeys, want: &PodKeys) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let written = if bench_apply() { apply(&api, name, uid, have, want).await } else { merge(&api, name, uid, have, want).await };
    match written {
        Ok(Some(pod)) => {
            ctx.expected_pods.record(pod.metadata.uid.as_deref(), pod.metadata.resource_version.as_deref(), PodKeys::current(&pod));
            Ok(())
        }
        Ok(None) => Ok(()), // replaced or gone: its own watch event reconciles again
        Err(e) => Err(e),
    }
}

/// `want`'s entries, and null for every key of `have` that `want` lacks (a merge patch removes it).
fn with_removals(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> Map<String, Value> {
    let gone = have.keys().filter(|k| !want.contains_key(*k)).map(|k| (k.clone(), Value::Null));
    want.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).chain(gone).collect()
}

/// One merge patch. The UID is a precondition: keys computed for one pod never land on a
/// namesake that replaced it (409), and a deleted pod is not recreated (404). No resourceVersion
/// precondition: like the apply it replaces, the write sets our keys whatever else changed in
/// the pod (a kubelet status update racing it would otherwise cost a 409 and a second reconcile),
/// and the expectations already keep a reconcile from deciding on a copy older than our writes.
async fn merge(api: &Api<Pod>, name: &str, uid: Option<&str>, have: &PodKeys, want: &PodKeys) -> Result<Option<Pod>> {
    let patch = json!({"metadata": {
        "uid": uid,
        "annotations": with_removals(&have.annotations, &want.annotations),
        "labels": with_removals(&have.labels, &want.labels),
    }});
    match api.patch(name, &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &Patch::Merge(&patch)).await {
        Ok(pod) => Ok(Some(pod)),
        Err(e) if pod_replaced_or_gone(&e) => Ok(None),
        Err(e) => Err(kube_err("patch pod keys")(e)),
    }
}

/// Server-side apply (the path before the merge patch): stray keys removed by a merge patch
/// first, then our keys applied under our field manager, guarded by the UID.
async fn apply(api: &Api<Pod>, name: &str, uid: Option<&str>, have: &PodKeys, want: &PodKeys) -> Result<Option<Pod>> {
    let stray = |h: &BTreeMap<String, String>, w: &BTreeMap<String, String>| -> Map<String, Value> {
        h.keys().filter(|k| !w.contains_key(*k)).map(|k| (k.clone(), Value::Null)).collect()
    };
    let (sa, sl) = (stray(&have.annotations, &want.annotations), stray(&have.labels, &want.labels));
    if !sa.is_empty() || !sl.is_empty() {
        let remove = json!({"metadata": {"uid": uid, "annotations": sa, "labels": sl}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&remove)).await {
            Ok(_) => {}
            Err(e) if pod_replaced_or_gone(&e) => return Ok(None),
            Err(e) => return Err(kube_err("remove pod keys")(e)),
        }
    }
    let apply = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "uid": uid, "annotations": want.annotations, "labels": want.labels},
    });
    match api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&apply)).await {
        Ok(pod) => Ok(Some(pod)),
        Err(e) if pod_replaced_or_gone(&e) => Ok(None),
        Err(e) => Err(kube_err("apply pod keys")(e)),
    }
}

/// 404: deleted; 409: the UID precondition failed (a namesake replaced it); 422: an apply of a
/// deleted pod was refused as an invalid creation.
fn pod_replaced_or_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 404 | 409 | 422))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_sets_wanted_keys_and_nulls_the_ones_to_remove() {
        let have = BTreeMap::from([("leaderlock.dev/a".to_string(), "leader".to_string()), ("leaderlock.dev/b".into(), "standby".into())]);
        let want = BTreeMap::from([("leaderlock.dev/a".to_string(), "standby".to_string())]);
        let patch = with_removals(&have, &want);
        assert_eq!(Value::Object(patch), json!({"leaderlock.dev/a": "standby", "leaderlock.dev/b": null}));
    }
}
