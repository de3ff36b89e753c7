//! Several clusters on one lock etcd (docs/contract.md §4, §5): a root registered to one cluster
//! is served by no other, and clusters sharing a lock under an allowed prefix never delete each
//! other's keys and elect one leader between them.
//!
//! The refusal runs two real clusters: a second kube-apiserver (`hack/cluster.sh
//! second-apiserver`) with its own `kube-system` UID, each controller with the default identity.
//! The shared-lock test plays each cluster with a controller with its own --cluster-id watching
//! its own namespace of one apiserver: to etcd — the only place clusters meet — that is two.
mod common;

use std::time::Duration;

use common::checker::{Checker, Cluster};
use common::clusters::{client_of, second_cluster};
use common::etcd::{EtcdServer, TcpProxy};
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
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: jobs}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  ttlSeconds: 5\n  locks: [{{name: job{key}}}]\n"
    )
}

fn kube_system_uid(kubeconfig: &str) -> String {
    kubectl_ok(&["--kubeconfig", kubeconfig, "get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}"], None)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_finding_its_root_registered_to_another_cluster_serves_nothing_and_says_why() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let second = second_cluster();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let (east_uid, west_uid) = (kube_system_uid(&env("KUBECONFIG")), kube_system_uid(&second));
    assert_ne!(east_uid, west_uid, "two clusters, two identities");
    let (east, west) = (client().await, client_of(&second).await);
    let east_ns = namespace("multi-root");
    let west_ns = east_ns.clone(); // the same name in another cluster
    kubectl_ok(&["--kubeconfig", &second, "create", "namespace", &west_ns], None);
    for (c, kubeconfig, ns) in [(&east, env("KUBECONFIG"), &east_ns), (&west, second.clone(), &west_ns)] {
        ready_pods(c, ns, &["w-1", "w-2"], &[("app", "worker")]).await;
        kubectl_ok(&["--kubeconfig", &kubeconfig, "apply", "-n", ns, "-f", "-"], Some(&leaderlock_yaml(None)));
    }
    // Both with the defaults: the same root, identities from each cluster's kube-system UID.
    let _east_ctl = ControllerProcess::start(&["--etcd-endpoints", &endpoint, "--namespace", &east_ns]);
    let east_holder = elected(&east, &east_ns, "jobs", "job", 2).await;
    let before = revision(&endpoint).await;

    let west_args = ["--etcd-endpoints", endpoint.as_str(), "--namespace", west_ns.as_str()];
    let west_ctl = ControllerProcess::start_with_env(&west_args, &[("KUBECONFIG", &second)]);
    let message = eventually("west's LeaderLock to say the root is another cluster's", Duration::from_secs(30), || async {
        let st = leaderlock(&west, &west_ns, "jobs").await.status?;
        let ready = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "RootOwnedByOtherCluster").then_some(ready.message)
    })
    .await;
    for part in [&format!("cluster {east_uid}"), &format!("cluster {west_uid}"), "--etcd-prefix", "--cluster-id", "/leaderlock.dev/"] {
        assert!(message.contains(part), "{part:?} missing from the condition: {message}");
    }
    let readyz = west_ctl.http_get("/readyz").unwrap();
    assert!(readyz.starts_with("not ready:") && readyz.contains(&east_uid), "/readyz: {readyz}");
    let log = std::fs::read_to_string(&west_ctl.log).unwrap();
    assert!(log.contains(&format!("registered to cluster {east_uid}")), "the log says why");
    assert!(roles(&west, &west_ns, "job").await.is_empty(), "west's pods got a role from a root it does not serve");

    // Neither the refusing controller nor the idle serving one wrote anything to etcd.
    let writes = writes_within(&endpoint, before, Duration::from_secs(3)).await;
    assert!(writes.is_empty(), "etcd writes after the second cluster's controller started: {writes:?}");
    let version = leaderlock(&west, &west_ns, "jobs").await.metadata.resource_version;
    drop(west_ctl);
    let again = ControllerProcess::start_with_env(&west_args, &[("KUBECONFIG", &second)]);
    wait_until("the restarted refusing controller to log its refusal", Duration::from_secs(30), || {
        std::fs::read_to_string(&again.log).unwrap_or_default().contains("registered to cluster").then_some(())
    });
    assert_eq!(leaderlock(&west, &west_ns, "jobs").await.metadata.resource_version, version, "an already refused LeaderLock was rewritten");
    assert_eq!(elected(&east, &east_ns, "jobs", "job", 2).await, east_holder, "the serving cluster kept its holder");
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
    let checker = shared_lock_checker(&c, &c, [&east_ns, &west_ns], &endpoint, &allowed).await;
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

    // Failover across clusters: east's pods stop being Ready; east demotes its holder before its
    // keys go, a west pod takes over with a larger token, and the only keys deleted are east's.
    // The checker judges "one leader in both clusters" and the token in commit order.
    let from = revision(&endpoint).await;
    for pod in ["w-1", "w-2"] {
        set_ready(&c, &east_ns, pod, false).await;
    }
    let (west_leader, west_token) = elected(&c, &west_ns, "jobs", "job", 2).await;
    assert!(west_token > east_token, "the fencing token went from {east_token} to {west_token}");
    checker.settle().await;
    assert_eq!(checker.leader_in("job"), Some((1, west_leader.clone())), "the checker did not see west's holder lead");
    checker.assert_clean();
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
    checker.settle().await;
    let s = checker.summary();
    assert!(s.causeless.is_empty(), "holder changes without a cause: {:?}", s.causeless);
    assert!(s.transitions >= 2, "the checker saw no handover from east to west: {s:?}");
    checker.assert_clean();
}

/// The checker of two clusters sharing the lock `job` under `allowed` (`/east/` and `/west/`
/// roots, ids `east` and `west`), watching `namespaces` through `east` and `west`.
async fn shared_lock_checker(east: &kube::Client, west: &kube::Client, namespaces: [&str; 2], endpoint: &str, allowed: &str) -> Checker {
    let cluster = |client: &kube::Client, ns: &str, id: &str| Cluster {
        client: client.clone(),
        ns: ns.to_string(),
        root: format!("/{id}/"),
        id: Some(id.to_string()),
    };
    let clusters = vec![cluster(east, namespaces[0], "east"), cluster(west, namespaces[1], "west")];
    let checker = Checker::across(clusters, endpoint, &[allowed]).await;
    checker.map_lock("job", &format!("{allowed}job"));
    checker
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_cut_off_from_etcd_longer_than_the_ttl_hands_the_shared_lock_to_the_other() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let mut proxy = TcpProxy::start(etcd.client_port).await;
    let c = client().await;
    let (east_ns, west_ns) = (namespace("multi-cut-east"), namespace("multi-cut-west"));
    let allowed = format!("/shared-cut-{}/", std::process::id());
    let shared = format!("{allowed}job");
    let checker = shared_lock_checker(&c, &c, [&east_ns, &west_ns], &endpoint, &allowed).await;
    let args = |ns: &str, id: &str, root: &str, etcd: &str| {
        let args = ["--etcd-endpoints", etcd, "--etcd-timeout", "1s", "--namespace", ns, "--cluster-id", id];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--etcd-prefix".into(), root.into(), "--allowed-key-prefix".into(), allowed.clone()]);
        args
    };
    let start = |args: &[String]| ControllerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let east_args = args(&east_ns, "east", "/east/", &proxy.endpoint());
    ready_pods(&c, &east_ns, &["w-1"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &east_ns, "-f", "-"], Some(&leaderlock_yaml(Some(&shared))));
    let east = start(&east_args);
    let (_, east_token) = elected(&c, &east_ns, "jobs", "job", 1).await;
    let _west = start(&args(&west_ns, "west", "/west/", &endpoint));
    ready_pods(&c, &west_ns, &["w-1", "w-2"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &west_ns, "-f", "-"], Some(&leaderlock_yaml(Some(&shared))));
    eventually("west to queue behind east", Duration::from_secs(30), || async {
        let roles = roles(&c, &west_ns, "job").await;
        (roles.len() == 2 && roles.values().all(|r| r == "standby")).then_some(())
    })
    .await;

    // East's controller loses etcd: it demotes its pod before its lock lease can expire; then
    // etcd deletes east's key and a west pod holds with a larger token. Across both clusters,
    // never two pods annotated leader at once.
    wait_until("the checker to see east's holder", Duration::from_secs(10), || {
        (checker.leader_in("job")? == (0, "w-1".into())).then_some(())
    });
    proxy.cut();
    let (west_leader, west_token) = elected(&c, &west_ns, "jobs", "job", 2).await;
    assert!(west_token > east_token, "the fencing token went from {east_token} to {west_token}");
    checker.settle().await;
    checker.assert_clean();
    assert_eq!(roles(&c, &east_ns, "job").await.get("w-1").map(String::as_str), Some("standby"), "east's pod still leads");

    // When east reaches etcd again (its controller exited on losing its election lease; a new
    // one starts), its pod stays standby and the status names west's holder.
    proxy.restore().await;
    drop(east);
    let _east = start(&east_args);
    let foreign = format!("west/{west_ns}/{west_leader}");
    eventually("east to report west's holder", Duration::from_secs(30), || async {
        let (holder, token) = status_holder(&c, &east_ns, "jobs", "job").await?;
        let roles = roles(&c, &east_ns, "job").await;
        (holder == foreign && token == west_token && roles.get("w-1").is_some_and(|r| r == "standby")).then_some(())
    })
    .await;
    assert_eq!(elected(&c, &west_ns, "jobs", "job", 2).await, (west_leader, west_token), "west kept the lock");
    checker.settle().await;
    let s = checker.summary();
    // East's expired key is the fault's own holder change (the checker may also take east's pod
    // creation, just before its key, for the cause).
    assert!(s.causeless.len() <= 1, "holder changes without a cause besides east's expired key: {:?}", s.causeless);
    checker.assert_clean();
}

/// Every key under `prefix` in the lock etcd with its create revision, read directly (not
/// through the test's proxy).
async fn keys_with_prefix(endpoint: &str, prefix: &str) -> Vec<(String, i64)> {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let resp = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision())).collect()
}

/// A lock etcd reached through a proxy a test can cut, one Ready worker pod and a `jobs`
/// LeaderLock with `ttl_seconds`, in namespace `multi-cut-NAME` under root `/NAME-<pid>/`.
/// Bind every field: one left to `..` would be dropped at once (etcd stopped, tests unserialised).
struct CutStage {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    etcd: EtcdServer,
    proxy: TcpProxy,
    c: kube::Client,
    ns: String,
    root: String,
}

async fn cut_stage(name: &str, ttl_seconds: u32) -> CutStage {
    let serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(etcd.client_port).await;
    let c = client().await;
    let ns = namespace(&format!("multi-cut-{name}"));
    let root = format!("/{name}-{}/", std::process::id());
    ready_pods(&c, &ns, &["w-1"], &[("app", "worker")]).await;
    let yaml = leaderlock_yaml(None).replace("ttlSeconds: 5", &format!("ttlSeconds: {ttl_seconds}"));
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&yaml));
    CutStage { _serial: serial, etcd, proxy, c, ns, root }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_cut_off_from_etcd_demotes_its_holder_before_the_lock_lease_can_expire() {
    let CutStage { _serial, etcd, mut proxy, c, ns, root } = cut_stage("alone", 5).await;
    let endpoint = etcd.endpoint();
    let proxied = proxy.endpoint();
    let args = ["--etcd-endpoints", &proxied, "--etcd-timeout", "1s", "--namespace", &ns, "--etcd-prefix", &root, "--cluster-id", "alone"];
    let ctl = ControllerProcess::start(&args);
    let (leader, _) = elected(&c, &ns, "jobs", "job", 1).await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, &root, &[]).await;
    let lock_keys = format!("{root}locks/{ns}/job/");
    assert_eq!(keys_with_prefix(&endpoint, &lock_keys).await.len(), 1, "the holder's key");

    // Cut for longer than ttlSeconds (5 s): the pod is demoted while its key still exists,
    // that is before etcd expired the lease it lives on.
    proxy.cut();
    eventually("the cut-off controller to demote its holder", Duration::from_secs(30), || async {
        (roles(&c, &ns, "job").await.get(&leader)? == "standby").then_some(())
    })
    .await;
    let keys = keys_with_prefix(&endpoint, &lock_keys).await;
    assert_eq!(keys.len(), 1, "the holder was demoted only after its lease expired");
    assert!(!annotations(&c, &ns, &leader).await.contains_key("leaderlock.dev/job.token"), "the demoted pod kept its token");
    eventually("etcd to expire the unrenewed lease", Duration::from_secs(30), || async {
        keys_with_prefix(&endpoint, &lock_keys).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(roles(&c, &ns, "job").await.get(&leader).map(String::as_str), Some("standby"), "promoted again while cut off");
    checker.settle().await;
    checker.assert_clean();
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_replica_that_reaches_etcd_takes_over_the_cut_off_one_with_no_holder_change() {
    // A TTL well above the election's, as advised: the standby adopts the lease in time.
    let CutStage { _serial, etcd, mut proxy, c, ns, root } = cut_stage("replica", 10).await;
    let endpoint = etcd.endpoint();
    let replica = |etcd: &str| {
        ControllerProcess::start(&[
            "--etcd-endpoints",
            etcd,
            "--etcd-timeout",
            "1s",
            "--namespace",
            &ns,
            "--etcd-prefix",
            &root,
            "--cluster-id",
            "one",
        ])
    };
    let cut_off = replica(&proxy.endpoint());
    let (leader, token) = elected(&c, &ns, "jobs", "job", 1).await;
    let standby = replica(&endpoint);
    eventually("the second replica to stand by", Duration::from_secs(30), || async {
        (standby.http_get("/readyz").as_deref() == Some("ok: standby\n")).then_some(())
    })
    .await;
    let checker = Checker::start(c.clone(), &ns, &endpoint, &root, &[]).await;
    let lock_keys = format!("{root}locks/{ns}/job/");
    let keys = keys_with_prefix(&endpoint, &lock_keys).await;

    // The active replica loses etcd; the standby, which reaches it, takes over and adopts the
    // lock lease before it expires: the same pod leads with the same token, and etcd's holder
    // key was never recreated.
    proxy.cut();
    eventually("the standby to become active", Duration::from_secs(30), || async { standby.is_active().then_some(()) }).await;
    wait_until("the cut-off replica to exit", Duration::from_secs(30), || (!cut_off.exits().is_empty()).then_some(()));
    let (holder, again) = elected(&c, &ns, "jobs", "job", 1).await;
    assert_eq!((holder, again), (leader.clone(), token), "the holder or its token changed");
    eventually("the pod to be leader again", Duration::from_secs(30), || async {
        (roles(&c, &ns, "job").await.get(&leader)? == "leader").then_some(())
    })
    .await;
    assert_eq!(keys_with_prefix(&endpoint, &lock_keys).await, keys, "the holder's key was recreated");
    let log = std::fs::read_to_string(&cut_off.log).unwrap();
    assert!(log.contains("election lost: demoted this cluster's holders before exiting"), "no demotion before the exit:\n{log}");
    checker.settle().await;
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_shorter_than_half_the_ttl_changes_no_pod_even_when_the_replica_exits() {
    // ttlSeconds 20: the lease is at risk only after 10 s without a renewal.
    let CutStage { _serial, etcd, mut proxy, c, ns, root } = cut_stage("brief", 20).await;
    let proxied = proxy.endpoint();
    let ctl = ControllerProcess::start(&["--etcd-endpoints", &proxied, "--etcd-timeout", "1s", "--namespace", &ns, "--etcd-prefix", &root]);
    let (leader, _) = elected(&c, &ns, "jobs", "job", 1).await;
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), &root, &[]).await;
    wait_until("the checker to see the holder", Duration::from_secs(10), || (checker.leader_of("job")? == leader).then_some(()));

    // Longer than --election-ttl (2 s): the replica loses its election and exits; but its lock
    // lease is renewed again long before it is at risk, so it exits without demoting anyone.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await; // the fault itself
    proxy.restore().await;
    wait_until("the replica to exit", Duration::from_secs(30), || (!ctl.exits().is_empty()).then_some(()));
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(log.contains("exiting without demotions"), "the replica did not see its lease renewed:\n{log}");
    checker.settle().await;
    let s = checker.summary();
    assert_eq!(s.role_changes, 0, "a pod changed role on a cut shorter than half the TTL: {s:?}");
    checker.assert_clean();
}

/// The checker spans clusters: a pod of the second apiserver annotated `leader` of the shared
/// lock while the first one's holder leads is one lock led twice, with a token that did not grow.
#[tokio::test(flavor = "multi_thread")]
async fn the_checker_reports_a_second_leader_of_a_shared_lock_in_another_cluster() {
    let _serial = ONE_AT_A_TIME.lock().await;
    install_crd();
    let second = second_cluster();
    let etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    let (east, west) = (client().await, client_of(&second).await);
    let ns = namespace("multi-checker");
    kubectl_ok(&["--kubeconfig", &second, "create", "namespace", &ns], None);
    let allowed = format!("/shared-checker-{}/", std::process::id());
    let checker = shared_lock_checker(&east, &west, [&ns, &ns], &endpoint, &allowed).await;
    let args = |id: &str| {
        let root = format!("/{id}/");
        ["--etcd-endpoints", &endpoint, "--namespace", &ns, "--cluster-id", id, "--etcd-prefix", &root, "--allowed-key-prefix", &allowed]
            .map(String::from)
    };
    let (east_args, west_args) = (args("east"), args("west"));
    let _east_ctl = ControllerProcess::start(&east_args.each_ref().map(String::as_str));
    let _west_ctl = ControllerProcess::start_with_env(&west_args.each_ref().map(String::as_str), &[("KUBECONFIG", &second)]);
    let yaml = leaderlock_yaml(Some(&format!("{allowed}job")));
    ready_pods(&east, &ns, &["w-1"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&yaml));
    let (holder, _) = elected(&east, &ns, "jobs", "job", 1).await;
    ready_pods(&west, &ns, &["w-1"], &[("app", "worker")]).await;
    kubectl_ok(&["--kubeconfig", &second, "apply", "-n", &ns, "-f", "-"], Some(&yaml));
    eventually("west's pod to queue behind east's", Duration::from_secs(30), || async {
        (roles(&west, &ns, "job").await.get("w-1")? == "standby").then_some(())
    })
    .await;
    checker.settle().await;
    assert_eq!(checker.leader_in("job"), Some((0, holder)), "the checker did not see east's holder");
    checker.assert_clean();

    // Someone else annotates west's standby leader with a small token (its controller reverts it).
    let patch = serde_json::json!({"metadata": {"annotations": {"leaderlock.dev/job": "leader", "leaderlock.dev/job.token": "1"}}});
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(west.clone(), &ns)
        .patch("w-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    let caught = |s: &common::checker::Summary, what: &str| s.violations.iter().any(|v| v.contains(what));
    wait_until("the checker to report both violations", Duration::from_secs(10), || {
        let s = checker.summary();
        (caught(&s, "west/") && caught(&s, "led at once") && caught(&s, "not above")).then_some(())
    });
}
