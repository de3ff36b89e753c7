//! Unit tests of the Handover and pause steps of a plan.

use std::sync::Arc;

use super::tests::{after, before};
use super::*;
use crate::controller::snapshot::{Queues, Snapshot};
use crate::fixtures::{self, P, holds, leaderlock, now, pod, view};
use crate::index::View;
use crate::resource::LeaderLock;
use crate::resource::handover::Handover;
use crate::resource::handover::{HandoverSpec, Phase};

fn request(name: &str, to: Option<&str>, if_holder: Option<&str>) -> Arc<Handover> {
    let spec = HandoverSpec {
        leader_lock: "payments".into(),
        lock: "ledger".into(),
        to: to.map(Into::into),
        if_holder: if_holder.map(Into::into),
    };
    let mut r = Handover::new(name, spec);
    r.metadata.namespace = Some("ns".into());
    Arc::new(r)
}

fn queue(pods: &[(&str, i64)]) -> Queues {
    [(P.to_string(), pods.iter().map(|(p, t)| fixtures::key(P, p, *t)).collect())].into()
}

/// What a plan decides from: `v`'s pods with the keys they carry, `holder` holding the lock,
/// `in_line` in etcd's order, and the open `requests`.
fn observed<'a>(
    ll: &'a LeaderLock,
    v: &'a View,
    holder: (&str, i64),
    in_line: &[(&str, i64)],
    requests: Vec<Arc<Handover>>,
) -> Snapshot<'a> {
    Snapshot { queues: queue(in_line), requests, ..fixtures::snapshot(ll, v, holds(holder.0, holder.1)) }
}

/// A step-down already accepted from `a` (token 7), as a controller that died after accepting
/// it left it.
fn accepted_step_down(name: &str) -> Arc<Handover> {
    let mut r = (*request(name, None, None)).clone();
    r.status =
        Some(HandoverStatus { phase: Some(Phase::Pending), from: Some("a".into()), from_token: Some("7".into()), ..Default::default() });
    Arc::new(r)
}

fn status_of<'a>(steps: &'a [Step], name: &str) -> Option<&'a HandoverStatus> {
    steps.iter().find_map(|s| match s {
        Step::Request { name: n, status } if n == name => Some(status),
        _ => None,
    })
}

const LEADER_A: [(&str, &str); 2] = [("leaderlock.dev/ledger", "leader"), ("leaderlock.dev/ledger.token", "7")];

#[test]
fn a_handover_is_accepted_then_the_holder_demoted_then_the_lock_moved_then_the_target_promoted() {
    let ll = leaderlock(&["ledger"], None);
    let pods = [pod("a", 1, true, &LEADER_A), pod("b", 2, true, &[("leaderlock.dev/ledger", "standby")])];
    let v = view(&ll, &pods);
    let o = observed(&ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![request("r1", Some("b"), Some("a"))]);
    let before = before(&o);
    let accepted = status_of(&before, "r1").expect("accepted first");
    assert_eq!((accepted.phase, accepted.from.as_deref(), accepted.from_token.as_deref()), (Some(Phase::Pending), Some("a"), Some("7")));
    let demote = before.iter().position(|s| matches!(s, Step::Pod { name, to, .. } if name == "a" && to.annotations.get("leaderlock.dev/ledger").map(String::as_str) == Some("standby")));
    let moved = before.iter().position(|s| matches!(s, Step::Move { to: Some(id), from_token: 7, .. } if id == "uid-b"));
    assert!(demote.is_some() && moved.is_some() && demote < moved, "demote before the move: {before:?}");
    let moved = Snapshot { queues: queue(&[("b", 9), ("a", 10)]), ..fixtures::after(&o, &before, holds("b", 9)) };
    let after = after(&moved);
    assert!(after.iter().any(|s| matches!(s, Step::Pod { name, to, .. } if name == "b" && to.annotations.get("leaderlock.dev/ledger").map(String::as_str) == Some("leader"))));
    let done = status_of(&after, "r1").expect("done after the move");
    assert_eq!((done.phase, done.holder.as_deref(), done.fencing_token.as_deref()), (Some(Phase::Done), Some("b"), Some("9")));
}

#[test]
fn a_step_down_carried_out_before_a_restart_is_not_carried_out_again() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let r = accepted_step_down("r1");
    let o = observed(&ll, &v, ("b", 9), &[("b", 9), ("a", 10)], vec![r]);
    let before = before(&o);
    assert!(!before.iter().any(|s| matches!(s, Step::Move { .. })), "{before:?}");
    assert_eq!(status_of(&before, "r1").and_then(|s| s.phase), Some(Phase::Done));
}

#[test]
fn requests_that_cannot_be_made_as_asked_are_refused_and_move_nothing() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &LEADER_A), pod("b", 2, true, &[]), pod("c", 3, false, &[])]);
    let refusal = |r: Arc<Handover>, ll: &LeaderLock| {
        let o = observed(ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![r]);
        let steps = before(&o);
        assert!(!steps.iter().any(|s| matches!(s, Step::Move { .. })), "{steps:?}");
        let s = status_of(&steps, "r").cloned().unwrap();
        (s.phase, s.reason)
    };
    let refused = |reason: &str| (Some(Phase::Refused), Some(reason.to_string()));
    use crate::resource::handover::reasons;
    assert_eq!(refusal(request("r", Some("b"), Some("b")), &ll), refused(reasons::NOT_HOLDER));
    assert_eq!(refusal(request("r", Some("c"), None), &ll), refused(reasons::NOT_CANDIDATE));
    assert_eq!(refusal(request("r", Some("zz"), None), &ll), refused(reasons::NOT_CANDIDATE));
    let mut other = (*request("r", None, None)).clone();
    other.spec.lock = "report".into();
    assert_eq!(refusal(Arc::new(other), &ll), refused(reasons::LOCK_NOT_FOUND));
    let mut paused = ll.clone();
    paused.spec.paused = true;
    assert_eq!(refusal(request("r", Some("b"), None), &paused), refused(reasons::PAUSED));
    assert_eq!(refusal(request("r", Some("a"), None), &ll), (Some(Phase::Done), Some(reasons::ALREADY_HOLDER.to_string())));
}

#[test]
fn of_two_open_requests_for_a_lock_the_newer_is_judged_and_the_older_superseded() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &LEADER_A), pod("b", 2, true, &[])]);
    let mut older = (*request("r1", Some("b"), None)).clone();
    older.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let mut newer = (*request("r2", None, None)).clone();
    newer.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now() + jiff::SignedDuration::from_secs(1)));
    let o = observed(&ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![Arc::new(older), Arc::new(newer)]);
    let steps = before(&o);
    assert_eq!(status_of(&steps, "r1").and_then(|s| s.phase), Some(Phase::Superseded));
    assert!(steps.iter().any(|s| matches!(s, Step::Move { request, to: None, .. } if request.as_deref() == Some("r2"))));
}

#[test]
fn a_paused_leaderlock_plans_no_etcd_change_and_keeps_a_holder_that_is_no_longer_ready() {
    let mut ll = leaderlock(&["ledger"], None);
    ll.spec.paused = true;
    let v = view(&ll, &[pod("a", 1, false, &LEADER_A), pod("b", 2, true, &[("leaderlock.dev/ledger", "standby")])]);
    let o = observed(&ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![]);
    let before = before(&o);
    assert_eq!(before, [], "no pod write, no sync");
    let after = after(&o);
    let Some(Step::Status(s)) = after.iter().find(|s| matches!(s, Step::Status(_))) else { panic!("{after:?}") };
    assert_eq!(s.locks[0].holder.as_deref(), Some("a"));
    assert!(s.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"));
    assert!(!after.iter().any(|s| matches!(s, Step::Pod { .. })), "{after:?}");
}

#[test]
fn a_step_down_to_an_outside_key_next_in_line_names_it_as_the_status_does() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let r = accepted_step_down("r1");
    let etcdctl = crate::lock::LockKey { key: format!("{P}/694d"), token: 8, owner: None, name: None };
    let o = Snapshot {
        holders: [(P.to_string(), etcdctl.clone())].into(),
        queues: [(P.to_string(), vec![etcdctl])].into(),
        requests: vec![r],
        ..fixtures::snapshot(&ll, &v, Default::default())
    };
    let done = status_of(&before(&o), "r1").cloned().expect("settled");
    let name = format!("etcd:{P}/694d");
    assert_eq!((done.phase, done.holder.as_deref()), (Some(Phase::Done), Some(name.as_str())));
    assert!(done.message.as_deref().is_some_and(|m| m.starts_with(&name)), "{done:?}");
}

#[test]
fn a_handover_to_a_never_lead_pod_is_refused_as_never_lead() {
    let mut ll = leaderlock(&["ledger"], None);
    let never = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("app".to_string(), "worker".to_string())].into()),
        ..Default::default()
    };
    ll.spec.placement = Some(crate::resource::PlacementSpec { never_lead: Some(never), ..Default::default() });
    let v = view(&ll, &[pod("a", 1, true, &LEADER_A), pod("b", 2, true, &[])]);
    let o = observed(&ll, &v, ("a", 7), &[("a", 7)], vec![request("r", Some("b"), None)]);
    let refused = status_of(&before(&o), "r").cloned().expect("settled");
    assert_eq!(refused.reason.as_deref(), Some(crate::resource::handover::reasons::NEVER_LEAD));
}
