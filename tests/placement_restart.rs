//! A controller restart under placement Spread (docs/contract.md §8): the new process plans the
//! same placement from the same pods and keys, so it moves no lock and writes no lock key, pod or
//! status. Owns its controller and lock etcd (a shared controller would reconcile it too).
mod common;

use std::time::Duration;

use common::checker::{Checker, wait_converged};
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use kube::ResourceExt;

/// Every key under the namespace's lock area with its create and mod revisions.
async fn lock_keys(endpoint: &str, ns: &str) -> Vec<(String, i64, i64)> {
    let mut etcd = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let kvs = etcd.get(format!("{ROOT}locks/{ns}/"), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    kvs.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision(), kv.mod_revision())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_under_spread_moves_no_lock_and_writes_nothing() {
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("placement-restart");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, ROOT, &[]).await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], &[("app", "worker")]).await;
    let first = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    let yaml = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: shop}\nspec:\n  selector: {matchLabels: {app: worker}}\n  shards: 8\n  placement: {policy: Spread, stabilizationSeconds: 0}\n";
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(yaml));
    eventually("a settled placement", Duration::from_secs(60), || async {
        let p = leaderlock(&c, &ns, "shop").await.status?.placement?;
        (p.settled && p.vacant == 0 && p.distribution.iter().all(|d| d.locks >= 2)).then_some(())
    })
    .await;
    wait_converged(&c, &ns, &endpoint, ROOT, None, Duration::from_secs(60)).await.unwrap();
    let (keys, pods, ll) = (lock_keys(&endpoint, &ns).await, pod_versions(&c, &ns).await, leaderlock(&c, &ns, "shop").await);

    first.kill(); // SIGKILL: no cleanup, leases stay
    let second = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    wait_until("the new controller to reconcile shop", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&second.log).unwrap_or_default();
        log.lines().any(|l| l.contains("reconciled") && l.contains("leaderlock=shop")).then_some(())
    });
    assert_eq!(lock_keys(&endpoint, &ns).await, keys, "a lock key was written or moved after the restart");
    assert_eq!(pod_versions(&c, &ns).await, pods, "a pod was written after the restart");
    let after = leaderlock(&c, &ns, "shop").await;
    assert_eq!(after.resource_version(), ll.resource_version(), "the status was rewritten after the restart");
    checker.assert_clean();
}
