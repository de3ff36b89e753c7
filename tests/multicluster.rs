//! Several clusters on one lock etcd (docs/contract.md §4, §5): a root registered to one cluster
//! is served by no other, and clusters sharing a lock under an allowed prefix never delete each
//! other's keys and elect one leader between them.
//!
//! Each "cluster" is a controller with its own --cluster-id watching its own namespace of the
//! test apiserver: to etcd — the only place the clusters meet — that is two clusters.
mod common;

use std::time::Duration;

use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use etcd_client::{EventType, WatchOptions};

/// Serialises the tests of this binary: each owns its controllers and lock etcd.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn revision(endpoint: &str) -> i64 {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

/// Every write (put or delete) to etcd within `window` after `from`, as (key, deleted, value of
/// the deleted key's last version). Waits on a watch: returns early on nothing.
async fn writes_within(endpoint: &str, from: i64, window: Duration) -> Vec<(String, bool, String)> {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let opts = WatchOptions::new().with_prefix().with_start_revision(from + 1).with_prev_key();
    let mut stream = c.watch("/", Some(opts)).await.unwrap();
    let mut writes = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(Some(resp))) = tokio::time::timeout_at(deadline, stream.message()).await {
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            let prev = ev.prev_kv().map(|p| String::from_utf8_lossy(p.value()).into_owned()).unwrap_or_default();
            writes.push((String::from_utf8_lossy(kv.key()).into_owned(), ev.event_type() == EventType::Delete, prev));
        }
    }
    writes
}

fn leaderlock_yaml(etcd_key: Option<&str>) -> String {
    let key = etcd_key.map(|k| format!(", etcdKey: {k}")).unwrap_or_default();
    format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: jobs}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  locks: [{{name: job{key}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_finding_its_root_registered_to_another_cluster_serves_nothing_and_says_why() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let c = client().await;
    let (east_ns, west_ns) = (namespace("multi-root-east"), namespace("multi-root-west"));
    for ns in [&east_ns, &west_ns] {
        ready_pods(&c, ns, &["w-1", "w-2"], &[("app", "worker")]).await;
        kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&leaderlock_yaml(None)));
    }
    let _east = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &east_ns, "--cluster-id", "east"]);
    elected(&c, &east_ns, "jobs", "job", 2).await;
    let before = revision(&endpoint).await;

    let west = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &west_ns, "--cluster-id", "west"]);
    let message = eventually("west's LeaderLock to say the root is another cluster's", Duration::from_secs(30), || async {
        let st = leaderlock(&c, &west_ns, "jobs").await.status?;
        let ready = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "RootOwnedByOtherCluster").then_some(ready.message)
    })
    .await;
    for part in ["cluster east", "cluster west", "--etcd-prefix", "/leaderlock.dev/"] {
        assert!(message.contains(part), "{part:?} missing from the condition: {message}");
    }
    let readyz = west.http_get("/readyz").unwrap();
    assert!(readyz.starts_with("not ready:") && readyz.contains("cluster east"), "/readyz: {readyz}");
    let log = std::fs::read_to_string(&west.log).unwrap();
    assert!(log.contains("registered to cluster east"), "the log says why");
    assert!(roles(&c, &west_ns, "job").await.is_empty(), "west's pods got a role from a root it does not serve");

    // Neither the refusing controller nor the idle serving one wrote anything to etcd.
    let writes = writes_within(&endpoint, before, Duration::from_secs(3)).await;
    assert!(writes.is_empty(), "etcd writes after the second cluster's controller started: {writes:?}");
    let ll = leaderlock(&c, &west_ns, "jobs").await;
    let version = ll.metadata.resource_version.clone();
    drop(west);
    let _west_again = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &west_ns, "--cluster-id", "west"]);
    wait_until("the restarted refusing controller to log its refusal", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&_west_again.log).unwrap_or_default();
        log.contains("registered to cluster east").then_some(())
    });
    assert_eq!(leaderlock(&c, &west_ns, "jobs").await.metadata.resource_version, version, "an already refused LeaderLock was rewritten");
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_sharing_a_lock_never_delete_each_others_keys_and_elect_one_leader() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let c = client().await;
    let (east_ns, west_ns) = (namespace("multi-shared-east"), namespace("multi-shared-west"));
    let shared = format!("/shared-{}/job", std::process::id());
    let allowed = format!("/shared-{}/", std::process::id());
    ready_pods(&c, &east_ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &east_ns, "-f", "-"], Some(&leaderlock_yaml(Some(&shared))));
    let start = |ns: &str, id: &str, root: &str| {
        ControllerProcess::start(&[
            "--etcd-endpoints",
            &endpoint,
            "--namespace",
            ns,
            "--cluster-id",
            id,
            "--etcd-prefix",
            root,
            "--allowed-key-prefix",
            &allowed,
        ])
    };
    let _east = start(&east_ns, "east", "/east/");
    let (east_leader, east_token) = elected(&c, &east_ns, "jobs", "job", 2).await;
    let _west = start(&west_ns, "west", "/west/");
    ready_pods(&c, &west_ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &west_ns, "-f", "-"], Some(&leaderlock_yaml(Some(&shared))));

    // West queues behind east's holder: every west pod standby, its status names east's pod.
    let foreign = format!("east/{east_ns}/{east_leader}");
    eventually("west to report east's holder", Duration::from_secs(30), || async {
        let (holder, token) = status_holder(&c, &west_ns, "jobs", "job").await?;
        let roles = roles(&c, &west_ns, "job").await;
        (holder == foreign && token == east_token && roles.len() == 2 && roles.values().all(|r| r == "standby")).then_some(())
    })
    .await;
    assert_eq!(elected(&c, &east_ns, "jobs", "job", 2).await, (east_leader.clone(), east_token), "east kept its holder");

    // Idle: not one write from either cluster, in particular no key of one deleted by the other.
    let idle_from = revision(&endpoint).await;
    let writes = writes_within(&endpoint, idle_from, Duration::from_secs(3)).await;
    assert!(writes.is_empty(), "etcd writes while both clusters idle: {writes:?}");

    // Failover across clusters: east's pods go; a west pod takes over with a larger token, and
    // the only keys deleted are east's own.
    let from = revision(&endpoint).await;
    for pod in ["w-1", "w-2"] {
        delete_pod(&c, &east_ns, pod).await;
    }
    let (west_leader, west_token) = elected(&c, &west_ns, "jobs", "job", 2).await;
    assert!(west_token > east_token, "the fencing token went from {east_token} to {west_token}");
    let writes = writes_within(&endpoint, from, Duration::from_secs(1)).await;
    let deleted: Vec<&(String, bool, String)> = writes.iter().filter(|(k, del, _)| *del && k.starts_with(&allowed)).collect();
    assert_eq!(deleted.len(), 2, "east's two keys go: {writes:?}");
    assert!(deleted.iter().all(|(_, _, v)| v.starts_with("leaderlock@east:")), "a key of west was deleted: {deleted:?}");

    // And back: east's new pods queue behind west's holder.
    ready_pods(&c, &east_ns, &["w-3"], &[("app", "worker")]).await;
    let foreign = format!("west/{west_ns}/{west_leader}");
    eventually("east to report west's holder", Duration::from_secs(30), || async {
        let (holder, _) = status_holder(&c, &east_ns, "jobs", "job").await?;
        (holder == foreign && roles(&c, &east_ns, "job").await.get("w-3").is_some_and(|r| r == "standby")).then_some(())
    })
    .await;
}
