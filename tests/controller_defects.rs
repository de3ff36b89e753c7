//! Defects of the controller found by trying it, each reproduced against the real apiserver and
//! lock etcd (docs/contract.md §6). One controller process serves every test; each test has its
//! own namespace and asserts the safety checker saw nothing unsafe there.
mod common;

use std::time::Duration;

use common::checker::Checker;
use common::k8s::*;
use common::*;

const WORKER: &[(&str, &str)] = &[("app", "worker")];
const T: Duration = Duration::from_secs(30);

fn apply_ll(ns: &str, name: &str, locks: &str) {
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  locks: {locks}\n"
    );
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&yaml));
}

/// The keys under `prefix/` in the lock etcd.
fn etcd_keys(prefix: &str) -> Vec<String> {
    common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("{prefix}/"))
}

/// Issue 14, defect 1: removing a lock from `spec.locks` removed the pods' keys but left every
/// candidate key of the lock in etcd, kept alive by the controller's lease for ever; an
/// `etcdctl lock` user of that prefix then waited for ever.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_lock_from_the_spec_deletes_its_candidate_keys_in_etcd() {
    install_crd();
    shared_controller();
    let ns = namespace("removed-lock");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    let (report, legacy) = (format!("/leaderlock.dev/locks/{ns}/report"), format!("/legacy/{ns}/nightly"));
    apply_ll(&ns, "payments", &format!("[{{name: ledger}}, {{name: report}}, {{name: nightly, etcdKey: {legacy}}}]"));
    for lock in ["ledger", "report", "nightly"] {
        elected(&c, &ns, "payments", lock, 2).await;
    }
    assert_eq!((etcd_keys(&report).len(), etcd_keys(&legacy).len()), (2, 2), "one key per candidate and lock");

    apply_ll(&ns, "payments", "[{name: ledger}]");
    eventually("the removed locks' keys to be deleted", T, || async {
        (etcd_keys(&report).is_empty() && etcd_keys(&legacy).is_empty()).then_some(())
    })
    .await;
    let status = eventually("a status without the removed locks", T, || async {
        let st = leaderlock(&c, &ns, "payments").await.status?;
        (st.locks.len() == 1).then_some(st)
    })
    .await;
    assert_eq!(status.locks[0].name, "ledger");
    assert_eq!(etcd_keys(&format!("/leaderlock.dev/locks/{ns}/ledger")).len(), 2, "the remaining lock keeps its keys");
    for pod in ["w-1", "w-2"] {
        let left: Vec<String> =
            annotations(&c, &ns, pod).await.into_keys().filter(|k| k.contains("report") || k.contains("nightly")).collect();
        assert!(left.is_empty(), "{pod} still carries {left:?}");
    }
    // The prefix is free for any other client of etcd's lock recipe.
    let out = std::process::Command::new("timeout")
        .args(["10", "etcdctl", "--endpoints", &env("LEADERLOCK_ETCD_ENDPOINTS"), "lock", &report, "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl lock {report} did not get the lock: {}", String::from_utf8_lossy(&out.stderr));
    checker.assert_clean();
}
