//! Kubernetes-side fixtures: a client from the test control plane, pods we create and play the
//! kubelet for, and reads of what the controller wrote (roles, status, the elected holder).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use leaderlock::resource::LeaderLock;
use serde_json::json;

pub async fn client() -> kube::Client {
    kube::Client::try_default().await.expect("a kube client from KUBECONFIG")
}

/// Creates a pod with `labels` that no kubelet will ever run; see [`set_ready`].
pub async fn create_pod(c: &kube::Client, ns: &str, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
}

/// Plays the kubelet: marks the pod Running and Ready (or not Ready) through `pods/status`.
pub async fn set_ready(c: &kube::Client, ns: &str, name: &str, ready: bool) {
    try_set_ready(c, ns, name, ready).await.unwrap_or_else(|e| panic!("marking pod {ns}/{name} ready={ready}: {e}"));
}

/// [`set_ready`] for churn drivers, which carry on past a failed write.
pub async fn try_set_ready(c: &kube::Client, ns: &str, name: &str, ready: bool) -> Result<(), kube::Error> {
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    Api::<Pod>::namespaced(c.clone(), ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.map(drop)
}

pub async fn ready_pods(c: &kube::Client, ns: &str, names: &[&str], labels: &[(&str, &str)]) {
    for n in names {
        create_pod(c, ns, n, labels).await;
        set_ready(c, ns, n, true).await;
    }
}

/// Deletes a pod at once (no kubelet will finish a graceful deletion).
pub async fn delete_pod(c: &kube::Client, ns: &str, name: &str) {
    try_delete_pod(c, ns, name).await.unwrap_or_else(|e| panic!("deleting pod {ns}/{name}: {e}"));
}

/// [`delete_pod`] for churn drivers, which carry on past a failed delete.
pub async fn try_delete_pod(c: &kube::Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    Api::<Pod>::namespaced(c.clone(), ns).delete(name, &DeleteParams::default().grace_period(0)).await.map(drop)
}

/// Every pod of `ns` with its resourceVersion: equal before and after means nothing wrote them.
pub async fn pod_versions(c: &kube::Client, ns: &str) -> Vec<(String, String)> {
    let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&Default::default()).await.unwrap();
    pods.items.iter().map(|p| (p.name_any(), p.resource_version().unwrap_or_default())).collect()
}

pub async fn annotations(c: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    // A holder such as "etcd:/key" is not a pod name: no pod, no keys.
    let Ok(pod) = Api::<Pod>::namespaced(c.clone(), ns).get(name).await else { return BTreeMap::new() };
    pod.metadata.annotations.unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with("leaderlock.dev/")).collect()
}

/// Role of every pod in `ns` for `lock`, by pod name.
pub async fn roles(c: &kube::Client, ns: &str, lock: &str) -> BTreeMap<String, String> {
    let key = format!("leaderlock.dev/{lock}");
    let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&Default::default()).await.unwrap();
    pods.items.iter().filter_map(|p| Some((p.name_any(), p.annotations().get(&key)?.clone()))).collect()
}

pub async fn leaderlock(c: &kube::Client, ns: &str, name: &str) -> LeaderLock {
    Api::<LeaderLock>::namespaced(c.clone(), ns).get(name).await.unwrap()
}

/// Polls `check` (an API read) every 50 ms until it returns Some, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The holder recorded in status for `lock`, once the LeaderLock is Ready.
pub async fn status_holder(c: &kube::Client, ns: &str, ll: &str, lock: &str) -> Option<(String, i64)> {
    let l = leaderlock(c, ns, ll).await;
    let st = l.status?;
    let s = st.locks.iter().find(|s| s.name == lock)?;
    Some((s.holder.clone()?, s.fencing_token.as_ref()?.parse().ok()?))
}

/// Waits until exactly one pod is annotated leader for `lock` with the status' holder and
/// token, every other candidate in `standby`, and the status counting `candidates`; returns
/// (holder, token).
pub async fn elected(c: &kube::Client, ns: &str, ll: &str, lock: &str, candidates: usize) -> (String, i64) {
    eventually(&format!("an elected holder of {lock} in {ns}"), Duration::from_secs(30), || async {
        let (holder, token) = status_holder(c, ns, ll, lock).await?;
        // Pods are annotated before the status is written: the status must count them too.
        let st = leaderlock(c, ns, ll).await.status?;
        if st.locks.iter().find(|s| s.name == lock)?.candidates as usize != candidates {
            return None;
        }
        let roles = roles(c, ns, lock).await;
        let leaders: Vec<&String> = roles.iter().filter(|(_, r)| *r == "leader").map(|(p, _)| p).collect();
        let standbys = roles.values().filter(|r| *r == "standby").count();
        let token_ann = annotations(c, ns, &holder).await.get(&format!("leaderlock.dev/{lock}.token")).cloned();
        (leaders == [&holder] && standbys + 1 == candidates && token_ann == Some(token.to_string())).then_some((holder, token))
    })
    .await
}

/// A kubeconfig (a temp file, removed on drop) for the apiserver of `KUBECONFIG` that acts as
/// the ServiceAccount `sa` of `ns`, through a one-hour TokenRequest token.
#[allow(dead_code)] // not every test binary acts as a ServiceAccount
pub fn service_account_kubeconfig_for(ns: &str, sa: &str) -> tempfile::TempPath {
    let token = crate::common::kubectl_ok(&["create", "token", sa, "-n", ns, "--duration", "1h"], None);
    let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(crate::common::env("KUBECONFIG")).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {}, certificate-authority: {}}}\nusers:\n- name: sa\n  user: {{token: {}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: sa}}\ncurrent-context: c\n",
        cluster["server"].as_str().unwrap(),
        cluster["certificate-authority"].as_str().unwrap(),
        token.trim()
    );
    let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::write(&path, kubeconfig).unwrap();
    path
}
