//! Chaos scenarios under the independent checker (tests/common/checker.rs): pod churn, kill -9 of
//! the active controller, lock-etcd member loss and outages, an apiserver partition, compaction
//! during an etcd partition, hostile LeaderLocks, isolation of the etcd keyspace, and two
//! clusters sharing locks (tests/chaos/multicluster.rs).
//!
//! `make test` runs the fast subset; `LEADERLOCK_CHAOS=full` (hack/chaos.sh, `make chaos`) runs
//! the full sizes and durations and writes CHAOS.md. Every scenario owns its namespace, its lock
//! etcd and its controllers (`--namespace`), and they run one at a time.
mod common;
#[path = "chaos/multicluster.rs"]
mod multicluster;
#[path = "chaos/soak.rs"]
mod soak;
#[path = "chaos/spread.rs"]
mod spread;
#[path = "chaos/world.rs"]
mod world;

use std::time::{Duration, Instant};

use common::checker::{self, Checker, wait_converged};
use common::etcd::{EtcdCluster, EtcdServer, TcpProxy};
use common::k8s::{create_pod, delete_pod, pod_versions, set_ready};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use leaderlock::resource::LeaderLock;
use serde_json::json;
use world::*;

/// Scenarios start controllers and disturb them: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The kill -9 bug without churn: three LeaderLocks, two replicas, SIGKILL of the active one,
/// then every holder pod leaves; every lock must hand over. Fails intermittently (the new
/// active replica adopts the recorded lease, moves one LeaderLock's keys to it — "candidate key
/// moved to lease" — and never reconciles the other LeaderLocks; their keys expire).
#[tokio::test(flavor = "multi_thread")]
async fn takeover_without_churn_reconciles_every_leaderlock() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("takeover").await;
    let etcd = EtcdServer::start();
    let replicas = [controller(&etcd.endpoint(), &ns, &[]), controller(&etcd.endpoint(), &ns, &[])];
    let mut fleet = Fleet::create(&c, &ns, 3, 3, 10).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();
    let active = replicas.iter().position(|r| r.is_active()).expect("an active replica");
    replicas[active].kill9();
    wait_until("the standby to take over", Duration::from_secs(15), || replicas[1 - active].is_active().then_some(()));
    let before = holders(&c, &ns).await;
    for (lock, holder, _) in &before {
        let ll = format!("ll-{}", lock.trim_start_matches("lk-"));
        let holder = holder.clone().unwrap();
        delete_pod(&c, &ns, &holder).await;
        fleet.pods.get_mut(&ll).unwrap().retain(|p| p.0 != holder);
    }
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("after takeover: {e}"));
}

fn pick<T>(fast: T, full_: T) -> T {
    if full() { full_ } else { fast }
}

/// A supervised replica (restarted when it exits, like a container) of this scenario's own
/// namespace and lock etcd.
fn controller(endpoints: &str, ns: &str, extra: &[&str]) -> ControllerProcess {
    controller_env(endpoints, ns, extra, &[])
}

fn controller_env(endpoints: &str, ns: &str, extra: &[&str], envs: &[(&str, &str)]) -> ControllerProcess {
    let mut args = vec!["--etcd-endpoints", endpoints, "--namespace", ns, "--etcd-timeout", "2s"];
    args.extend_from_slice(extra);
    envs.iter().fold(Launch::new(&args).supervised(), |l, (k, v)| l.env(k, v)).start()
}

fn assert_no_panic(ctls: &[&ControllerProcess]) {
    ctls.iter().for_each(|c| c.assert_no_panic());
}

/// Fails with everything the checker saw if a promise was broken.
fn assert_safe(s: &checker::Summary, window_bound: Option<Duration>, causeless_target: Option<usize>) {
    assert!(s.violations.is_empty(), "checker violations: {:#?}", s.violations);
    assert!(s.outside_keys.is_empty(), "keys written outside the root and allowed prefixes: {:?}", s.outside_keys);
    if let Some(b) = window_bound {
        assert!(s.max_window <= b, "a leader disagreed with etcd for {:?} (bound {b:?})", s.max_window);
        assert!(s.open_window.is_none_or(|w| w <= b), "a leader still disagrees with etcd after {:?}", s.open_window);
    }
    if let Some(t) = causeless_target {
        assert!(s.causeless.len() <= t, "holder changes without a cause: {:#?}", s.causeless);
    }
}

struct Stage {
    c: kube::Client,
    ns: String,
}

async fn stage(name: &str) -> Stage {
    install_crd();
    let c = common::k8s::client().await;
    let ns = namespace(&format!("chaos-{name}"));
    Stage { c, ns }
}

// ---------------------------------------------------------------------------------------------
// The checker catches what it must catch.

#[tokio::test(flavor = "multi_thread")]
async fn the_checker_reports_a_second_leader_and_a_holder_key_deleted_without_cause() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("checker").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    let mut fleet = Fleet::create(&c, &ns, 1, 3, 15).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(30)).await.unwrap();
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let st = Api::<LeaderLock>::namespaced(c.clone(), &ns).get("ll-0").await.unwrap().status.unwrap();
    let holder = st.locks[0].holder.clone().unwrap();
    let standby = fleet.pods["ll-0"].iter().map(|p| p.0.clone()).find(|p| *p != holder).unwrap();

    // Fault 1: a second pod annotated leader by someone else (the controller reverts it).
    let patch = json!({"metadata": {"annotations": {"leaderlock.dev/lk-0": "leader", "leaderlock.dev/lk-0.token": "1"}}});
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns)
        .patch(&standby, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !checker.summary().violations.iter().any(|v| v.contains("pods lead lk-0 at once")) {
        assert!(Instant::now() < deadline, "the checker missed two leaders: {:?}", checker.summary());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Fault 2: the holder's etcd key deleted behind the controller's back, pod still Ready.
    let out = etcd.etcdctl(&["del", "--prefix", &format!("{ROOT}locks/{ns}/lk-0/")]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while checker.summary().causeless.is_empty() {
        assert!(Instant::now() < deadline, "the checker missed a causeless holder change: {:?}", checker.summary());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Fault 3: a key written outside the root.
    etcd.etcdctl(&["put", "/elsewhere/x", "y"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while checker.summary().outside_keys.is_empty() {
        assert!(Instant::now() < deadline, "the checker missed a key outside the root");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.heal(&c).await;
    println!("checker caught: {:#?}", checker.summary());
    assert_no_panic(&[&ctl]);
}

// ---------------------------------------------------------------------------------------------
// 1. Pod churn storm.

#[tokio::test(flavor = "multi_thread")]
async fn pod_churn_storm_keeps_every_promise() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("churn").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let (n, secs) = (pick(5, 50), pick(15, 120));
    let mut fleet = Fleet::create(&c, &ns, n, 5, 15).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(120)).await.unwrap();
    let mut rng = Rng::new(Rng::seed());
    let steps = fleet.churn(&c, &mut rng, Duration::from_secs(secs), Duration::from_millis(pick(100, 50))).await;
    fleet.heal(&c).await;
    let bound = Duration::from_secs(pick(30, 120));
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "1. Pod churn storm".into(),
        setup: format!(
            "{n} LeaderLocks × 5 pods, {secs} s of churn ({steps} steps: {}), one controller, seed {}.",
            fleet.actions(),
            Rng::seed()
        ),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![format!(
            "Leaderless gaps (holder demoted or gone → next holder annotated): max {:?}, median {:?} over {} gaps.",
            s.max_gap, s.median_gap, s.gaps
        )],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(2)), Some(0));
    assert_no_panic(&[&ctl]);
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 of the active controller during churn.

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_active_controller_during_churn_hands_over_without_holder_changes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("kill").await;
    let etcd = EtcdServer::start();
    let replicas = [controller(&etcd.endpoint(), &ns, &[]), controller(&etcd.endpoint(), &ns, &[])];
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let (n, secs) = (pick(5, 20), pick(6, 30));
    let mut fleet = Fleet::create(&c, &ns, n, 5, 10).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();
    let mut rng = Rng::new(Rng::seed() ^ 2);
    fleet.churn(&c, &mut rng, Duration::from_secs(secs), Duration::from_millis(100)).await;
    let active = replicas.iter().position(|r| r.is_active()).expect("an active replica");
    let other = 1 - active;
    let killed_at = Instant::now();
    replicas[active].kill9();
    fleet.churn(&c, &mut rng, Duration::from_secs(secs), Duration::from_millis(100)).await;
    let takeover = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if replicas[other].is_active() {
                break killed_at.elapsed();
            }
            assert!(Instant::now() < deadline, "no standby took over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    fleet.heal(&c).await;
    let bound = Duration::from_secs(60);
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound)
        .await
        .unwrap_or_else(|e| panic!("no convergence: {e}; replica exits {:?} / {:?}", replicas[0].exits(), replicas[1].exits()));
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "2. kill -9 of the active controller during churn".into(),
        setup: format!("2 replicas (--election-ttl 2), {n} LeaderLocks × 5 pods (ttlSeconds 10), {secs} s churn, SIGKILL of the active replica, {secs} s more churn ({}).", fleet.actions()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![format!("Replica exits: {:?} / {:?}. Standby active {takeover:?} after the kill (polled from its log).", replicas[0].exits(), replicas[1].exits()) + &format!(" Pod changes made while no replica was active are applied on takeover. Leaderless gaps: max {:?}, median {:?}.", s.max_gap, s.median_gap)],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(2)), Some(0));
    assert_no_panic(&replicas.iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// 3. The lock etcd: member loss, leader loss, whole outage shorter and longer than the TTL.

#[tokio::test(flavor = "multi_thread")]
async fn lock_etcd_outage_shorter_than_the_ttl_changes_no_holder() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("etcd-short").await;
    let mut etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let ttl = pick(5, 15);
    let fleet = Fleet::create(&c, &ns, pick(3, 10), 3, ttl).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();
    let before = holders(&c, &ns).await;
    let outage = Duration::from_secs(pick(3, 10));
    etcd.kill();
    tokio::time::sleep(outage).await; // the fault itself: an observation window, not a sync
    etcd.restart();
    let back = Instant::now();
    let bound = Duration::from_secs(30);
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    // Observe past the TTL: had nobody kept the leases alive, the keys would expire now.
    tokio::time::sleep(Duration::from_secs(u64::from(ttl) + 1).saturating_sub(back.elapsed())).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence past the TTL: {e}"));
    checker.settle().await;
    let after = holders(&c, &ns).await;
    let s = checker.summary();
    Report {
        name: "3a. Lock etcd stopped for less than the TTL".into(),
        setup: format!("single-member lock etcd killed (SIGKILL) for {outage:?}, ttlSeconds {ttl}, {} LeaderLocks × 3 pods, no pod changes; observed until ttlSeconds + 1 s after etcd returned.", fleet.lls.len()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![format!("Holders and tokens identical before and after: {}. The controller exits when it cannot renew its election lease for --election-ttl (2 s); it was restarted {} time(s) by the test's supervisor (a kubelet's role) and adopted the recorded leases.", before == after, ctl.restarts())],
    }
    .emit();
    assert_eq!(before, after, "an etcd outage shorter than the TTL changed a holder");
    assert_safe(&s, Some(Duration::from_secs(2)), Some(0));
    assert_no_panic(&[&ctl]);
}

async fn holders(c: &kube::Client, ns: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let lls = Api::<LeaderLock>::namespaced(c.clone(), ns).list(&Default::default()).await.unwrap();
    let mut out: Vec<_> = lls
        .items
        .iter()
        .flat_map(|l| l.status.clone().unwrap_or_default().locks.into_iter().map(|s| (s.name, s.holder, s.fencing_token)))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_etcd_outages_and_partitions_longer_than_the_ttl_keep_one_leader_per_lock() {
    if !full() {
        return; // 30 s of outages: full run only
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("etcd-long").await;
    let mut etcd = EtcdServer::start();
    let mut proxy = TcpProxy::start(etcd.client_port).await;
    let ctl = controller(&proxy.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    Fleet::create(&c, &ns, 5, 3, 5).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();
    let before = holders(&c, &ns).await;

    // (a) the whole etcd down for 12 s > ttlSeconds 5.
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(12)).await; // the fault itself
    etcd.restart();
    let bound = Duration::from_secs(60);
    let conv_a = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let mid = holders(&c, &ns).await;
    let s_a = checker.summary();

    // (b) the controller partitioned from a live etcd for 12 s > ttlSeconds 5: leases expire.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(12)).await; // the fault itself
    proxy.restore().await;
    let conv_b = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let after = holders(&c, &ns).await;
    let s = checker.summary();
    let same_pod = before.iter().zip(&after).filter(|(b, a)| b.1 == a.1).count();
    let larger = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.2.as_ref().zip(a.2.as_ref()).is_some_and(|(x, y)| y.parse::<i64>().unwrap() > x.parse::<i64>().unwrap()))
        .count();
    Report {
        name: "3c. Lock etcd down longer than the TTL; controller partitioned from etcd longer than the TTL".into(),
        setup: "5 LeaderLocks × 3 pods, ttlSeconds 5; (a) single-member etcd SIGKILLed for 12 s then restarted; (b) TcpProxy between controller and etcd cut for 12 s.".into(),
        summary: s.clone(),
        convergence: conv_a.max(conv_b),
        convergence_bound: bound,
        fault_holder_changes_target: None,
        notes: vec![
            format!("(a) whole etcd down 12 s: holders and tokens unchanged = {} ({} causeless holder changes, convergence {conv_a:?}). etcd extends every lease by its TTL when it (re)gains leadership, so a restarted etcd does not expire the controller's leases.", before == mid, s_a.causeless.len()),
            format!("(b) controller cut from etcd 12 s: the leases expired in etcd and the keys were deleted ({} causeless holder changes seen by the checker, {} of them in (b)); after the partition the controller granted new leases and recreated the keys with the previous holder first: {same_pod}/{} locks kept the same holder pod, {larger}/{} with a larger token (convergence {conv_b:?}). While partitioned, the controller demoted each holder pod once its lease had gone unrenewed for half the TTL, before etcd could expire it (docs/contract.md §4.5); longest time a pod's annotation disagreed with etcd: {:?}.", s.causeless.len(), s.causeless.len() - s_a.causeless.len(), before.len(), before.len(), s.max_window),
        ],
    }
    .emit();
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    assert_eq!(before, mid, "a restarted etcd expired leases");
    assert_no_panic(&[&ctl]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_member_lock_etcd_loses_a_follower_then_its_leader_without_holder_changes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("etcd-members").await;
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints().join(",");
    let ctl = controller(&endpoints, &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &cluster.members[0].endpoint(), ROOT, &[]).await;
    let mut fleet = Fleet::create(&c, &ns, pick(3, 10), 3, 10).await;
    let ep0 = cluster.members[0].endpoint();
    wait_converged(&c, &ns, &ep0, ROOT, None, Duration::from_secs(60)).await.unwrap();
    let before = holders(&c, &ns).await;
    let leader = |cl: &EtcdCluster| -> usize {
        wait_until("an etcd leader", Duration::from_secs(30), || {
            cl.members.iter().position(|m| {
                let out = m.etcdctl(&["endpoint", "status", "-w", "json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let st = &v[0]["Status"];
                st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"]
            })
        })
    };
    // A follower (never member 0, which the checker watches) stops, churn goes on, it returns.
    let l = leader(&cluster);
    let follower = (1..3).find(|i| *i != l).unwrap();
    let mut rng = Rng::new(Rng::seed() ^ 3);
    cluster.members[follower].kill();
    fleet.churn(&c, &mut rng, Duration::from_secs(pick(4, 15)), Duration::from_millis(150)).await;
    cluster.members[follower].restart();
    // The leader stops (if it is member 0, the checker re-lists through... member 0 is down:
    // pick the stop only among 1..3 by moving leadership there first when needed).
    let l = leader(&cluster);
    let victim = if l == 0 { follower } else { l };
    let stopped_leader = victim == l;
    cluster.members[victim].kill();
    fleet.churn(&c, &mut rng, Duration::from_secs(pick(4, 15)), Duration::from_millis(150)).await;
    cluster.members[victim].restart();
    fleet.heal(&c).await;
    let bound = Duration::from_secs(60);
    let conv = wait_converged(&c, &ns, &ep0, ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let s = checker.summary();
    let _ = before;
    Report {
        name: "3b. Lock etcd: a 3-member cluster loses a follower, then a member again (the leader when it is not the checker's)".into(),
        setup: format!("3-member etcd, controller given all 3 endpoints, {} LeaderLocks × 3 pods (ttlSeconds 10) under churn ({}); follower m{follower} stopped and restarted, then m{victim} stopped and restarted (it was the raft leader: {stopped_leader}).", fleet.lls.len(), fleet.actions()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(3)), Some(0));
    assert_no_panic(&[&ctl]);
}

// ---------------------------------------------------------------------------------------------
// 4. The apiserver unreachable from the controller (TcpProxy in front of it).

fn kubeconfig_through(port: u16) -> tempfile::TempPath {
    let api = env("KUBE_APISERVER_URL");
    let text = std::fs::read_to_string(env("KUBECONFIG")).unwrap();
    let text = text.replace(&format!("server: {api}"), &format!("server: https://127.0.0.1:{port}"));
    assert!(text.contains(&format!("127.0.0.1:{port}")), "could not rewrite the kubeconfig");
    let path = tempfile::NamedTempFile::new().unwrap().into_temp_path(); // removed on drop
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apiserver_unreachable_from_the_controller_during_churn_breaks_no_promise() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("apiserver-cut").await;
    let etcd = EtcdServer::start();
    let api_port: u16 = env("KUBE_APISERVER_URL").rsplit(':').next().unwrap().parse().unwrap();
    let mut proxy = TcpProxy::start(api_port).await;
    let kubeconfig = kubeconfig_through(proxy.port);
    let ep = etcd.endpoint();
    let ctl = controller_env(&ep, &ns, &[], &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let checker = Checker::start(c.clone(), &ns, &ep, ROOT, &[]).await;
    let mut fleet = Fleet::create(&c, &ns, pick(5, 20), 5, 15).await;
    wait_converged(&c, &ns, &ep, ROOT, None, Duration::from_secs(60)).await.unwrap();
    let mut rng = Rng::new(Rng::seed() ^ 4);
    checker.allow_controller_lag(Duration::from_secs(pick(5, 30) + 10));
    fleet.churn(&c, &mut rng, Duration::from_secs(pick(3, 10)), Duration::from_millis(100)).await;
    let cut = Duration::from_secs(pick(5, 30));
    proxy.cut();
    fleet.churn(&c, &mut rng, cut, Duration::from_millis(100)).await;
    proxy.restore().await;
    let back = Instant::now();
    fleet.churn(&c, &mut rng, Duration::from_secs(pick(3, 10)), Duration::from_millis(100)).await;
    fleet.heal(&c).await;
    let bound = Duration::from_secs(90);
    let conv = wait_converged(&c, &ns, &ep, ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    let since_restore = back.elapsed();
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "4. apiserver unreachable from the controller during churn".into(),
        setup: format!("controller talks to the apiserver through a TcpProxy, cut for {cut:?} in the middle of churn ({} LeaderLocks × 5 pods: {}).", fleet.lls.len(), fleet.actions()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![format!("Converged {conv:?} after the churn ended ({since_restore:?} after the proxy was restored). While cut, the controller sees no pod change: a leader that became unready or was deleted keeps its etcd key (no other pod is promoted), so the checker's etcd/leader agreement holds; leaderless gaps max {:?}. After the cut the controller's pod watch resumes and replays the pod history it missed, in order: it may briefly create a key for (and promote) a pod that was Ready during the cut but is no longer, then remove it on the next event — holder changes explained by a not-Ready observation up to the cut's length earlier are counted as caused.", s.max_gap)],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(2)), Some(0));
    assert_no_panic(&[&ctl]);
}

// ---------------------------------------------------------------------------------------------
// 5. Compaction of the lock etcd while the controller is partitioned from it.

#[tokio::test(flavor = "multi_thread")]
async fn a_compaction_while_the_controller_is_cut_from_etcd_breaks_no_promise_and_converges() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("compaction").await;
    let etcd = EtcdServer::start();
    let mut proxy = TcpProxy::start(etcd.client_port).await;
    let ctl = controller(&proxy.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    checker.test_writes_under("/chaos-noise/");
    let mut fleet = Fleet::create(&c, &ns, 3, 3, 30).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();
    proxy.cut();
    // Pods change while etcd is unreachable from the controller; etcd moves on and compacts.
    let mut rng = Rng::new(Rng::seed() ^ 5);
    fleet.churn(&c, &mut rng, Duration::from_secs(pick(3, 8)), Duration::from_millis(200)).await;
    for i in 0..50 {
        etcd.etcdctl(&["put", &format!("/chaos-noise/{i}"), "x"]);
    }
    let out = etcd.etcdctl(&["get", "/chaos-noise/0", "-w", "json"]);
    let rev = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["header"]["revision"].as_i64().unwrap();
    assert!(etcd.etcdctl(&["compact", &rev.to_string()]).status.success());
    proxy.restore().await;
    fleet.heal(&c).await;
    let bound = Duration::from_secs(60);
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "5. Compaction of the lock etcd while the controller is partitioned from it".into(),
        setup: format!("TcpProxy controller→etcd cut; pod churn meanwhile ({}); 50 unrelated writes then `etcdctl compact` at revision {rev}; proxy restored.", fleet.actions()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec!["The controller's watch resumes from a compacted revision: it must re-list, then apply the pod changes it missed.".into()],
    }
    .emit();
    assert_safe(&s, None, Some(0));
    assert_no_panic(&[&ctl]);
}

// ---------------------------------------------------------------------------------------------
// 6. Malformed and hostile LeaderLocks, mixed with valid ones. 7. Isolation.

fn hostile(rng: &mut Rng, i: usize, ns_other: &str) -> (String, serde_json::Value, &'static str) {
    let name = format!("h{i}");
    let base = |name: &str, spec: serde_json::Value| json!({"apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock", "metadata": {"name": name}, "spec": spec});
    let nothing = json!({"matchLabels": {"app": format!("nothing-{i}")}});
    match rng.below(9) {
        0 => {
            // Odd (but legal) object names: long, dotted, digits.
            let n = format!("{}.{}-{i}", "a".repeat(1 + rng.below(200)), rng.next() % 1000);
            (n.clone(), base(&n, json!({"selector": nothing, "locks": [{"name": format!("odd{i}")}]})), "valid")
        }
        1 => {
            let labels: serde_json::Map<String, serde_json::Value> =
                (0..200).map(|k| (format!("k{k}.example.com/l{k}"), json!("v".repeat(63)))).collect();
            let values: Vec<String> = (0..500).map(|k| format!("v{k}")).collect();
            (
                name.clone(),
                base(
                    &name,
                    json!({"selector": {"matchLabels": labels, "matchExpressions": [{"key": "app", "operator": "In", "values": values}]}, "locks": [{"name": format!("huge{i}")}]}),
                ),
                "valid",
            )
        }
        2 => {
            let key = [
                "/etc/passwd",
                "/leaderlock.dev.evil/x",
                "/legacy2/x",
                "/",
                "/legacy/../etc",
                "/leaderlockXdev/x",
                "/a b/c",
                "/\u{2603}/x",
            ][rng.below(8)];
            (
                name.clone(),
                base(
                    &name,
                    json!({"selector": {"matchLabels": {"app": "victim"}}, "locks": [{"name": format!("out{i}"), "etcdKey": key}]}),
                ),
                "bad",
            )
        }
        3 => (name.clone(), base(&name, json!({"selector": {"matchLabels": {"app": "victim"}}, "locks": [{"name": "ledger"}]})), "bad"),
        4 => (
            name.clone(),
            base(
                &name,
                json!({"selector": {"matchLabels": {"app": "victim"}}, "locks": [{"name": "x"}, {"name": format!("p{i}"), "etcdKey": format!("{ROOT}locks/{ns_other}/victim-lock")}]}),
            ),
            "bad-crossns",
        ),
        5 => (
            name.clone(),
            base(
                &name,
                json!({"selector": nothing, "locks": (0..32).map(|k| json!({"name": format!("m{i}-{k}")})).collect::<Vec<_>>(), "ttlSeconds": 3600}),
            ),
            "valid",
        ),
        6 => (
            name.clone(),
            base(&name, json!({"selector": {"matchLabels": {"app": "victim"}}, "locks": [{"name": "-bad-"}], "ttlSeconds": 1})),
            "schema",
        ),
        7 => (
            name.clone(),
            base(
                &name,
                json!({"selector": {"matchLabels": {"app": "victim"}}, "locks": [{"name": format!("l{i}"), "etcdKey": format!("/legacy/{i}/")}], "extra": true}),
            ),
            "schema",
        ),
        _ => (
            format!("flap{}", i % 7),
            base(&format!("flap{}", i % 7), json!({"selector": nothing, "locks": [{"name": format!("flap{}", i % 7)}]})),
            "flap",
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_leaderlocks_neither_crash_the_controller_nor_touch_valid_locks_or_foreign_keys() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("hostile").await;
    let other = namespace("chaos-hostile-bystander");
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &["--allowed-key-prefix", "/legacy/"]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &["/legacy/"]).await;
    // Valid: "victim" with locks ledger and report over 3 pods. A bystander namespace with
    // look-alike pods that the controller must never touch.
    for p in ["v-1", "v-2", "v-3"] {
        create_pod(&c, &ns, p, &[("app", "victim")]).await;
        set_ready(&c, &ns, p, true).await;
        create_pod(&c, &other, p, &[("app", "victim")]).await;
        set_ready(&c, &other, p, true).await;
    }
    let bystanders = pod_versions(&c, &other).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&leaderlock_yaml("victim", &["ledger", "report"], 15)));
    let only = vec!["victim".to_string()];
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, Some(&only), Duration::from_secs(60)).await.unwrap();
    let before = holders_of(&c, &ns, "victim").await;
    // Creation timestamps have 1 s granularity and equal ones tie-break by name (see the
    // test a_newer_leaderlock_created_in_the_same_second_does_not_take_an_older_ones_lock_name):
    // start the storm in a later second than the victim's creation.
    let created = Api::<LeaderLock>::namespaced(c.clone(), &ns).get("victim").await.unwrap().metadata.creation_timestamp.unwrap().0;
    wait_until("a second after the victim's creation", Duration::from_secs(5), || {
        (jiff::Timestamp::now().as_second() > created.as_second()).then_some(())
    });

    let ar = ApiResource::erase::<LeaderLock>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, &ar);
    let n = pick(50, 1000);
    let mut rng = Rng::new(Rng::seed() ^ 6);
    let (mut refused, mut accepted) = (0, std::collections::BTreeMap::<String, &'static str>::new());
    let mut flaps = 0;
    for i in 0..n {
        let (name, obj, kind) = hostile(&mut rng, i, &other);
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        if kind == "flap" {
            // Rapid create/delete of one name; sometimes left in place.
            let _ = api.create(&PostParams::default(), &obj).await;
            let _ = api.delete(&name, &DeleteParams::default()).await;
            flaps += 1;
            if rng.chance(30) {
                if api.create(&PostParams::default(), &obj).await.is_ok() {
                    accepted.insert(name, "flap");
                }
            } else {
                accepted.remove(&name);
            }
            continue;
        }
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                accepted.insert(name, kind);
            }
            Err(_) => refused += 1,
        }
    }
    // Every accepted LeaderLock gets a Ready condition; bad ones Ready=False with a reason.
    let bound = Duration::from_secs(pick(60, 300));
    let start = Instant::now();
    let mut unclear = Vec::new();
    loop {
        unclear.clear();
        let lls = Api::<LeaderLock>::namespaced(c.clone(), &ns).list(&Default::default()).await.unwrap();
        for ll in &lls.items {
            let Some(kind) = accepted.get(&ll.name_any()) else { continue };
            let ready = ll.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            let ok = match (ready, *kind) {
                (None, _) => false,
                (Some(r), "bad" | "bad-crossns") => {
                    r.status == "False" && (r.reason == "EtcdKeyNotAllowed" || r.reason == "LockNameConflict") && !r.message.is_empty()
                }
                (Some(r), _) => r.status == "True" && r.observed_generation == ll.metadata.generation,
            };
            if !ok {
                unclear.push(format!("{} ({kind}): {:?}", ll.name_any(), ll.status.as_ref().map(|s| &s.conditions)));
            }
        }
        if unclear.is_empty() || start.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let conds = start.elapsed();
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, Some(&only), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("victim not converged: {e}"));
    checker.settle().await;
    let victim_after = holders_of(&c, &ns, "victim").await;
    let victim_before = before;
    // Isolation: nothing under another namespace's lock prefix, bystander pods untouched.
    let foreign = etcd.etcdctl(&["get", "--prefix", "--keys-only", &format!("{ROOT}locks/{other}/")]);
    let foreign = String::from_utf8_lossy(&foreign.stdout).trim().to_string();
    let s = checker.summary();
    let kinds = accepted.values().fold(std::collections::BTreeMap::<&str, usize>::new(), |mut m, k| {
        *m.entry(*k).or_default() += 1;
        m
    });
    Report {
        name: "6–7. Hostile LeaderLocks and isolation".into(),
        setup: format!("{n} generated LeaderLocks (seed {}): {refused} refused by the schema, accepted {kinds:?}, {flaps} rapid create/delete pairs; plus the valid LeaderLock `victim` (ledger, report) over 3 pods and a bystander namespace with look-alike pods.", Rng::seed()),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: Duration::from_secs(60),
        fault_holder_changes_target: Some(0),
        notes: vec![format!(
            "Every accepted LeaderLock had its Ready condition after {conds:?}; unclear: {}. Victim holders unchanged: {}. Keys under the bystander namespace's prefix: {:?}. Bystander pods rewritten: {}.",
            unclear.len(),
            victim_before == victim_after,
            foreign,
            bystanders != pod_versions(&c, &other).await
        )],
    }
    .emit();
    assert_no_panic(&[&ctl]);
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    assert!(s.outside_keys.is_empty(), "keys outside root/allowed: {:?}", s.outside_keys);
    assert_eq!(victim_before, victim_after, "hostile LeaderLocks changed a valid lock's holder");
    assert_eq!(bystanders, pod_versions(&c, &other).await, "pods of another namespace were written");
    assert!(unclear.is_empty(), "LeaderLocks without a clear Ready condition: {unclear:#?}");
    assert!(foreign.is_empty(), "keys written under the bystander namespace's lock prefix: {foreign}");
}

async fn holders_of(c: &kube::Client, ns: &str, ll: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let l = Api::<LeaderLock>::namespaced(c.clone(), ns).get(ll).await.unwrap();
    l.status.unwrap_or_default().locks.into_iter().map(|s| (s.name, s.holder, s.fencing_token)).collect()
}

/// Regression: LeaderLock `zz` holds lock `ledger`; `aa`, created within the same second
/// (creationTimestamp has 1 s granularity) with the same lock name, must not take it over,
/// although it sorts first by name. docs/contract.md §2: the older one keeps the name; within
/// one second the holder is the older one.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_leaderlock_created_in_the_same_second_does_not_take_an_older_ones_lock_name() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("same-second").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    for p in ["v-1", "v-2"] {
        create_pod(&c, &ns, p, &[("app", "zz")]).await;
        set_ready(&c, &ns, p, true).await;
    }
    let api = Api::<LeaderLock>::namespaced(c.clone(), &ns);
    // zz elected, then aa, both within one second: retry until their timestamps are equal (bounded).
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 10, "could not create two LeaderLocks within one second");
        kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&leaderlock_yaml("zz", &["ledger"], 15)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get("zz").await.unwrap().status.is_none_or(|s| s.locks.first().is_none_or(|l| l.holder.is_none())) {
            assert!(Instant::now() < deadline, "zz was never elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let y = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: aa}\nspec:\n  selector: {matchLabels: {app: nothing}}\n  locks: [{name: ledger}]\n";
        kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(y));
        let t = |n: &'static str| {
            let api = api.clone();
            async move { api.get(n).await.unwrap().metadata.creation_timestamp.unwrap().0 }
        };
        if t("zz").await == t("aa").await {
            break;
        }
        kubectl_ok(&["delete", "-n", &ns, "ll", "aa", "zz", "--wait=true"], None);
    }
    // aa is reconciled (it gets a status) and has lost the conflict, not zz.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get("aa").await.unwrap().status.is_none_or(|s| s.conditions.is_empty()) {
        assert!(Instant::now() < deadline, "aa was never reconciled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = eventually_status(&api, "zz").await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
    ctl.assert_no_panic();
    assert!(ready.reason != "LockNameConflict", "the older LeaderLock zz lost its lock name to aa: {}", ready.message);
}

async fn eventually_status(api: &Api<LeaderLock>, name: &str) -> leaderlock::resource::LeaderLockStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = api.get(name).await.unwrap().status.filter(|s| !s.conditions.is_empty()) {
            return st;
        }
        assert!(Instant::now() < deadline, "no status on {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Isolation across namespaces: a LeaderLock may not use another namespace's lock prefix (inside
/// the root) as its etcdKey — it would join, or take, that namespace's lock — nor the
/// controller's own `controller/` (replica election) and `leases/` areas.
#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_key_under_another_namespaces_lock_prefix_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("crossns").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    create_pod(&c, &ns, "w-1", &[("app", "thief")]).await;
    set_ready(&c, &ns, "w-1", true).await;
    for (name, key) in
        [("thief", format!("{ROOT}locks/other-ns/ledger")), ("usurper", format!("{ROOT}controller")), ("lessee", format!("{ROOT}leases"))]
    {
        let y = format!(
            "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: thief}}}}\n  locks: [{{name: l-{name}, etcdKey: \"{key}\"}}]\n"
        );
        kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&y));
    }
    let api = Api::<LeaderLock>::namespaced(c.clone(), &ns);
    let mut wrong = Vec::new();
    for name in ["thief", "usurper", "lessee"] {
        let st = eventually_status(&api, name).await;
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        if ready.status != "False" {
            wrong.push(format!("{name}: Ready={} {} ({})", ready.status, ready.reason, ready.message));
        }
    }
    let keys = etcd.etcdctl(&["get", "--prefix", "--keys-only", ROOT]);
    let keys = String::from_utf8_lossy(&keys.stdout).to_string();
    ctl.assert_no_panic();
    println!("crossns: {wrong:?}\n{keys}");
    assert!(
        wrong.is_empty(),
        "etcdKeys inside other namespaces' or the controller's own areas were accepted: {wrong:#?}; keys now:\n{keys}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Soak: pods and LeaderLocks churned for CHAOS_SOAK_SECS (default 30 minutes).

/// Pods and LeaderLocks churned for [`soak::duration`] under the checker: every promise kept,
/// and neither the controller's RSS nor any map it exports keeps growing (tests/chaos/soak.rs
/// says what flat means). A map that keeps an entry per deleted object or per retired lock
/// prefix grows with the churn; a restart would hide that, so the controller must not restart.
#[tokio::test(flavor = "multi_thread")]
async fn soak_of_pod_and_leaderlock_churn_keeps_every_promise_and_memory_flat() {
    if !full() {
        return; // 30 minutes: make chaos only (CHAOS_SOAK_SECS=120 for a short form)
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("soak").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let (n, secs) = (20, soak::duration());
    let mut fleet = Fleet::create(&c, &ns, n, 4, 15).await;
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(120)).await.unwrap();
    let mut rng = Rng::new(Rng::seed() ^ 8);
    let (every, sample_every) = (Duration::from_millis(50), Duration::from_secs(5));
    let start = Instant::now();
    let (mut samples, mut next_sample, mut steps) = (Vec::new(), start, 0u64);
    while start.elapsed() < secs {
        if Instant::now() >= next_sample {
            samples.push(soak::sample(&ctl, start));
            next_sample += sample_every;
        }
        let t = Instant::now();
        match rng.below(100) {
            0..5 => fleet.replace_leaderlock(&c, &mut rng, &checker).await,
            5..45 => fleet.knock_out_holder(&c, &mut rng, &checker).await,
            _ => fleet.step(&c, &mut rng).await,
        }
        steps += 1;
        if steps % 200 == 0 {
            fleet.heal(&c).await; // keeps enough candidates for holder changes to happen
        }
        tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
    }
    samples.push(soak::sample(&ctl, start));
    fleet.heal(&c).await;
    let bound = Duration::from_secs(120);
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let s = checker.summary();
    let rss = soak::judge_rss(&samples);
    let maps = soak::judge_maps(&samples);
    let verdicts: Vec<soak::Verdict> = rss.iter().cloned().chain(maps.iter().flatten().cloned()).collect();
    let mut notes = vec![
        format!(
            "{:.2} leader transitions/s over {} samples every {sample_every:?}; controller restarts {}. Flat: the last quarter's median at most the second quarter's + 10% (RSS: at least 4 MiB; maps: at least 2 entries; the first quarter is warm-up), see tests/chaos/soak.rs.",
            s.transitions as f64 / secs.as_secs_f64(),
            samples.len(),
            ctl.restarts()
        ),
        soak::table(&verdicts),
    ];
    if let Err(e) = &maps {
        notes.push(format!("Maps not judged: {e}."));
    }
    Report {
        name: "8. Soak: pods and LeaderLocks churned".into(),
        setup: format!(
            "{n} LeaderLocks × 3–7 pods (ttlSeconds 15), {secs:?} of churn ({steps} steps: {}), one controller, seed {}.",
            fleet.actions(),
            Rng::seed()
        ),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes,
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(2)), Some(0));
    assert_no_panic(&[&ctl]);
    assert_eq!(ctl.restarts(), 0, "the controller restarted during the soak (exits {:?}): growth would be hidden", ctl.exits());
    let rss = rss.unwrap_or_else(|e| panic!("{e}"));
    assert!(rss.flat(), "the controller's RSS kept growing under churn: {rss:?}\n{}", soak::table(&verdicts));
    let maps = maps.unwrap_or_else(|e| panic!("{e}"));
    let growing: Vec<&soak::Verdict> = maps.iter().filter(|v| !v.flat()).collect();
    assert!(growing.is_empty(), "maps that kept growing under churn: {growing:#?}\n{}", soak::table(&verdicts));
}
