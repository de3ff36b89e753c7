//! The placement step as a reconcile plans it: which etcd steps, in which order.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::controller::plan::{self, Step};
use crate::controller::snapshot::Snapshot;
use crate::fixtures::{self, leaderlock, now, pod, view};
use crate::lock::{Candidate as Key, LockKey};
use crate::pods::PodInfo;
use crate::resource::PlacementSpec;

fn spread(locks: &[&str], f: impl FnOnce(&mut PlacementSpec)) -> LeaderLock {
    let mut ll = leaderlock(locks, None);
    let mut p = PlacementSpec { policy: PlacementPolicy::Spread, stabilization_seconds: 0, ..Default::default() };
    f(&mut p);
    ll.spec.placement = Some(p);
    ll
}

fn prefix(lock: &str) -> String {
    format!("/ll/locks/ns/{lock}")
}

fn held(lock: &str, pod: &str, token: i64) -> (String, LockKey) {
    (prefix(lock), fixtures::key(&prefix(lock), pod, token))
}

fn observed<'a>(ll: &'a LeaderLock, v: &'a crate::index::View, holders: &[(String, LockKey)]) -> Snapshot<'a> {
    fixtures::snapshot(ll, v, holders.iter().cloned().collect())
}

fn before_etcd(o: &Snapshot, now: jiff::Timestamp) -> Vec<Step> {
    plan::before_etcd(o, &plan::decide(o, now))
}

fn after_etcd(o: &Snapshot, now: jiff::Timestamp) -> Vec<Step> {
    plan::after_etcd(o, &plan::decide(o, now), &BTreeMap::new(), now)
}

fn decide(o: &Snapshot, now: jiff::Timestamp) -> Decision {
    plan::decide(o, now).placed
}

fn key(pod: &str) -> Key {
    Key { id: format!("uid-{pod}"), name: format!("ns/{pod}") }
}

fn syncs(steps: &[Step]) -> Vec<(String, Vec<String>)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Sync { lock, wanted, .. } => Some((lock.clone(), wanted.iter().map(|c| c.id.clone()).collect())),
            _ => None,
        })
        .collect()
}

fn moves(steps: &[Step]) -> Vec<(String, Option<String>, Option<Why>)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Move { lock, to, why, request: None, .. } => Some((lock.clone(), to.clone(), *why)),
            _ => None,
        })
        .collect()
}

fn with_label(p: Arc<PodInfo>, k: &str, v: &str) -> Arc<PodInfo> {
    let mut labels: BTreeMap<String, String> = p.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.insert(k.into(), v.into());
    Arc::new(PodInfo { labels: labels.iter().collect(), ..(*p).clone() })
}

fn selector(k: &str, v: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([(k.to_string(), v.to_string())].into()),
        ..Default::default()
    }
}

#[test]
fn an_overloaded_holder_is_demoted_then_one_transaction_moves_the_lock_to_the_idle_pod() {
    let ll = spread(&["s0", "s1"], |_| {});
    let leader = [
        ("leaderlock.dev/s0", "leader"),
        ("leaderlock.dev/s0.token", "7"),
        ("leaderlock.dev/s1", "leader"),
        ("leaderlock.dev/s1.token", "8"),
    ];
    let v =
        view(&ll, &[pod("a", 1, true, &leader), pod("b", 2, true, &[("leaderlock.dev/s0", "standby"), ("leaderlock.dev/s1", "standby")])]);
    let o = observed(&ll, &v, &[held("s0", "a", 7), held("s1", "a", 8)]);
    let steps = before_etcd(&o, now());
    let Step::Pod { name, to, .. } = &steps[0] else { panic!("the holder is demoted first: {steps:?}") };
    assert_eq!((name.as_str(), to.annotations.get("leaderlock.dev/s1").map(String::as_str)), ("a", Some("standby")));
    assert_eq!(moves(&steps), [("s1".to_string(), Some("uid-b".to_string()), Some(Why::Spread))]);
    let sync_s1 = steps.iter().position(|s| matches!(s, Step::Sync { lock, .. } if lock == "s1")).unwrap();
    let moved = steps.iter().position(|s| matches!(s, Step::Move { .. })).unwrap();
    assert!(sync_s1 < moved, "the target's key exists before the move: {steps:?}");
}

#[test]
fn a_settled_spread_plans_no_etcd_write_and_reports_a_settled_distribution() {
    let ll = spread(&["s0", "s1", "s2"], |_| {});
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let o = observed(&ll, &v, &[held("s0", "a", 7), held("s1", "b", 8), held("s2", "a", 9)]);
    assert_eq!(moves(&before_etcd(&o, now())), []);
    let d = decide(&o, now());
    assert!(d.status.settled);
    assert_eq!(d.status.distribution, [PodLocks { pod: "a".into(), locks: 2 }, PodLocks { pod: "b".into(), locks: 1 }]);
    assert_eq!(recheck_after(&d, now()), None, "nothing to wait for: no timer");
    let after = after_etcd(&o, now());
    let Some(Step::Status(s)) = after.iter().find(|s| matches!(s, Step::Status(_))) else { panic!("{after:?}") };
    assert_eq!(s.placement.as_ref().map(|p| p.policy.as_str()), Some("Spread"));
}

#[test]
fn a_holder_that_left_keeps_its_key_until_the_move_hands_its_lock_straight_to_the_target() {
    let ll = spread(&["s0", "s1"], |_| {});
    let v = view(&ll, &[pod("gone", 0, false, &[]), pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let o = observed(&ll, &v, &[held("s0", "a", 7), held("s1", "gone", 8)]);
    let steps = before_etcd(&o, now());
    assert_eq!(moves(&steps), [("s1".to_string(), Some("uid-b".to_string()), Some(Why::HolderLeft))]);
    let s1: Vec<_> = syncs(&steps).into_iter().filter(|(l, _)| l == "s1").map(|(_, w)| w).collect();
    assert_eq!(s1, [vec!["uid-gone", "uid-a", "uid-b"], vec!["uid-a", "uid-b"]], "kept for the move, deleted after it");
}

#[test]
fn never_lead_candidates_get_no_key_under_either_policy() {
    for policy in [PlacementPolicy::Queue, PlacementPolicy::Spread] {
        let ll = spread(&["s0"], |p| {
            p.policy = policy;
            p.never_lead = Some(selector("role", "reader"));
        });
        let v = view(&ll, &[with_label(pod("a", 1, true, &[]), "role", "reader"), pod("b", 2, true, &[])]);
        let o = observed(&ll, &v, &[]);
        assert_eq!(syncs(&before_etcd(&o, now())), [("s0".to_string(), vec!["uid-b".to_string()])], "{policy:?}");
    }
}

#[test]
fn a_holder_marked_never_to_lead_under_queue_is_demoted_before_its_key_goes() {
    let ll = spread(&["s0"], |p| {
        p.policy = PlacementPolicy::Queue;
        p.never_lead = Some(selector("role", "reader"));
    });
    let leader = [("leaderlock.dev/s0", "leader"), ("leaderlock.dev/s0.token", "7")];
    let v = view(&ll, &[with_label(pod("a", 1, true, &leader), "role", "reader"), pod("b", 2, true, &[("leaderlock.dev/s0", "standby")])]);
    let steps = before_etcd(&observed(&ll, &v, &[held("s0", "a", 7)]), now());
    let Step::Pod { name, to, .. } = &steps[0] else { panic!("a demotion first: {steps:?}") };
    assert_eq!((name.as_str(), to.annotations.get("leaderlock.dev/s0").map(String::as_str)), ("a", Some("standby")));
    assert_eq!(syncs(&steps), [("s0".to_string(), vec!["uid-b".to_string()])]);
}

#[test]
fn vacant_locks_are_spread_by_creating_each_targets_key_first_with_no_move() {
    let ll = spread(&["s0", "s1", "s2"], |_| {});
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[]), pod("c", 3, true, &[])]);
    let steps = before_etcd(&observed(&ll, &v, &[]), now());
    assert_eq!(moves(&steps), []);
    let firsts: Vec<String> = syncs(&steps).into_iter().map(|(_, w)| w[0].clone()).collect();
    assert_eq!(firsts, ["uid-a", "uid-b", "uid-c"]);
    let wanted: Vec<Key> = ["a", "b", "c"].iter().map(|p| key(p)).collect();
    assert_eq!(wanted_order(&Decision::default(), "x", wanted.clone()), wanted);
}

#[test]
fn a_preferred_pod_takes_locks_only_after_the_delay_and_the_controller_wakes_up_then() {
    let ll = spread(&["s0", "s1"], |p| {
        p.preferred = Some(selector("zone", "a"));
        p.stabilization_seconds = 30;
    });
    let mut fresh = (*with_label(pod("z", 5, true, &[]), "zone", "a")).clone();
    fresh.ready_since = Some(now() - jiff::SignedDuration::from_secs(10));
    let v = view(&ll, &[pod("a", 1, true, &[]), Arc::new(fresh)]);
    let o = observed(&ll, &v, &[held("s0", "a", 7), held("s1", "a", 8)]);
    let d = decide(&o, now());
    assert_eq!(d.moves, [], "z is not preferred (nor eligible) yet");
    assert!(!d.status.settled);
    assert_eq!(recheck_after(&d, now()), Some(Duration::from_secs(21)), "20 s left, plus a second of slack");
    let later = now() + jiff::SignedDuration::from_secs(21);
    let moves: Vec<(String, Why)> = decide(&o, later).moves.into_iter().map(|m| (m.to, m.why)).collect();
    assert_eq!(moves, [("uid-z".to_string(), Why::Preference), ("uid-z".to_string(), Why::Preference)]);
}

#[test]
fn a_paused_leaderlock_moves_nothing_and_a_queue_one_never_moves() {
    let mut ll = spread(&["s0", "s1"], |_| {});
    ll.spec.paused = true;
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let o = observed(&ll, &v, &[held("s0", "a", 7), held("s1", "a", 8)]);
    assert_eq!(moves(&before_etcd(&o, now())), []);
    let queue = leaderlock(&["s0", "s1"], None);
    let v = view(&queue, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let o = observed(&queue, &v, &[held("s0", "a", 7), held("s1", "a", 8)]);
    assert_eq!(moves(&before_etcd(&o, now())), []);
    assert_eq!(decide(&o, now()).status.distribution[0], PodLocks { pod: "a".into(), locks: 2 });
}

/// The limit of 256 locks (docs/contract.md §8): at 16 candidates, with the queue shown capped
/// at 16 and the longest pod names Kubernetes allows, the status stays under the 1.5 MiB an
/// etcd request (hence an object) may hold; with Deployment-style names it is under an eighth.
#[test]
fn the_status_of_256_shards_over_16_pods_fits_an_object() {
    use crate::resource::{LeaderLockStatus, LockStatus};
    let size = |name_len: usize| {
        let pods: Vec<String> = (0..16).map(|i| format!("{i:0>2}{}", "p".repeat(name_len - 2))).collect();
        let locks = crate::placement::shard_names(256)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, name)| LockStatus {
                name,
                holder: Some(pods[i % 16].clone()),
                fencing_token: Some(i64::MAX.to_string()),
                since: Some("2026-12-01T17:00:00Z".into()),
                candidates: 16,
                transitions: i64::from(i32::MAX),
                queue: pods.clone(),
            })
            .collect();
        let placement = PlacementStatus {
            policy: "Spread".into(),
            distribution: pods.iter().map(|p| PodLocks { pod: p.clone(), locks: 16 }).collect(),
            settled: true,
            ..Default::default()
        };
        let status = LeaderLockStatus { lock_count: 256, locks, placement: Some(placement), ..Default::default() };
        serde_json::to_vec(&status).unwrap().len()
    };
    let (longest, typical) = (size(253), size(28));
    assert!(longest < 1_572_864, "256 x 16 with 253-character names: {longest} bytes");
    assert!(typical < 1_572_864 / 8, "256 x 16 with 28-character names: {typical} bytes");
    println!("status at 256 shards x 16 pods: {longest} bytes (253-character names), {typical} bytes (28-character names)");
}
