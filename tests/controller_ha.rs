//! Several controller replicas (docs/contract.md §5): exactly one reconciles; `kill -9` of the active one
//! hands over to a standby before the lock leases expire, with no holder change; `/readyz` and
//! `/metrics` say which replica is active. Own lock etcd and controllers.
mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::checker::Checker;
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;

/// Every candidate key under the namespace's lock prefixes with its create and mod revisions.
fn candidate_keys(etcd: &EtcdServer, ns: &str) -> Vec<(String, i64, i64)> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("/leaderlock.dev/locks/{ns}/"), "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decode = |s: &serde_json::Value| String::from_utf8(BASE64.decode(s.as_str().unwrap()).unwrap()).unwrap();
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (decode(&kv["key"]), kv["create_revision"].as_i64().unwrap(), kv["mod_revision"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_active_replica_hands_over_to_a_standby_without_changing_any_holder() {
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("controller-ha");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, ROOT, &[]).await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], &[("app", "worker")]).await;
    let mut replicas: Vec<ControllerProcess> =
        (0..3).map(|_| ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns])).collect();
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}, {name: report}]\n  ttlSeconds: 10\n",
        ),
    );
    let ledger = elected(&c, &ns, "payments", "ledger", 3).await;
    let report = elected(&c, &ns, "payments", "report", 3).await;

    let active: Vec<usize> = (0..3).filter(|i| replicas[*i].is_active()).collect();
    assert_eq!(active.len(), 1, "exactly one replica is active");
    let active = active[0];
    for (i, r) in replicas.iter().enumerate() {
        let want = if i == active { "ok: active\n" } else { "ok: standby\n" };
        assert_eq!(r.http_get("/readyz").as_deref(), Some(want));
        let metrics = r.http_get("/metrics").unwrap();
        assert!(metrics.contains(&format!("leaderlock_active {}", u8::from(i == active))), "{metrics}");
    }
    let metrics = replicas[active].http_get("/metrics").unwrap();
    for m in [
        "leaderlock_reconciles_total",
        "leaderlock_holder_changes_total{",
        "leaderlock_etcd_operations_total{kind=\"create\"} 6",
        "leaderlock_reconcile_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(m), "missing {m} in\n{metrics}");
    }

    let keys = candidate_keys(&etcd, &ns);
    assert_eq!(keys.len(), 6);
    let killed_at = Instant::now();
    replicas.remove(active).kill();
    let took = eventually("a standby to become active", Duration::from_secs(10), || async {
        replicas.iter().any(|r| r.is_active()).then(|| killed_at.elapsed())
    })
    .await;
    assert!(took < Duration::from_secs(10), "takeover took {took:?}, longer than ttlSeconds");
    // Observe past the lock TTL: had nobody adopted the leases, the keys would be gone by now.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(killed_at.elapsed())).await;
    assert_eq!(candidate_keys(&etcd, &ns), keys, "candidate keys changed across the failover");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await, ledger);
    assert_eq!(elected(&c, &ns, "payments", "report", 3).await, report);

    // The new active replica works: the holder pod leaves, the next one leads.
    delete_pod(&c, &ns, &ledger.0).await;
    let (next, token) = eventually("a new ledger holder", Duration::from_secs(30), || async {
        status_holder(&c, &ns, "payments", "ledger").await.filter(|h| h.0 != ledger.0)
    })
    .await;
    assert!(token > ledger.1 && next != ledger.0);
    println!("failover: standby active {took:?} after kill -9 of the active replica");
    checker.assert_clean();
}

/// A rolling update of the controller: the old standby and then the old active replica get
/// SIGTERM while a new replica waits. A standby told to stop leaves at once, without winning the
/// election on its way out (it would hold it, serving nothing, while the lock leases expire), and
/// the new replica takes over with no holder or token change.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_of_the_controller_changes_no_holder_and_no_token() {
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("controller-rollout");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, ROOT, &[]).await;
    ready_pods(&c, &ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    let start = || ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    let old_active = start();
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n",
        ),
    );
    let ledger = elected(&c, &ns, "payments", "ledger", 2).await;
    let old_standby = start();
    let new = start();
    eventually("both new replicas to serve as standbys", Duration::from_secs(30), || async {
        [&old_standby, &new].iter().all(|r| r.http_get("/readyz").as_deref() == Some("ok: standby\n")).then_some(())
    })
    .await;
    let keys = candidate_keys(&etcd, &ns);
    let log = old_standby.log.clone();
    old_standby.terminate(); // waits for the exit: a standby stuck in the election never exits
    let standby_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!standby_log.contains("active: this replica reconciles"), "the stopping standby became active:\n{standby_log}");
    old_active.terminate();
    eventually("the new replica to become active", Duration::from_secs(30), || async { new.is_active().then_some(()) }).await;
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await, ledger);
    assert_eq!(candidate_keys(&etcd, &ns), keys, "candidate keys changed across the rollout");
    checker.assert_clean();
}
