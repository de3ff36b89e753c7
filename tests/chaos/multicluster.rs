//! Scenario 9: two clusters — two kube-apiservers, a controller in each — sharing every lock
//! through one etcd (docs/contract.md §4.7), churned in both under the checker spanning them.

use std::time::{Duration, Instant};

use crate::common::checker::{Checker, Cluster, wait_converged_across};
use crate::common::clusters::{client_of, second_cluster};
use crate::common::etcd::EtcdServer;
use crate::common::{ControllerProcess, env, kubectl_ok};
use crate::world::{Fleet, Report, Rng, full};
use crate::{ONE_AT_A_TIME, Stage, assert_no_panic, assert_safe, controller_env, pick, stage};

/// The etcdKey prefix both clusters allow and share their locks under.
const SHARED: &str = "/shared-chaos/";

/// Pod deletions and readiness flips in both clusters, holders knocked out in whichever cluster
/// leads, and each cluster's controller killed (SIGKILL, back 1 s later like a container) at a
/// third and two thirds of the churn and at random: one pod in all clusters leads each lock, in
/// commit order, tokens grow across clusters, and no holder changes without a cause.
#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_sharing_locks_under_churn_and_controller_kills_keep_one_leader() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("multi").await;
    let second = second_cluster();
    let c2 = client_of(&second).await;
    kubectl_ok(&["--kubeconfig", &second, "create", "namespace", &ns], None);
    let etcd = EtcdServer::start();
    let ep = etcd.endpoint();
    let (ids, kubeconfigs) = (["a", "b"], [env("KUBECONFIG"), second.clone()]);
    let ctls: Vec<ControllerProcess> = (0..2)
        .map(|i| {
            let root = format!("/{}/", ids[i]);
            let flags = ["--cluster-id", ids[i], "--etcd-prefix", &root, "--allowed-key-prefix", SHARED];
            controller_env(&ep, &ns, &flags, &[("KUBECONFIG", &kubeconfigs[i])])
        })
        .collect();
    let clients = [c.clone(), c2.clone()];
    let clusters: Vec<Cluster> = (0..2)
        .map(|i| Cluster { client: clients[i].clone(), ns: ns.clone(), root: format!("/{}/", ids[i]), id: Some(ids[i].to_string()) })
        .collect();
    let checker = Checker::across(clusters.clone(), &ep, &[SHARED]).await;
    let (n, secs, ttl) = (pick(3, 10), pick(20, 120), 15);
    for i in 0..n {
        checker.map_lock(&format!("lk-{i}"), &format!("{SHARED}lk-{i}"));
    }
    let mut fleets =
        [Fleet::create_shared(&c, &ns, n, 3, ttl, SHARED, "a-").await, Fleet::create_shared(&c2, &ns, n, 3, ttl, SHARED, "b-").await];
    wait_converged_across(&clusters, &ep, Duration::from_secs(120)).await.unwrap_or_else(|e| panic!("no first election: {e}"));

    let mut rng = Rng::new(Rng::seed() ^ 9);
    let (duration, every) = (Duration::from_secs(secs), Duration::from_millis(100));
    let (start, mut steps, mut kills, mut scheduled) = (Instant::now(), 0u64, [0u32; 2], 0);
    let mut knocked = [0u64; 2];
    while start.elapsed() < duration {
        let t = Instant::now();
        if scheduled < 2 && start.elapsed() >= duration * (scheduled + 1) / 3 {
            ctls[scheduled as usize].kill9();
            kills[scheduled as usize] += 1;
            scheduled += 1;
        }
        match rng.below(100) {
            0 => {
                let i = rng.below(2);
                ctls[i].kill9();
                kills[i] += 1;
            }
            1..40 => {
                // The holder of a random lock leaves, in whichever cluster it is.
                let g = rng.below(n);
                let (group, lock) = (format!("ll-{g}"), format!("lk-{g}"));
                let leader = checker.leader_in(&lock);
                match leader {
                    Some((i, pod)) if fleets[i].knock_out(&clients[i], &mut rng, &group, &pod).await => knocked[i] += 1,
                    _ => {
                        let i = rng.below(2);
                        fleets[i].step(&clients[i], &mut rng).await;
                    }
                }
            }
            _ => {
                let i = rng.below(2);
                fleets[i].step(&clients[i], &mut rng).await;
            }
        }
        steps += 1;
        tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
    }
    for (f, c) in fleets.iter_mut().zip(&clients) {
        f.heal(c).await;
    }
    let bound = Duration::from_secs(pick(60, 120));
    let conv = wait_converged_across(&clusters, &ep, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "9. Two clusters sharing locks through one etcd".into(),
        setup: format!(
            "two kube-apiservers (the second on the same storage etcd under another prefix), a controller in each (`--cluster-id a|b`, roots `/a/` and `/b/`, `--allowed-key-prefix {SHARED}`), {n} LeaderLocks × 3 pods in each cluster, lock `lk-<i>` of both the etcdKey `{SHARED}lk-<i>` (ttlSeconds {ttl}); {secs} s of churn ({steps} steps; cluster a: {}; cluster b: {}; holders knocked out in a/b: {}/{}), controllers SIGKILLed a/b: {}/{} times (restarted 1 s later), seed {}.",
            fleets[0].actions(),
            fleets[1].actions(),
            knocked[0],
            knocked[1],
            kills[0],
            kills[1],
            Rng::seed()
        ),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: Some(0),
        notes: vec![format!(
            "The checker watches both clusters' pods and keys every lock by its etcd prefix: \"one leader\" and \"tokens grow\" are judged across the clusters, in the order of the pods' resourceVersions (both apiservers store into one etcd, so its revisions order their writes), not as the two watches happened to deliver them. {} of the {} leader transitions moved a lock to the other cluster; {} times the watches showed a lock led in both clusters at once: judged by resourceVersions, each demotion had been committed before the promotion, except for the violations counted above. Controller restarts: a {} / b {}. Leaderless gaps: max {:?}, median {:?} over {} gaps (the longest when a holder left while its cluster's controller was down: its key goes when that controller is back).{}",
            s.cross_transitions,
            s.transitions,
            s.seen_overlaps,
            ctls[0].restarts(),
            ctls[1].restarts(),
            s.max_gap,
            s.median_gap,
            s.gaps,
            if full() { "" } else { " (short form: `make test`)" }
        )],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(3)), Some(0));
    assert!(s.transitions > 0, "no leader transition observed");
    assert_no_panic(&ctls.iter().collect::<Vec<_>>());
}
