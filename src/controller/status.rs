//! The LeaderLock status, built purely from what one reconcile observed: each lock's holder and
//! fencing token as etcd's mirror shows them, candidates, transitions, and the `Ready` condition.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;

use super::snapshot::{Holders, QueueNames};
use crate::index::NodeReport;
use crate::lock::LockKey;
use crate::pods::PodInfo;
use crate::resolve::{Resolution, selector_problem};
use crate::resource::{LeaderLock, LeaderLockStatus, LockStatus, reasons};

/// The candidate pod whose key is `h` (matched by pod UID, never by name alone).
fn holder_pod(h: &LockKey, candidates: &[Arc<PodInfo>]) -> Option<String> {
    let id = h.owner.as_deref()?;
    candidates.iter().find(|p| p.uid.as_deref() == Some(id)).map(|p| p.name.clone())
}

/// The status `ll` should report: one entry per lock of its spec (`mine`, as resolved), given
/// its candidates, the holder of every accepted prefix and everyone in line. `transitions` and
/// `since` carry over from `ll`'s status while the holder and token are unchanged.
pub fn build(
    ll: &LeaderLock,
    mine: &[(String, Resolution)],
    candidates: &[Arc<PodInfo>],
    holders: &Holders,
    queues: &QueueNames,
    now: jiff::Timestamp,
) -> LeaderLockStatus {
    let old = ll.status.clone().unwrap_or_default();
    let since = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut locks = Vec::new();
    let mut rejected = Vec::new();
    let mut without_holder = 0;
    for (lock, res) in mine {
        let prev = old.locks.iter().find(|l| &l.name == lock).cloned().unwrap_or_default();
        let mut st =
            LockStatus { name: lock.clone(), candidates: candidates.len() as i32, transitions: prev.transitions, ..Default::default() };
        match res {
            Resolution::Rejected { reason, message } => {
                rejected.push((*reason, format!("lock {lock}: {message}")));
                st.candidates = 0;
            }
            Resolution::Accepted(prefix) => {
                st.queue = queues.get(prefix).cloned().unwrap_or_default();
                if let Some(h) = holders.get(prefix) {
                    st.holder = match holder_pod(h, candidates) {
                        Some(pod) => Some(pod),
                        // Another cluster's pod (`<cluster>/<ns>/<pod>`) or an outside holder (`etcd:<key>`).
                        None if h.owner.is_none() => Some(h.outside_name()),
                        // Paused: a holder that stopped being a candidate keeps the lock.
                        None if ll.spec.paused => st.queue.first().cloned(),
                        None => None, // a key of a pod that is leaving: not a holder to report
                    };
                    if st.holder.is_some() {
                        st.fencing_token = Some(h.token.to_string());
                    }
                }
                if st.holder.is_none() {
                    without_holder += 1;
                }
                if st.holder != prev.holder || st.fencing_token != prev.fencing_token {
                    if st.holder.is_some() {
                        st.transitions += 1;
                    }
                    st.since = st.holder.as_ref().map(|_| since.clone());
                } else {
                    st.since = prev.since.clone();
                }
            }
        }
        locks.push(st);
    }
    if let Some(problem) = selector_problem(&ll.spec.selector) {
        rejected.insert(0, (reasons::INVALID_SELECTOR, format!("{problem}; no pod is a candidate until it is fixed")));
    }
    let ready = if let Some((reason, _)) = rejected.first() {
        let msg = rejected.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
        condition(ll, false, reason, &msg, now)
    } else if candidates.is_empty() {
        condition(
            ll,
            true,
            reasons::NO_CANDIDATES,
            "the selector matches no Running and Ready pod; locks will be elected when one appears",
            now,
        )
    } else if without_holder > 0 {
        condition(ll, false, "Electing", &format!("{without_holder} lock(s) have no holder yet"), now)
    } else {
        condition(ll, true, reasons::ELECTED, "every lock has a holder", now)
    };
    let mut conditions = old.conditions.clone();
    set_condition(&mut conditions, ready);
    if let Some(paused) = paused_condition(ll, &conditions, now) {
        set_condition(&mut conditions, paused);
    }
    LeaderLockStatus {
        observed_generation: ll.meta().generation,
        lock_count: ll.spec.lock_specs().len() as i32,
        locks,
        conditions,
        placement: None,
    }
}

/// Sets the `NodeLost` condition from `report` (docs/contract.md §3.2): `True` naming the lost
/// nodes and their pods, `Unknown` when Leases cannot tell, `False` once every node renews again.
/// Absent while nothing was ever to report, so LeaderLocks on healthy nodes keep the status they
/// always had. The message names no duration that grows: it changes only when the verdict does.
pub fn set_node_condition(status: &mut LeaderLockStatus, ll: &LeaderLock, report: &NodeReport, now: jiff::Timestamp) {
    let shown = status.conditions.iter().any(|c| c.type_ == reasons::NODE_LOST);
    let Some(threshold) = report.threshold else {
        if shown {
            let c = condition(
                ll,
                false,
                reasons::NODE_LOSS_OFF,
                "nodeLostAfterSeconds is 0: nodes are judged by their pods' readiness alone",
                now,
            );
            set_condition(&mut status.conditions, Condition { type_: reasons::NODE_LOST.into(), ..c });
        }
        return;
    };
    let after = format!("{}s", threshold.as_secs());
    let (state, reason, message) = if !report.lost.is_empty() {
        let nodes: Vec<String> = report.lost.iter().map(|(node, pods)| format!("{node} (pods {})", pods.join(", "))).collect();
        let message = format!(
            "node Lease in kube-node-lease not renewed for {after}: {}; their pods are not candidates until the node renews",
            nodes.join("; ")
        );
        ("True", reasons::NODE_LOST, message)
    } else if let Some(why) = &report.unreadable {
        let message = format!(
            "cannot read the node Leases in kube-node-lease ({why}): a lost node is noticed only when its pods turn NotReady; grant list and watch on leases there (the chart does) or set nodeLostAfterSeconds: 0"
        );
        ("Unknown", reasons::NODE_LEASES_UNREADABLE, message)
    } else if !report.without_lease.is_empty() {
        let message = format!(
            "no Lease in kube-node-lease for node(s) {}: their pods are judged by readiness alone",
            report.without_lease.join(", ")
        );
        ("Unknown", reasons::NO_NODE_LEASE, message)
    } else if shown {
        ("False", reasons::NODES_RENEWING, format!("every candidate's node renewed its Lease within {after}"))
    } else {
        return;
    };
    let c = Condition { type_: reasons::NODE_LOST.into(), status: state.into(), ..condition(ll, true, reason, &message, now) };
    set_condition(&mut status.conditions, c);
}

/// `ll`'s status with its `Ready` condition replaced by a failure users can act on.
pub fn failed(ll: &LeaderLock, reason: &str, message: &str, now: jiff::Timestamp) -> LeaderLockStatus {
    let mut status = ll.status.clone().unwrap_or_default();
    set_condition(&mut status.conditions, condition(ll, false, reason, message, now));
    status
}

/// `Paused=True` while `spec.paused`; `Paused=False` once resumed (absent if never paused, so
/// LeaderLocks that never pause keep the status they always had).
fn paused_condition(ll: &LeaderLock, conditions: &[Condition], now: jiff::Timestamp) -> Option<Condition> {
    let was_paused = conditions.iter().any(|c| c.type_ == reasons::PAUSED);
    let (ok, reason, message) = if ll.spec.paused {
        (
            true,
            reasons::SPEC_PAUSED,
            "holders are frozen: no failover and no handover until spec.paused is false; a holder that leaves keeps its lock meanwhile",
        )
    } else if was_paused {
        (false, reasons::RESUMED, "holders change again as candidates come and go")
    } else {
        return None;
    };
    Some(Condition { type_: reasons::PAUSED.into(), ..condition(ll, ok, reason, message, now) })
}

/// The `Ready` condition, for the generation of `ll` this reconcile read.
fn condition(ll: &LeaderLock, ok: bool, reason: &str, message: &str, now: jiff::Timestamp) -> Condition {
    Condition {
        type_: reasons::READY.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: ll.meta().generation,
        last_transition_time: Time(now),
    }
}

/// Replaces the condition of the same type, keeping its transition time if status is unchanged.
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{P, holds, leaderlock, now, pod};

    fn ready(s: &LeaderLockStatus) -> (&str, &str, &str) {
        let c = s.conditions.iter().find(|c| c.type_ == reasons::READY).unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    fn accepted() -> Vec<(String, Resolution)> {
        vec![("ledger".to_string(), Resolution::Accepted(P.into()))]
    }

    #[test]
    fn a_new_holder_is_reported_with_its_token_since_now_and_one_more_transition() {
        let ll = leaderlock(&["ledger"], None);
        let s = build(&ll, &accepted(), &[pod("a", 1, true, &[]), pod("b", 2, true, &[])], &holds("a", 7), &QueueNames::new(), now());
        let lock = LockStatus {
            name: "ledger".into(),
            holder: Some("a".into()),
            fencing_token: Some("7".into()),
            since: Some("2027-01-15T08:00:00Z".into()),
            candidates: 2,
            transitions: 1,
            queue: vec![],
        };
        assert_eq!((s.observed_generation, s.lock_count, &s.locks[..]), (Some(3), 1, &[lock][..]));
        assert_eq!(ready(&s), ("True", reasons::ELECTED, "every lock has a holder"));
        // The same holder and token later: nothing changes, not even `since`.
        let again = build(
            &leaderlock(&["ledger"], Some(s.clone())),
            &accepted(),
            &[pod("a", 1, true, &[])],
            &holds("a", 7),
            &QueueNames::new(),
            now() + jiff::SignedDuration::from_secs(60),
        );
        assert_eq!((again.locks[0].since.as_deref(), again.locks[0].transitions), (Some("2027-01-15T08:00:00Z"), 1));
        assert_eq!(again.conditions, s.conditions, "the transition time stays while Ready stays True");
    }

    #[test]
    fn a_holder_outside_kubernetes_is_its_etcd_key_and_a_leaving_pods_key_is_no_holder() {
        let ll = leaderlock(&["ledger"], None);
        let external = [(P.to_string(), LockKey { key: format!("{P}/694d"), token: 5, owner: None, name: None })].into();
        let s = build(&ll, &accepted(), &[pod("a", 1, true, &[])], &external, &QueueNames::new(), now());
        assert_eq!((s.locks[0].holder.as_deref(), s.locks[0].fencing_token.as_deref()), (Some(&*format!("etcd:{P}/694d")), Some("5")));
        // b's key still holds, but b is no candidate any more: no holder until etcd moves on.
        let s = build(&ll, &accepted(), &[pod("a", 1, true, &[])], &holds("b", 9), &QueueNames::new(), now());
        assert_eq!((s.locks[0].holder.as_deref(), s.locks[0].fencing_token.as_deref()), (None, None));
        assert_eq!(ready(&s), ("False", "Electing", "1 lock(s) have no holder yet"));
    }

    #[test]
    fn rejected_locks_count_no_candidates_and_make_ready_false_with_every_reason() {
        let ll = leaderlock(&["ledger", "report"], None);
        let rejected = Resolution::Rejected { reason: reasons::LOCK_NAME_CONFLICT, message: "taken".into() };
        let mine = vec![accepted().remove(0), ("report".to_string(), rejected)];
        let s = build(&ll, &mine, &[pod("a", 1, true, &[])], &holds("a", 7), &QueueNames::new(), now());
        assert_eq!((s.locks[1].candidates, s.locks[1].holder.as_deref()), (0, None));
        assert_eq!(ready(&s), ("False", reasons::LOCK_NAME_CONFLICT, "lock report: taken"));
    }

    #[test]
    fn no_candidates_is_ready_and_says_when_locks_will_be_elected() {
        let s = build(&leaderlock(&["ledger"], None), &accepted(), &[], &Holders::new(), &QueueNames::new(), now());
        assert_eq!(ready(&s).0, "True");
        assert_eq!(ready(&s).1, reasons::NO_CANDIDATES);
        assert_eq!(s.locks[0].candidates, 0);
    }
}
