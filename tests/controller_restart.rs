//! Tests that own their controller and lock etcd (restarts, outages): restart safety (docs/contract.md §4)
//! and deletion while etcd is down. They run one at a time: two controllers would both
//! reconcile every LeaderLock.
mod common;

use std::time::Duration;

use common::checker::{Checker, wait_converged};
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use kube::ResourceExt;
use kube::api::Api;

async fn revision(endpoint: &str) -> i64 {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

/// Keys written (put or deleted) after `revision`, read back through a watch from there.
async fn keys_written_since(endpoint: &str, revision: i64) -> Vec<String> {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let now = c.get("/", None).await.unwrap().header().unwrap().revision();
    let mut keys = Vec::new();
    if now == revision {
        return keys;
    }
    let opts = etcd_client::WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = c.watch("/", Some(opts)).await.unwrap();
    while let Some(resp) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap() {
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            keys.push(String::from_utf8_lossy(kv.key()).into_owned());
            if kv.mod_revision() >= now {
                return keys;
            }
        }
    }
    keys
}

/// Waits until the controller's log shows a reconcile of `ll` that changed nothing.
fn wait_reconciled(ctl: &ControllerProcess, ll: &str) {
    wait_until("the restarted controller to reconcile", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        log.lines().any(|l| l.contains("reconciled") && l.contains(&format!("leaderlock={ll}"))).then_some(())
    });
}

/// Serialises the tests of this binary.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_restart_changes_no_holder_and_writes_no_lock_key_pod_or_status() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("controller-restart");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, ROOT, &[]).await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], &[("app", "worker")]).await;
    let first = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}, {name: report}]\n",
        ),
    );
    let ledger = elected(&c, &ns, "payments", "ledger", 3).await;
    let report = elected(&c, &ns, "payments", "report", 3).await;
    // Settled, resyncs included: a restart right after a change writes the pending resync.
    wait_converged(&c, &ns, &endpoint, ROOT, None, Duration::from_secs(30)).await.unwrap();
    let ll_version = leaderlock(&c, &ns, "payments").await.resource_version();
    let (etcd_before, pods_before) = (revision(&endpoint).await, pod_versions(&c, &ns).await);

    first.kill(); // SIGKILL: no cleanup, leases stay
    let second = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    wait_reconciled(&second, "payments");
    // The only etcd writes of a restart are the replica election's: the new replica's key and
    // the dead one's expiry. No lock key, no lease record is touched.
    let written = keys_written_since(&endpoint, etcd_before).await;
    assert!(written.iter().all(|k| k.starts_with("/leaderlock.dev/controller/")), "the restart wrote lock keys: {written:?}");
    assert_eq!(pod_versions(&c, &ns).await, pods_before, "the restart rewrote pods");
    assert_eq!(leaderlock(&c, &ns, "payments").await.resource_version(), ll_version, "the restart rewrote status");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await, ledger);
    assert_eq!(elected(&c, &ns, "payments", "report", 3).await, report);

    // Changes while the controller is down are picked up by the next one.
    second.kill();
    delete_pod(&c, &ns, &ledger.0).await;
    let _third = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &ns]);
    let (new, token) = elected(&c, &ns, "payments", "ledger", 2).await;
    assert!(new != ledger.0 && token > ledger.1);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_leaderlock_while_etcd_is_down_reports_it_and_completes_when_etcd_returns() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let mut etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("delete-etcd-down");
    let c = client().await;
    ready_pods(&c, &ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    let _ctl = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--etcd-timeout", "1s", "--namespace", &ns]);
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n",
        ),
    );
    elected(&c, &ns, "payments", "ledger", 2).await;

    etcd.kill();
    kubectl_ok(&["delete", "ll", "payments", "-n", &ns, "--wait=false"], None);
    let message = eventually("an EtcdUnavailable condition", Duration::from_secs(60), || async {
        let st = Api::<leaderlock::resource::LeaderLock>::namespaced(c.clone(), &ns).get_opt("payments").await.ok()??.status?;
        st.conditions.into_iter().find(|c| c.reason == "EtcdUnavailable").map(|c| c.message)
    })
    .await;
    assert!(message.contains("retrying"), "{message}");
    assert!(annotations(&c, &ns, "w-1").await.is_empty() && annotations(&c, &ns, "w-2").await.is_empty(), "pods are demoted first");

    etcd.restart();
    eventually("the LeaderLock to be gone", Duration::from_secs(60), || async {
        Api::<leaderlock::resource::LeaderLock>::namespaced(c.clone(), &ns).get_opt("payments").await.unwrap().is_none().then_some(())
    })
    .await;
    let keys = etcd.keys_under(&format!("{ROOT}locks/{ns}/"));
    assert!(keys.is_empty(), "candidate keys left in etcd: {keys:?}");
}

/// Creates a step-down Handover of lock `ledger` and sets its status as a controller that
/// accepted it (holder `from` with `token`) and then died would have left it.
fn accepted_step_down(ns: &str, name: &str, from: &str, token: i64) {
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: Handover\nmetadata: {{name: {name}}}\nspec: {{leaderLock: payments, lock: ledger}}\n"
    );
    kubectl_ok(&["create", "-n", ns, "-f", "-"], Some(&yaml));
    let status = format!(r#"{{"status":{{"phase":"Pending","from":"{from}","fromToken":"{token}"}}}}"#);
    kubectl_ok(&["patch", "-n", ns, "handover", name, "--subresource=status", "--type=merge", "-p", &status], None);
}

/// The final status of Handover `name`.
async fn handover_done(c: &kube::Client, ns: &str, name: &str) -> leaderlock::resource::handover::HandoverStatus {
    let api: Api<leaderlock::resource::handover::Handover> = Api::namespaced(c.clone(), ns);
    eventually(&format!("Handover {name} to be final"), Duration::from_secs(30), || async {
        let s = api.get(name).await.ok()?.status?;
        s.phase.is_some_and(|p| p.is_final()).then_some(s)
    })
    .await
}

/// Issue 15: a request the controller accepted and then died on is finished by the next
/// controller exactly once — moved if the move was not made, marked done (nothing moved again)
/// if it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_handover_half_carried_out_before_a_restart_is_finished_once_never_repeated() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let ns = namespace("handover-restart");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, ROOT, &[]).await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], &[("app", "worker")]).await;
    let args = ["--etcd-endpoints", endpoint.as_str(), "--namespace", ns.as_str()];
    let first = ControllerProcess::start(&args);
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n",
        ),
    );
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 3).await;
    let next = leaderlock(&c, &ns, "payments").await.status.unwrap().locks[0].queue[1].clone();

    // Accepted, then the controller died before the move: the next one makes it, once.
    first.kill();
    accepted_step_down(&ns, "accepted", &holder, token);
    let second = ControllerProcess::start(&args);
    let s = handover_done(&c, &ns, "accepted").await;
    assert_eq!((s.reason.as_deref(), s.holder.as_deref()), (Some("HandedOver"), Some(next.as_str())), "{s:?}");
    let (moved, moved_token) = elected(&c, &ns, "payments", "ledger", 3).await;
    assert!(moved == next && moved_token > token);
    let transitions = leaderlock(&c, &ns, "payments").await.status.unwrap().locks[0].transitions;

    // Moved, then the controller died before marking it done: the next one only marks it.
    second.kill();
    accepted_step_down(&ns, "moved", &holder, token);
    let before = revision(&endpoint).await;
    let _third = ControllerProcess::start(&args);
    let s = handover_done(&c, &ns, "moved").await;
    assert_eq!((s.reason.as_deref(), s.holder.as_deref()), (Some("HandedOver"), Some(moved.as_str())), "{s:?}");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await, (moved, moved_token), "stepped down twice");
    let written = keys_written_since(&endpoint, before).await;
    assert!(written.iter().all(|k| k.starts_with("/leaderlock.dev/controller/")), "the lock was moved again: {written:?}");
    assert_eq!(leaderlock(&c, &ns, "payments").await.status.unwrap().locks[0].transitions, transitions);
    checker.assert_clean();
}
