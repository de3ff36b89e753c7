//! Node loss judged from node Leases (docs/contract.md §3.2), against the real apiserver: the
//! test plays two kubelets' Lease renewals in kube-node-lease (the e2e run proves it with real
//! kubelets on two real nodes). Own controller with `--node-lost-after 3s`; one test at a time.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::checker::{Checker, wait_converged};
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn revision(endpoint: &str) -> i64 {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LL: &str = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n";

/// A played kubelet's node Lease: renewed every 500 ms while `renewing` (a real one renews
/// every 10 s; the controller only looks at whether it changed).
struct PlayedNode {
    name: String,
    renewing: Arc<AtomicBool>,
    renewals: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PlayedNode {
    async fn start(c: &kube::Client, name: &str) -> PlayedNode {
        let api: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": MicroTime(jiff::Timestamp::now())},
        }))
        .unwrap();
        api.create(&PostParams::default(), &lease).await.unwrap();
        let (renewing, renewals) = (Arc::new(AtomicBool::new(true)), Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let (r, n, node) = (renewing.clone(), renewals.clone(), name.to_string());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if r.load(Ordering::SeqCst) {
                    let patch = json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                    if api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        PlayedNode { name: name.to_string(), renewing, renewals, task }
    }

    async fn renewals_after(&self, n: u64) {
        let count = self.renewals.clone();
        let start = count.load(Ordering::SeqCst);
        eventually("Lease renewals", Duration::from_secs(10), || {
            let count = count.clone();
            async move { (count.load(Ordering::SeqCst) >= start + n).then_some(()) }
        })
        .await;
    }
}

impl Drop for PlayedNode {
    fn drop(&mut self) {
        self.task.abort();
        let _ = kubectl(&["delete", "lease", "-n", "kube-node-lease", &self.name, "--ignore-not-found"], None);
    }
}

/// A pod scheduled to `node` that no kubelet runs; the test marks it Ready.
async fn pod_on(c: &kube::Client, ns: &str, name: &str, node: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "worker"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
    set_ready(c, ns, name, true).await;
}

fn node_lost(ll: &leaderlock::resource::LeaderLock) -> Option<(String, String, String)> {
    let c = ll.status.as_ref()?.conditions.iter().find(|c| c.type_ == "NodeLost")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pod_of_a_silent_node_stops_being_a_candidate_at_once_and_returns_when_it_renews() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("node-loss");
    let c = client().await;
    let (a, b) = (PlayedNode::start(&c, &format!("{ns}-a")).await, PlayedNode::start(&c, &format!("{ns}-b")).await);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let _ctl = ControllerProcess::start(&["--etcd-endpoints", &etcd.endpoint(), "--node-lost-after", "3s"]);
    // The two oldest pods share node b: under Queue the lock goes to 1-b, then 2-b is next (names sort as they are created).
    pod_on(&c, &ns, "1-b", &b.name).await;
    pod_on(&c, &ns, "2-b", &b.name).await;
    pod_on(&c, &ns, "3-a", &a.name).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 3).await;
    assert_eq!(holder, "1-b");

    // Renewals change no verdict: once converged (the holder's resync written), nothing is
    // written, to etcd or to the apiserver.
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(15)).await.expect("converged");
    let pods = pod_versions(&c, &ns).await;
    let ll_version = leaderlock(&c, &ns, "payments").await.metadata.resource_version;
    let etcd_revision = revision(&etcd.endpoint()).await;
    b.renewals_after(4).await;
    assert_eq!(pod_versions(&c, &ns).await, pods, "a Lease renewal wrote a pod");
    assert_eq!(leaderlock(&c, &ns, "payments").await.metadata.resource_version, ll_version, "a Lease renewal wrote the status");
    assert_eq!(revision(&etcd.endpoint()).await, etcd_revision, "a Lease renewal wrote etcd");

    // Node b stops renewing: after 3 s both of its pods stop being candidates together, so the
    // lock goes straight to 3-a (one transition), never to 2-b.
    let stopped = Instant::now();
    b.renewing.store(false, Ordering::SeqCst);
    let (next, next_token) = elected(&c, &ns, "payments", "ledger", 1).await;
    let took = stopped.elapsed();
    assert_eq!(next, "3-a");
    assert!(next_token > token);
    assert!(took >= Duration::from_secs(3), "judged lost after {took:?}, before the 3 s threshold");
    let ll = leaderlock(&c, &ns, "payments").await;
    assert_eq!(ll.status.as_ref().unwrap().locks[0].transitions, 2, "the lock went through another holder: {:?}", ll.status);
    let (state, reason, message) = node_lost(&ll).expect("a NodeLost condition");
    assert_eq!((state.as_str(), reason.as_str()), ("True", "NodeLost"));
    assert!(message.contains(&format!("{} (pods 1-b, 2-b)", b.name)), "{message}");
    let events = kubectl_ok(&["get", "events", "-n", &ns, "-o", "jsonpath={range .items[*]}{.reason}/{.type}{\"\\n\"}{end}"], None);
    assert!(events.lines().any(|l| l == "NodeLost/Warning"), "a NodeLost Warning Event: {events}");
    assert!(!roles(&c, &ns, "ledger").await.contains_key("2-b"), "2-b on the lost node carries no role");

    // Node b renews again: trusted again, its pods are candidates, the holder stays.
    b.renewing.store(true, Ordering::SeqCst);
    let (again, _) = elected(&c, &ns, "payments", "ledger", 3).await;
    assert_eq!(again, "3-a");
    let (state, reason, _) = eventually("NodeLost=False", Duration::from_secs(10), || async {
        node_lost(&leaderlock(&c, &ns, "payments").await).filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!((state.as_str(), reason.as_str()), ("False", "NodesRenewing"));
    checker.assert_clean();
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaderlock_may_turn_node_loss_off_and_a_node_without_lease_is_judged_by_readiness() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("node-loss-off");
    let c = client().await;
    let (a, b) = (PlayedNode::start(&c, &format!("{ns}-a")).await, PlayedNode::start(&c, &format!("{ns}-b")).await);
    let _ctl = ControllerProcess::start(&["--etcd-endpoints", &etcd.endpoint(), "--node-lost-after", "3s"]);
    pod_on(&c, &ns, "1-b", &b.name).await;
    pod_on(&c, &ns, "2-a", &a.name).await;
    pod_on(&c, &ns, "3-x", &format!("{ns}-no-lease")).await;
    let off = LL.replace("spec:\n", "spec:\n  nodeLostAfterSeconds: 0\n");
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&off));
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await.0, "1-b");
    b.renewing.store(false, Ordering::SeqCst);
    // Silent for twice the controller's threshold, and still leading: this LeaderLock said 0.
    a.renewals_after(12).await;
    assert_eq!(status_holder(&c, &ns, "payments", "ledger").await.map(|h| h.0).as_deref(), Some("1-b"));
    assert!(node_lost(&leaderlock(&c, &ns, "payments").await).is_none());

    // With the controller's threshold, b is lost; x-1's node has no Lease, which the status says.
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    let (state, reason, message) = eventually("NodeLost=True", Duration::from_secs(15), || async {
        node_lost(&leaderlock(&c, &ns, "payments").await).filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!((state.as_str(), reason.as_str()), ("True", "NodeLost"), "{message}");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await.0, "2-a", "the next in line");
    b.renewing.store(true, Ordering::SeqCst);
    let (state, reason, message) = eventually("NodeLost=Unknown", Duration::from_secs(15), || async {
        node_lost(&leaderlock(&c, &ns, "payments").await).filter(|(s, _, _)| s == "Unknown")
    })
    .await;
    assert_eq!((state.as_str(), reason.as_str()), ("Unknown", "NoNodeLease"));
    assert!(message.contains(&format!("{ns}-no-lease")), "{message}");
    let _ = Api::<Pod>::namespaced(c.clone(), &ns).delete("3-x", &DeleteParams::default().grace_period(0)).await;
}

/// The opt-in renewal (docs/contract.md §3.1): the leader's `leaderlock.dev/roles.renewed` mark
/// changes every third of `renewDeadlineSeconds` and nowhere else; turned off, it is removed
/// and the writes stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_leader_gets_a_new_mark_every_third_of_the_deadline_and_none_once_off() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("renewal");
    let c = client().await;
    let a = PlayedNode::start(&c, &format!("{ns}-a")).await;
    let _ctl = ControllerProcess::start(&["--etcd-endpoints", &etcd.endpoint()]);
    pod_on(&c, &ns, "1-a", &a.name).await;
    pod_on(&c, &ns, "2-a", &a.name).await;
    let renewed = LL.replace("spec:\n", "spec:\n  renewDeadlineSeconds: 3\n");
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&renewed));
    let (holder, _) = elected(&c, &ns, "payments", "ledger", 2).await;
    let key = "leaderlock.dev/roles.renewed";
    // Collect the marks the holder shows for 4 s: a new one about every second.
    let mut marks: Vec<(Instant, String)> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        if let Some(v) = annotations(&c, &ns, &holder).await.get(key).cloned()
            && marks.last().is_none_or(|(_, last)| *last != v)
        {
            marks.push((Instant::now(), v));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((3..=6).contains(&marks.len()), "one mark a second for 4 s: {marks:?}");
    assert!(marks.iter().all(|(_, v)| v.starts_with("3s ")), "{marks:?}");
    for pair in marks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(700) && gap <= Duration::from_millis(2500), "marks {gap:?} apart: {marks:?}");
    }
    let standby = if holder == "1-a" { "2-a" } else { "1-a" };
    assert!(!annotations(&c, &ns, standby).await.contains_key(key), "a standby carries no mark");

    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    eventually("the mark removed", Duration::from_secs(10), || async {
        (!annotations(&c, &ns, &holder).await.contains_key(key)).then_some(())
    })
    .await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(15)).await.expect("converged");
    let versions = pod_versions(&c, &ns).await;
    a.renewals_after(6).await; // 3 s: three renewal periods of the old setting
    assert_eq!(pod_versions(&c, &ns).await, versions, "renewal off: no more pod writes");
}
