//! Least-privilege RBAC, proven (docs/contract.md §5): the controller runs as the Helm chart's
//! ServiceAccount — with only the chart's ClusterRole — through the main scenarios; with one
//! rule removed it reports the missing permission in the LeaderLock's status instead of
//! misbehaving silently. Own controller and lock etcd; the two tests run one at a time.
mod common;

use std::time::Duration;

use common::checker::Checker;
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use kube::api::{Api, DeleteParams};
use leaderlock::resource::LeaderLock;
use serde_json::Value;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The chart's ServiceAccount, the controller's own ClusterRole and ClusterRoleBinding, and its
/// Role (node Leases) and RoleBinding, rendered for namespace `ns` (not the roles of secure
/// metrics: the controllers of the tests serve /metrics in plain HTTP, and tests/metrics_auth.rs
/// proves those roles).
fn chart_rbac(ns: &str) -> Vec<Value> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/leaderlock");
    let out = std::process::Command::new("helm")
        .args(["template", "leaderlock", chart, "--namespace", ns])
        .output()
        .expect("helm on PATH (hack/cluster.sh puts it there)");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{text}"));
    docs.into_iter()
        .filter(|v| match v["kind"].as_str() {
            Some("ServiceAccount" | "Role" | "RoleBinding") => true,
            Some("ClusterRole" | "ClusterRoleBinding") => v["metadata"]["name"] == "leaderlock",
            _ => false,
        })
        .collect()
}

/// Applies the chart's RBAC under a unique name (minus `drop`, a (resource, verb) to remove),
/// and returns a kubeconfig acting as its ServiceAccount through a TokenRequest token.
fn service_account_kubeconfig(ns: &str, drop: Option<(&str, &str)>) -> tempfile::TempPath {
    let mut docs = chart_rbac(ns);
    let unique = format!("leaderlock-{ns}");
    let mut sa_name = String::new();
    for d in &mut docs {
        match d["kind"].as_str() {
            Some("ServiceAccount") => sa_name = d["metadata"]["name"].as_str().unwrap().to_string(),
            Some(kind @ ("ClusterRole" | "Role")) => {
                d["metadata"]["name"] = if kind == "Role" { format!("{unique}-node-leases") } else { unique.clone() }.into();
                if let Some((resource, verb)) = drop {
                    for rule in d["rules"].as_array_mut().unwrap() {
                        if rule["resources"].as_array().unwrap().iter().any(|r| r.as_str() == Some(resource)) {
                            let verbs = rule["verbs"].as_array_mut().unwrap();
                            verbs.retain(|v| v.as_str() != Some(verb));
                        }
                    }
                }
            }
            Some("ClusterRoleBinding") => {
                d["metadata"]["name"] = unique.clone().into();
                d["roleRef"]["name"] = unique.clone().into();
            }
            Some("RoleBinding") => {
                d["metadata"]["name"] = format!("{unique}-node-leases").into();
                d["roleRef"]["name"] = format!("{unique}-node-leases").into();
            }
            _ => {}
        }
    }
    // The node-Lease Role and its binding live in kube-node-lease, the rest in `ns`.
    for target in [ns, "kube-node-lease"] {
        let here = |d: &&Value| d["metadata"]["namespace"].as_str().unwrap_or(ns) == target;
        let yaml = docs.iter().filter(here).map(|d| serde_saphyr::to_string(d).unwrap()).collect::<Vec<_>>().join("---\n");
        kubectl_ok(&["apply", "-n", target, "-f", "-"], Some(&yaml));
    }
    service_account_kubeconfig_for(ns, &sa_name)
}

fn start_as(kubeconfig: &std::path::Path, etcd: &EtcdServer) -> ControllerProcess {
    // Cluster-wide, as the chart deploys it.
    ControllerProcess::start_with_env(&["--etcd-endpoints", &etcd.endpoint()], &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

const LL: &str = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n  podLabels: true\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_does_its_whole_job_with_only_the_charts_rbac() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("rbac-full");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let kubeconfig = service_account_kubeconfig(&ns, None);
    let _ctl = start_as(&kubeconfig, &etcd);
    ready_pods(&c, &ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 2).await;
    delete_pod(&c, &ns, &holder).await;
    let (next, next_token) = elected(&c, &ns, "payments", "ledger", 1).await;
    assert!(next != holder && next_token > token);
    let events = kubectl_ok(&["get", "events", "-n", &ns, "-o", "jsonpath={.items[*].reason}"], None);
    assert!(events.contains("HolderChanged"), "Events need events.k8s.io create: {events}");
    Api::<LeaderLock>::namespaced(c.clone(), &ns).delete("payments", &DeleteParams::default()).await.unwrap();
    eventually("the finalizer to finish", Duration::from_secs(30), || async {
        Api::<LeaderLock>::namespaced(c.clone(), &ns).get_opt("payments").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(annotations(&c, &ns, &next).await.is_empty());
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_permission_is_reported_in_the_status_naming_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("rbac-missing");
    let c = client().await;
    let kubeconfig = service_account_kubeconfig(&ns, Some(("pods", "patch")));
    let ctl = start_as(&kubeconfig, &etcd);
    ready_pods(&c, &ns, &["w-1"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    let message = eventually("a Forbidden condition", Duration::from_secs(30), || async {
        let st = leaderlock(&c, &ns, "payments").await.status?;
        st.conditions.into_iter().find(|c| c.reason == "Forbidden" && c.status == "False").map(|c| c.message)
    })
    .await;
    assert!(message.contains("patch") && message.contains("pods") && message.contains("ServiceAccount"), "{message}");
    assert!(annotations(&c, &ns, "w-1").await.is_empty(), "nothing may be half-written");
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(log.contains("forbidden") || log.contains("Forbidden"), "the log names the failure too");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_node_lease_role_elections_run_and_the_status_says_nodes_are_judged_by_readiness() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("rbac-node-leases");
    let c = client().await;
    let kubeconfig = service_account_kubeconfig(&ns, Some(("leases", "list")));
    let _ctl = start_as(&kubeconfig, &etcd);
    ready_pods(&c, &ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    elected(&c, &ns, "payments", "ledger", 2).await;
    let message = eventually("NodeLost=Unknown", Duration::from_secs(30), || async {
        let st = leaderlock(&c, &ns, "payments").await.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "NodeLost" && c.status == "Unknown" && c.reason == "NodeLeasesUnreadable")
            .map(|c| c.message)
    })
    .await;
    assert!(message.contains("kube-node-lease") && message.contains("NotReady"), "{message}");
}
