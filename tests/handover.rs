//! Moving leadership on purpose (docs/contract.md §7): Handover requests and pause, against the
//! real apiserver and lock etcd, under the safety checker (at most one leader per lock, tokens
//! grow, no holder change without cause). One controller process serves every test.
mod common;

use std::time::Duration;

use common::checker::Checker;
use common::k8s::*;
use common::*;
use kube::api::Api;
use leaderlock::resource::handover::{Handover, HandoverStatus, Phase};

const WORKER: &[(&str, &str)] = &[("app", "worker")];
const T: Duration = Duration::from_secs(30);

fn apply_ll(ns: &str, paused: bool) {
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: payments}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  locks: [{{name: ledger}}]\n  paused: {paused}\n"
    );
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&yaml));
}

/// Ready pods `w-1`..`w-n`, LeaderLock `payments` with lock `ledger`, elected; the checker runs.
async fn setup(test: &str, pods: &[&str]) -> (String, Checker, kube::Client) {
    install_crd();
    shared_controller();
    let ns = namespace(test);
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    ready_pods(&c, &ns, pods, WORKER).await;
    apply_ll(&ns, false);
    elected(&c, &ns, "payments", "ledger", pods.len()).await;
    (ns, checker, c)
}

/// Creates a Handover of lock `ledger` and waits for its final status.
async fn hand_over(c: &kube::Client, ns: &str, name: &str, leader_lock: &str, to: Option<&str>, if_holder: Option<&str>) -> HandoverStatus {
    let mut spec = format!("leaderLock: {leader_lock}\n  lock: ledger\n");
    if let Some(to) = to {
        spec += &format!("  to: {to}\n");
    }
    if let Some(h) = if_holder {
        spec += &format!("  ifHolder: {h}\n");
    }
    let yaml = format!("apiVersion: leaderlock.dev/v1alpha1\nkind: Handover\nmetadata: {{name: {name}}}\nspec:\n  {spec}");
    kubectl_ok(&["create", "-n", ns, "-f", "-"], Some(&yaml));
    let api: Api<Handover> = Api::namespaced(c.clone(), ns);
    eventually(&format!("Handover {name} to reach a final phase"), T, || async {
        let s = api.get(name).await.ok()?.status?;
        s.phase.is_some_and(Phase::is_final).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn handing_over_to_each_candidate_in_turn_moves_the_lock_with_a_growing_token() {
    let (ns, checker, c) = setup("handover-each", &["w-1", "w-2", "w-3"]).await;
    let (mut holder, mut token) = elected(&c, &ns, "payments", "ledger", 3).await;
    for (i, to) in ["w-3", "w-2", "w-1", "w-2"].into_iter().enumerate() {
        let s = hand_over(&c, &ns, &format!("move-{i}"), "payments", Some(to), Some(&holder)).await;
        assert_eq!((s.phase, s.reason.as_deref(), s.holder.as_deref()), (Some(Phase::Done), Some("HandedOver"), Some(to)), "{s:?}");
        assert_eq!(s.from.as_deref(), Some(holder.as_str()));
        let (now, t) = elected(&c, &ns, "payments", "ledger", 3).await;
        assert_eq!(now, to);
        assert!(t > token, "the new holder's token {t} must exceed {token}");
        assert_eq!(s.fencing_token, Some(t.to_string()));
        (holder, token) = (now, t);
    }
    // A step-down hands to the next in line, and the queue in the status shows the order.
    let queue = leaderlock(&c, &ns, "payments").await.status.unwrap().locks[0].queue.clone();
    assert_eq!(queue.len(), 3);
    assert_eq!(queue[0], holder);
    let s = hand_over(&c, &ns, "step-down", "payments", None, None).await;
    assert_eq!((s.phase, s.holder.as_deref()), (Some(Phase::Done), Some(queue[1].as_str())));
    let (now, t) = elected(&c, &ns, "payments", "ledger", 3).await;
    assert!(now == queue[1] && t > token);
    // Handing to the holder is done at once, with nothing moved.
    let s = hand_over(&c, &ns, "already", "payments", Some(&now), None).await;
    assert_eq!((s.phase, s.reason.as_deref()), (Some(Phase::Done), Some("AlreadyHolder")));
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await, (now, t));
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_cannot_be_carried_out_as_asked_are_refused_with_a_reason_and_move_nothing() {
    let (ns, checker, c) = setup("handover-refused", &["w-1", "w-2", "w-3"]).await;
    let before = elected(&c, &ns, "payments", "ledger", 3).await;
    let other = ["w-1", "w-2", "w-3"].into_iter().find(|p| *p != before.0).unwrap();
    // Compare-and-swap: the request names a holder that does not hold.
    let s = hand_over(&c, &ns, "cas", "payments", Some(other), Some(other)).await;
    assert_eq!((s.phase, s.reason.as_deref()), (Some(Phase::Refused), Some("NotHolder")), "{s:?}");
    // A pod that is not Ready, and one that does not exist.
    set_ready(&c, &ns, other, false).await;
    elected(&c, &ns, "payments", "ledger", 2).await;
    let s = hand_over(&c, &ns, "not-ready", "payments", Some(other), None).await;
    assert_eq!(s.reason.as_deref(), Some("NotCandidate"), "{s:?}");
    let s = hand_over(&c, &ns, "nobody", "payments", Some("w-9"), None).await;
    assert_eq!(s.reason.as_deref(), Some("NotCandidate"), "{s:?}");
    // A terminating pod (held by a finalizer, as a pod with a long grace period would be).
    let third = ["w-1", "w-2", "w-3"].into_iter().find(|p| *p != before.0 && *p != other).unwrap();
    kubectl_ok(
        &["patch", "-n", &ns, "pod", third, "--type=merge", "-p", r#"{"metadata":{"finalizers":["test.leaderlock.dev/hold"]}}"#],
        None,
    );
    kubectl_ok(&["delete", "-n", &ns, "pod", third, "--wait=false"], None);
    elected(&c, &ns, "payments", "ledger", 1).await;
    let s = hand_over(&c, &ns, "terminating", "payments", Some(third), None).await;
    assert_eq!(s.reason.as_deref(), Some("NotCandidate"), "{s:?}");
    let s = hand_over(&c, &ns, "step-down-alone", "payments", None, None).await;
    assert_eq!(s.reason.as_deref(), Some("NoOtherCandidate"), "{s:?}");
    kubectl_ok(&["patch", "-n", &ns, "pod", third, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#], None);
    // A LeaderLock that does not exist.
    let s = hand_over(&c, &ns, "no-ll", "nothing-here", Some(other), None).await;
    assert_eq!((s.phase, s.reason.as_deref()), (Some(Phase::Refused), Some("LeaderLockNotFound")), "{s:?}");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 1).await, before, "no refusal moved the lock");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handover_never_moves_the_lock_away_from_an_etcdctl_lock_holder() {
    install_crd();
    shared_controller();
    let ns = namespace("handover-external");
    let c = client().await;
    let checker = Checker::start(c.clone(), &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let prefix = format!("/leaderlock.dev/locks/{ns}/ledger");
    let (etcdctl, _) = common::etcd::etcdctl_lock(&endpoint, &prefix);
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_ll(&ns, false);
    eventually("the status to name the outside holder", T, || async {
        let st = leaderlock(&c, &ns, "payments").await.status?;
        st.locks.first()?.holder.as_deref()?.starts_with("etcd:").then_some(())
    })
    .await;
    let s = hand_over(&c, &ns, "away", "payments", Some("w-2"), None).await;
    assert_eq!((s.phase, s.reason.as_deref()), (Some(Phase::Refused), Some("ExternalHolder")), "{s:?}");
    assert!(roles(&c, &ns, "ledger").await.values().all(|r| r == "standby"));
    drop(etcdctl);
    elected(&c, &ns, "payments", "ledger", 2).await;
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leaderlock_keeps_its_holder_even_when_the_holder_pod_is_deleted_until_resumed() {
    let (ns, checker, c) = setup("handover-paused", &["w-1", "w-2"]).await;
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 2).await;
    let paused = |want: &'static str| {
        let (c, ns) = (c.clone(), ns.clone());
        async move {
            eventually(&format!("Paused={want}"), T, || async {
                let st = leaderlock(&c, &ns, "payments").await.status?;
                st.conditions.iter().any(|c| c.type_ == "Paused" && c.status == want).then_some(st)
            })
            .await
        }
    };
    // Pausing and resuming with nothing else happening changes nothing.
    let keys_before = common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("/leaderlock.dev/locks/{ns}/ledger/"));
    apply_ll(&ns, true);
    paused("True").await;
    apply_ll(&ns, false);
    let st = paused("False").await;
    assert_eq!((st.locks[0].holder.as_deref(), st.locks[0].transitions), (Some(holder.as_str()), 1), "resuming moved the lock");
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await, (holder.clone(), token));
    let keys_after = common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("/leaderlock.dev/locks/{ns}/ledger/"));
    assert_eq!(keys_before, keys_after);
    apply_ll(&ns, true);
    paused("True").await;
    let s = hand_over(&c, &ns, "while-paused", "payments", None, None).await;
    assert_eq!(s.reason.as_deref(), Some("Paused"), "{s:?}");
    // The holder leaves: nobody else leads, its key stays, the status keeps naming it.
    checker.retire_lock("ledger");
    delete_pod(&c, &ns, &holder).await;
    let other = if holder == "w-1" { "w-2" } else { "w-1" };
    eventually("the holder pod to be gone", T, || async {
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns).get_opt(&holder).await.ok()?.is_none().then_some(())
    })
    .await;
    let prefix = format!("/leaderlock.dev/locks/{ns}/ledger");
    let keys = common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("{prefix}/"));
    assert_eq!(keys.len(), 2, "paused: every key stays: {keys:?}");
    assert_eq!(roles(&c, &ns, "ledger").await.get(other).map(String::as_str), Some("standby"));
    assert_eq!(status_holder(&c, &ns, "payments", "ledger").await, Some((holder.clone(), token)));
    // Resumed: the next in line takes over with a larger token.
    apply_ll(&ns, false);
    let (now, t) = elected(&c, &ns, "payments", "ledger", 1).await;
    assert!(now == other && t > token);
    let st = leaderlock(&c, &ns, "payments").await.status.unwrap();
    assert!(st.conditions.iter().any(|c| c.type_ == "Paused" && c.status == "False" && c.reason == "Resumed"));
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcdctl_lock_waiter_in_the_queue_keeps_its_place_and_is_never_jumped_over() {
    let (ns, checker, c) = setup("handover-waiter", &["w-1", "w-2"]).await;
    let (holder, _) = elected(&c, &ns, "payments", "ledger", 2).await;
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let prefix = format!("/leaderlock.dev/locks/{ns}/ledger");
    let _etcdctl = common::etcd::etcdctl_lock_waiter(&endpoint, &prefix);
    let queue = |min: usize| {
        let c = c.clone();
        let ns = ns.clone();
        async move {
            eventually("the status queue", T, || async {
                let q = leaderlock(&c, &ns, "payments").await.status?.locks.first()?.queue.clone();
                (q.len() >= min).then_some(q)
            })
            .await
        }
    };
    let waiter = queue(3).await[2].clone();
    assert!(waiter.starts_with("etcd:"), "the etcdctl waiter is third in line: {waiter}");
    ready_pods(&c, &ns, &["w-3"], WORKER).await;
    elected(&c, &ns, "payments", "ledger", 3).await;
    // w-3 is behind the waiter: moving the lock there would jump over it.
    let s = hand_over(&c, &ns, "jump", "payments", Some("w-3"), None).await;
    assert_eq!((s.phase, s.reason.as_deref()), (Some(Phase::Refused), Some("ExternalAhead")), "{s:?}");
    // The pod ahead of the waiter can take it; the old holder goes behind everyone.
    let other = if holder == "w-1" { "w-2" } else { "w-1" };
    let s = hand_over(&c, &ns, "ahead", "payments", Some(other), None).await;
    assert_eq!(s.phase, Some(Phase::Done), "{s:?}");
    elected(&c, &ns, "payments", "ledger", 3).await;
    assert_eq!(queue(4).await, [other.to_string(), waiter, "w-3".to_string(), holder]);
    checker.assert_clean();
}
