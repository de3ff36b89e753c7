//! Unit tests of a plan's steps.

use std::sync::Arc;

use super::*;
use crate::controller::snapshot::{Holders, QueueNames, Snapshot};
use crate::fixtures::{self, P, holds, leaderlock, now, pod, snapshot as observed, view};
use crate::lock::Candidate;
use crate::pods::Matcher;
use crate::resource::LockStatus;

/// The steps before etcd, decided once from `o`, as a reconcile does.
pub(super) fn before(o: &Snapshot) -> Vec<Step> {
    before_etcd(o, &decide(o, now()))
}

/// The steps after etcd, decided from the fresh snapshot `o` (no placement move before it).
pub(super) fn after(o: &Snapshot) -> Vec<Step> {
    after_etcd(o, &decide(o, now()), &BTreeMap::new(), now())
}

fn keys(pairs: &[(&str, &str)]) -> PodKeys {
    PodKeys { annotations: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() }
}

fn cand(name: &str) -> Candidate {
    Candidate { id: format!("uid-{name}"), name: format!("ns/{name}") }
}

fn write(name: &str, from: &[(&str, &str)], to: &[(&str, &str)]) -> Step {
    Step::Pod { name: name.into(), uid: Some(format!("uid-{name}")), from: keys(from), to: keys(to) }
}

const STANDBY: (&str, &str) = ("leaderlock.dev/ledger", "standby");
const LEADER: (&str, &str) = ("leaderlock.dev/ledger", "leader");

fn accepted() -> Vec<(String, Resolution)> {
    vec![("ledger".to_string(), Resolution::Accepted(P.into()))]
}

#[test]
fn a_first_election_syncs_etcd_oldest_pod_first_then_settles_standbys_before_promoting() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("b", 2, true, &[]), pod("a", 1, true, &[])]);
    let o = observed(&ll, &v, Holders::new());
    let before = before(&o);
    assert_eq!(before, [Step::Sync { lock: "ledger".into(), prefix: P.into(), wanted: vec![cand("a"), cand("b")], ttl: 15 }]);
    let after = after(&fixtures::after(&o, &before, holds("a", 7)));
    assert_eq!(after[..2], [write("b", &[], &[STANDBY]), write("a", &[], &[LEADER, ("leaderlock.dev/ledger.token", "7")])]);
    assert!(matches!(&after[2], Step::Status(s) if s.locks[0].holder.as_deref() == Some("a")));
    let Step::Publish(changes) = &after[3] else { panic!("a holder change to publish: {after:?}") };
    assert_eq!(
        changes,
        &[HolderChange { lock: "ledger".into(), prefix: Some(P.into()), from: None, to: "a".into(), token: Some("7".into()), why: None }]
    );
    assert_eq!(after.len(), 4);
}

#[test]
fn a_leader_that_stops_being_ready_is_demoted_before_its_key_goes_and_promotion_comes_last() {
    let leader = [LEADER, ("leaderlock.dev/ledger.token", "7")];
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, false, &leader), pod("b", 2, true, &[STANDBY])]);
    let o = observed(&ll, &v, holds("a", 7));
    let before = before(&o);
    assert_eq!(before[0], write("a", &leader, &[]), "demoted (and unlabelled) before etcd");
    assert_eq!(before[1], Step::Sync { lock: "ledger".into(), prefix: P.into(), wanted: vec![cand("b")], ttl: 15 });
    assert_eq!(
        after(&fixtures::after(&o, &before, holds("b", 9)))[0],
        write("b", &[STANDBY], &[LEADER, ("leaderlock.dev/ledger.token", "9")])
    );
}

#[test]
fn a_leader_whose_holder_is_no_longer_known_is_demoted_without_any_etcd_step() {
    let leader = [LEADER, ("leaderlock.dev/ledger.token", "7")];
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &leader)]);
    // The holder's lease is at risk: the engine reports no holder.
    assert_eq!(demotions(&observed(&ll, &v, Holders::new())), [write("a", &leader, &[STANDBY])]);
    assert_eq!(demotions(&observed(&ll, &v, holds("a", 7))), []);
}

#[test]
fn nothing_to_write_when_pods_and_status_already_say_what_etcd_says() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[LEADER, ("leaderlock.dev/ledger.token", "7")])]);
    let o = observed(&ll, &v, holds("a", 7));
    let d = decide(&o, now());
    let mut status = status::build(&ll, &d.mine, &d.candidates, &o.holders, &o.queue_names(), now());
    status.placement = Some(d.placed.status);
    let settled = leaderlock(&["ledger"], Some(status));
    let o = observed(&settled, &v, holds("a", 7));
    assert_eq!(after(&o), []);
}

#[test]
fn a_deleted_leaderlock_unlabels_its_pods_then_releases_its_keys() {
    let mut ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[STANDBY])]);
    ll.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let mut v = v;
    v.leaderlocks.insert("payments".into(), (Arc::new(ll.clone()), Matcher::new(&ll.spec.selector)));
    let o = observed(&ll, &v, Holders::new());
    assert_eq!(cleanup(&o), [write("a", &[STANDBY], &[]), Step::Release { lock: "ledger".into(), prefix: P.into() }]);
}

#[test]
fn holder_changes_are_published_only_once_the_status_reporting_them_is_written() {
    // A failed status write stops the steps; the retry reads the old status and would
    // announce the same change again had it been published first.
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[LEADER, ("leaderlock.dev/ledger.token", "7")])]);
    let steps = after(&observed(&ll, &v, holds("a", 7)));
    let at = |f: fn(&Step) -> bool| steps.iter().position(f).unwrap();
    assert!(at(|s| matches!(s, Step::Status(_))) < at(|s| matches!(s, Step::Publish(_))), "{steps:?}");
}

#[test]
fn a_lock_removed_from_the_spec_is_released_after_the_syncs_and_leaves_the_status() {
    let leader = [LEADER, ("leaderlock.dev/ledger.token", "7"), ("leaderlock.dev/report", "leader"), ("leaderlock.dev/report.token", "8")];
    let held = leaderlock(&["ledger", "report"], None);
    let v = view(&held, &[pod("a", 1, true, &leader)]);
    let reported = status::build(&held, &v.resolved["payments"], &[pod("a", 1, true, &[])], &holds("a", 7), &QueueNames::new(), now());
    let ll = leaderlock(&["ledger"], Some(reported));
    let mut v = view(&ll, &[pod("a", 1, true, &leader)]);
    v.released = vec![("report".into(), "/shared/report".into())]; // what the index found
    let o = observed(&ll, &v, holds("a", 7));
    let before = before(&o);
    assert_eq!(before[0], write("a", &leader, &leader[..2]), "the leader of the removed lock is demoted first");
    assert!(matches!(before[1], Step::Sync { .. }));
    assert_eq!(before[2..], [Step::Release { lock: "report".into(), prefix: "/shared/report".into() }]);
    let after = after(&fixtures::after(&o, &before, holds("a", 7)));
    let Some(Step::Status(s)) = after.first() else { panic!("a status without the removed lock: {after:?}") };
    assert_eq!(s.locks.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["ledger"]);
}

fn status(holder: Option<&str>, token: Option<&str>) -> LeaderLockStatus {
    let lock =
        LockStatus { name: "ledger".into(), holder: holder.map(Into::into), fencing_token: token.map(Into::into), ..Default::default() };
    LeaderLockStatus { locks: vec![lock], ..Default::default() }
}

#[test]
fn a_holder_change_is_a_new_holder_or_a_new_token_never_a_lost_holder() {
    let change = |from: Option<&str>, to: &str, token: &str| HolderChange {
        lock: "ledger".into(),
        prefix: Some(P.into()),
        from: from.map(Into::into),
        to: to.into(),
        token: Some(token.into()),
        why: None,
    };
    let mine = accepted();
    assert_eq!(holder_changes(&status(Some("a"), Some("7")), &status(Some("a"), Some("7")), &mine), []);
    assert_eq!(holder_changes(&status(Some("a"), Some("7")), &status(Some("b"), Some("9")), &mine), [change(Some("a"), "b", "9")]);
    assert_eq!(holder_changes(&status(Some("a"), Some("7")), &status(Some("a"), Some("12")), &mine), [change(Some("a"), "a", "12")]);
    assert_eq!(holder_changes(&status(Some("a"), Some("7")), &status(None, None), &mine), []);
    assert_eq!(
        holder_changes(&LeaderLockStatus::default(), &status(Some("etcd:/x/1"), Some("3")), &mine),
        [change(None, "etcd:/x/1", "3")]
    );
}

#[test]
fn a_promotion_is_followed_by_one_resync_write_once_due_and_nothing_after() {
    use crate::controller::snapshot::ResyncGate;
    use crate::pods::RESYNC_KEY;
    let ll = leaderlock(&["ledger"], None);
    let promoted = [LEADER, ("leaderlock.dev/ledger.token", "7")];
    let v = view(&ll, &[pod("a", 1, true, &promoted), pod("b", 2, true, &[STANDBY])]);
    let gate = |not_yet: &[&str]| ResyncGate { enabled: true, not_yet: not_yet.iter().map(|s| s.to_string()).collect() };
    let pending = Snapshot { resync: gate(&["a"]), ..observed(&ll, &v, holds("a", 7)) };
    assert!(!after(&pending).iter().any(|s| matches!(s, Step::Pod { .. })), "not due yet: no pod write");
    let due = Snapshot { resync: gate(&[]), ..observed(&ll, &v, holds("a", 7)) };
    let steps = after(&due);
    let writes: Vec<&Step> = steps.iter().filter(|s| matches!(s, Step::Pod { .. })).collect();
    let [Step::Pod { name, from, to, .. }] = writes[..] else { panic!("one resync write: {writes:?}") };
    assert_eq!(name, "a", "the standby that never led needs none");
    assert_eq!((from.annotations.get(RESYNC_KEY), to.annotations.len()), (None, 3), "the role keys and the new digest");
    let settled = pod("a", 1, true, &to.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
    let v = view(&ll, &[settled, pod("b", 2, true, &[STANDBY])]);
    let again = Snapshot { resync: gate(&[]), ..observed(&ll, &v, holds("a", 7)) };
    assert!(!after(&again).iter().any(|s| matches!(s, Step::Pod { .. })), "idle: nothing more");
}

/// Pods `b` and `c` on `node-b`, silent for 20 s; `a` on `node-a`, renewing.
fn on_nodes() -> (crate::node_loss::Silence, Vec<Arc<crate::pods::PodInfo>>) {
    use crate::node_loss::{Sight, Silence};
    use std::time::Duration;
    let on = |p: Arc<crate::pods::PodInfo>, node: &str| Arc::new(crate::pods::PodInfo { node: Some(node.into()), ..(*p).clone() });
    let pods = vec![
        on(pod("a", 3, true, &[STANDBY]), "node-a"),
        on(pod("b", 1, true, &[LEADER, ("leaderlock.dev/ledger.token", "7")]), "node-b"),
        on(pod("c", 2, true, &[STANDBY]), "node-b"),
    ];
    let nodes = [("node-a".to_string(), Duration::from_secs(2)), ("node-b".to_string(), Duration::from_secs(20))].into();
    let silence =
        Silence { sight: Sight::Seeing, nodes, freshest: Some(Duration::from_secs(2)), default_after: Some(Duration::from_secs(15)) };
    (silence, pods)
}

#[test]
fn every_pod_of_a_lost_node_stops_being_a_candidate_at_once_and_the_status_says_so() {
    let ll = leaderlock(&["ledger"], None);
    let (silence, pods) = on_nodes();
    let mut v = view(&ll, &pods);
    v.nodes = silence;
    let o = observed(&ll, &v, holds("b", 7));
    let before = before(&o);
    // The holder is demoted (its keys removed, as for any pod that stops being a candidate)
    // before its etcd key goes, and its neighbour on the lost node is no
    // candidate either: the lock can only go to a.
    assert_eq!(before[0], write("b", &[LEADER, ("leaderlock.dev/ledger.token", "7")], &[]));
    assert_eq!(before[1], Step::Sync { lock: "ledger".into(), prefix: P.into(), wanted: vec![cand("a")], ttl: 15 });
    let after = after(&fixtures::after(&o, &before, holds("a", 9)));
    let Some(Step::Status(status)) = after.iter().find(|s| matches!(s, Step::Status(_))) else { panic!("a status: {after:?}") };
    let lost = status.conditions.iter().find(|c| c.type_ == "NodeLost").expect("a NodeLost condition");
    assert_eq!((lost.status.as_str(), lost.reason.as_str()), ("True", "NodeLost"));
    assert!(lost.message.contains("node-b (pods b, c)") && lost.message.contains("15s"), "{}", lost.message);
    assert_eq!(status.locks[0].candidates, 1);
    assert!(after.iter().any(|s| matches!(s, Step::NodeLost(note) if note == &lost.message)), "one NodeLost Event: {after:?}");
    // The same verdict later announces nothing again.
    let again = leaderlock(&["ledger"], Some(status.clone()));
    let o2 = observed(&again, &v, holds("a", 9));
    assert!(!self::after(&o2).iter().any(|s| matches!(s, Step::NodeLost(_))));
}

#[test]
fn a_leaderlock_with_node_loss_off_keeps_judging_by_readiness() {
    let mut ll = leaderlock(&["ledger"], None);
    ll.spec.node_lost_after_seconds = Some(0);
    let (silence, pods) = on_nodes();
    let mut v = view(&ll, &pods);
    v.nodes = silence;
    let o = observed(&ll, &v, holds("b", 7));
    assert!(before(&o).iter().all(|s| !matches!(s, Step::Pod { .. })), "b stays leader");
    let after = after(&o);
    let Some(Step::Status(status)) = after.iter().find(|s| matches!(s, Step::Status(_))) else { panic!("a status: {after:?}") };
    assert!(status.conditions.iter().all(|c| c.type_ != "NodeLost"));
}
