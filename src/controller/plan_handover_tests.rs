//! Unit tests of the Handover and pause steps of a plan.

use super::tests::{P, holds, leaderlock, now, pod, view};
use super::*;
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

fn line(pods: &[(&str, i64)]) -> Lines {
    let h = |(p, t): &(&str, i64)| Holder {
        key: format!("{P}/uid-{p}"),
        token: *t,
        candidate: Some(format!("uid-{p}")),
        name: Some(format!("ns/{p}")),
    };
    [(P.to_string(), pods.iter().map(h).collect())].into()
}

/// What a plan observes: `v`'s pods with the keys they carry, `holder` holding the lock, `line`
/// in etcd's order, and the open `requests`.
fn observed<'a>(
    ll: &'a LeaderLock,
    v: &'a View,
    holder: (&str, i64),
    in_line: &[(&str, i64)],
    requests: Vec<Arc<Handover>>,
) -> Observed<'a> {
    let current = v.pods.iter().map(|(n, p)| (n.clone(), p.keys())).collect();
    Observed { ll, view: v, current, holders: holds(holder.0, holder.1), lines: line(in_line), requests, moved: Default::default() }
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
    let mut o = observed(&ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![request("r1", Some("b"), Some("a"))]);
    let before = before_etcd(&o, now());
    let accepted = status_of(&before, "r1").expect("accepted first");
    assert_eq!((accepted.phase, accepted.from.as_deref(), accepted.from_token.as_deref()), (Some(Phase::Pending), Some("a"), Some("7")));
    let demote = before.iter().position(|s| matches!(s, Step::Pod { name, to, .. } if name == "a" && to.annotations.get("leaderlock.dev/ledger").map(String::as_str) == Some("standby")));
    let requeue = before.iter().position(|s| matches!(s, Step::Requeue { to: Some(id), from_token: 7, .. } if id == "uid-b"));
    assert!(demote.is_some() && requeue.is_some() && demote < requeue, "demote before the move: {before:?}");
    o.absorb(&before);
    o.holders = holds("b", 9);
    o.lines = line(&[("b", 9), ("a", 10)]);
    let after = after_etcd(&o, now());
    assert!(after.iter().any(|s| matches!(s, Step::Pod { name, to, .. } if name == "b" && to.annotations.get("leaderlock.dev/ledger").map(String::as_str) == Some("leader"))));
    let done = status_of(&after, "r1").expect("done after the move");
    assert_eq!((done.phase, done.holder.as_deref(), done.fencing_token.as_deref()), (Some(Phase::Done), Some("b"), Some("9")));
}

#[test]
fn a_step_down_carried_out_before_a_restart_is_not_carried_out_again() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &[]), pod("b", 2, true, &[])]);
    let mut r = (*request("r1", None, None)).clone();
    r.status =
        Some(HandoverStatus { phase: Some(Phase::Pending), from: Some("a".into()), from_token: Some("7".into()), ..Default::default() });
    let o = observed(&ll, &v, ("b", 9), &[("b", 9), ("a", 10)], vec![Arc::new(r)]);
    let before = before_etcd(&o, now());
    assert!(!before.iter().any(|s| matches!(s, Step::Requeue { .. })), "{before:?}");
    assert_eq!(status_of(&before, "r1").and_then(|s| s.phase), Some(Phase::Done));
}

#[test]
fn requests_that_cannot_be_made_as_asked_are_refused_and_move_nothing() {
    let ll = leaderlock(&["ledger"], None);
    let v = view(&ll, &[pod("a", 1, true, &LEADER_A), pod("b", 2, true, &[]), pod("c", 3, false, &[])]);
    let refusal = |r: Arc<Handover>, ll: &LeaderLock| {
        let o = observed(ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![r]);
        let steps = before_etcd(&o, now());
        assert!(!steps.iter().any(|s| matches!(s, Step::Requeue { .. })), "{steps:?}");
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
    let steps = before_etcd(&o, now());
    assert_eq!(status_of(&steps, "r1").and_then(|s| s.phase), Some(Phase::Superseded));
    assert!(steps.iter().any(|s| matches!(s, Step::Requeue { request, to: None, .. } if request.as_deref() == Some("r2"))));
}

#[test]
fn a_paused_leaderlock_plans_no_etcd_change_and_keeps_a_holder_that_is_no_longer_ready() {
    let mut ll = leaderlock(&["ledger"], None);
    ll.spec.paused = true;
    let v = view(&ll, &[pod("a", 1, false, &LEADER_A), pod("b", 2, true, &[("leaderlock.dev/ledger", "standby")])]);
    let o = observed(&ll, &v, ("a", 7), &[("a", 7), ("b", 8)], vec![]);
    let before = before_etcd(&o, now());
    assert!(before.iter().all(|s| matches!(s, Step::Claim(_))), "no pod write, no sync: {before:?}");
    let after = after_etcd(&o, now());
    let Some(Step::Status(s)) = after.iter().find(|s| matches!(s, Step::Status(_))) else { panic!("{after:?}") };
    assert_eq!(s.locks[0].holder.as_deref(), Some("a"));
    assert!(s.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "True"));
    assert!(!after.iter().any(|s| matches!(s, Step::Pod { .. })), "{after:?}");
}
