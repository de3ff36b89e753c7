//! The controller against the real apiserver and lock etcd (docs/contract.md §2–§4). One controller
//! process serves every test; each test has its own namespace. The safety checker watches
//! every pod update throughout and each test asserts it saw nothing unsafe in its namespace.
mod common;

use std::time::Duration;

use common::checker::Checker;
use common::k8s::*;
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use leaderlock::resource::LeaderLock;

const WORKER: &[(&str, &str)] = &[("app", "worker")];
const T: Duration = Duration::from_secs(30);

/// Starts the control-plane side of a test: CRD, controller, a fresh namespace and the safety
/// checker watching it and the lock etcd.
async fn setup(test: &str) -> (String, Checker) {
    install_crd();
    shared_controller();
    let ns = namespace(test);
    let checker = Checker::start(client().await, &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    (ns, checker)
}

fn apply_ll(ns: &str, name: &str, locks: &str, extra: &str) {
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  locks: {locks}\n{extra}"
    );
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&yaml));
}

/// The stage most tests start from: Ready `pods` and LeaderLock `payments` whose lock `ledger`
/// has elected one of them.
struct Ledger {
    ns: String,
    checker: Checker,
    c: kube::Client,
    holder: String,
    token: i64,
}

async fn ledger_among(test: &str, pods: &[&str]) -> Ledger {
    let (ns, checker) = setup(test).await;
    let c = client().await;
    ready_pods(&c, &ns, pods, WORKER).await;
    apply_ll(&ns, "payments", "[{name: ledger}]", "");
    let (holder, token) = elected(&c, &ns, "payments", "ledger", pods.len()).await;
    Ledger { ns, checker, c, holder, token }
}

async fn ready_condition(c: &kube::Client, ns: &str, ll: &str) -> Option<(String, String, String)> {
    let l = leaderlock(c, ns, ll).await;
    let cond = l.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((cond.status, cond.reason, cond.message))
}

#[tokio::test(flavor = "multi_thread")]
async fn initial_election_annotates_one_leader_per_lock_and_reports_it_in_status() {
    let (ns, checker) = setup("initial-election").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], WORKER).await;
    apply_ll(&ns, "payments", "[{name: ledger}, {name: report}]", "");
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 3).await;
    elected(&c, &ns, "payments", "report", 3).await;
    assert_eq!(holder, "w-1", "the oldest candidate's key is created first");
    let ll = leaderlock(&c, &ns, "payments").await;
    let st = ll.status.unwrap();
    assert_eq!(st.observed_generation, ll.metadata.generation);
    assert_eq!(st.lock_count, 2);
    assert_eq!((st.locks[0].candidates, st.locks[0].transitions), (3, 1));
    assert!(st.locks[0].since.is_some() && token > 0);
    let ready = ready_condition(&c, &ns, "payments").await.unwrap();
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", "Elected"));
    let events = kubectl_ok(
        &["get", "events.events.k8s.io", "-n", &ns, "-o", "jsonpath={range .items[*]}{.reason}/{.series.count}{\"\\n\"}{end}"],
        None,
    );
    // One Event per lock, never announced twice (a series): a reconcile that read the status
    // from before its predecessor's write used to announce the same election again.
    assert_eq!(
        events.lines().filter(|l| l.starts_with("HolderChanged")).collect::<Vec<_>>(),
        ["HolderChanged/", "HolderChanged/"],
        "{events}"
    );
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_holder_pod_promotes_the_next_candidate_with_a_larger_token() {
    let Ledger { ns, checker, c, holder: old, token: old_token } = ledger_among("holder-deleted", &["w-1", "w-2", "w-3"]).await;
    delete_pod(&c, &ns, &old).await;
    let (new, new_token) = eventually("a new holder", T, || async {
        let e = status_holder(&c, &ns, "payments", "ledger").await?;
        (e.0 != old).then_some(e)
    })
    .await;
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await, (new.clone(), new_token));
    assert!(new_token > old_token, "token must grow: {old_token} -> {new_token}");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_turns_not_ready_is_demoted_and_replaced() {
    let Ledger { ns, checker, c, holder: old, .. } = ledger_among("holder-unready", &["w-1", "w-2"]).await;
    set_ready(&c, &ns, &old, false).await;
    let (new, _) = eventually("the other pod to lead", T, || async {
        let e = status_holder(&c, &ns, "payments", "ledger").await?;
        (e.0 != old).then_some(e)
    })
    .await;
    elected(&c, &ns, "payments", "ledger", 1).await;
    eventually("the unready pod to lose its keys", T, || async { annotations(&c, &ns, &old).await.is_empty().then_some(()) }).await;
    assert_ne!(new, old);
    // Ready again: it rejoins as standby, the holder stays.
    set_ready(&c, &ns, &old, true).await;
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await.0, new);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_leadership_change_is_followed_by_one_resync_write_of_the_pods_it_changed() {
    const RESYNC: &str = "leaderlock.dev/roles.resync";
    let Ledger { ns, checker, c, holder: old, .. } = ledger_among("resync", &["w-1", "w-2"]).await;
    let other = if old == "w-1" { "w-2" } else { "w-1" };
    let digest = eventually("the holder's resync", T, || async { annotations(&c, &ns, &old).await.get(RESYNC).cloned() }).await;
    assert_eq!(digest.len(), 16, "{digest}");
    assert!(!annotations(&c, &ns, other).await.contains_key(RESYNC), "a pod that never led gets no resync");
    // Settled: a controller that wrote each change once more writes nothing else. The window is
    // several resync delays (2 s): long enough for a repeating resync to show.
    let settled = pod_versions(&c, &ns).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pod_versions(&c, &ns).await, settled, "idle pods are not written");
    // A handover: the demoted pod's digest goes, the promoted pod's comes, each in one more write.
    set_ready(&c, &ns, &old, false).await;
    elected(&c, &ns, "payments", "ledger", 1).await;
    eventually("the new holder's resync", T, || async { annotations(&c, &ns, other).await.get(RESYNC).filter(|d| **d != digest).cloned() })
        .await;
    eventually("the demoted pod's resync removed with its keys", T, || async { annotations(&c, &ns, &old).await.is_empty().then_some(()) })
        .await;
    checker.assert_clean();
}

/// Makes `from` unready, waits for `to` to hold alone, then makes `from` ready again (standby).
async fn hand_over(c: &kube::Client, ns: &str, from: &str, to: &str) -> i64 {
    set_ready(c, ns, from, false).await;
    let (holder, token) = elected(c, ns, "payments", "ledger", 1).await;
    assert_eq!(holder, to);
    set_ready(c, ns, from, true).await;
    assert_eq!(elected(c, ns, "payments", "ledger", 2).await, (holder, token), "a returning pod is a standby");
    token
}

#[tokio::test(flavor = "multi_thread")]
async fn every_holder_change_is_its_own_event_even_when_a_transition_repeats() {
    let Ledger { ns, checker, c, holder: first, token: t1 } = ledger_among("events-repeat", &["w-1", "w-2"]).await;
    assert_eq!(first, "w-1");
    let t2 = hand_over(&c, &ns, "w-1", "w-2").await;
    let t3 = hand_over(&c, &ns, "w-2", "w-1").await;
    let t4 = hand_over(&c, &ns, "w-1", "w-2").await; // the same transition as t2, minutes apart at most
    let want = [
        format!("lock ledger: <none> -> w-1 (fencing token {t1})"),
        format!("lock ledger: w-1 -> w-2 (fencing token {t2})"),
        format!("lock ledger: w-2 -> w-1 (fencing token {t3})"),
        format!("lock ledger: w-1 -> w-2 (fencing token {t4})"),
    ];
    // kube-runtime's Recorder folded the repeat into the first one's series, with its old token.
    let jsonpath = "jsonpath={range .items[*]}{.reason}|{.note}|{.series.count}{\"\\n\"}{end}";
    let events = wait_until("four HolderChanged Events", T, || {
        let out = kubectl_ok(&["get", "events.events.k8s.io", "-n", &ns, "--sort-by=.eventTime", "-o", jsonpath], None);
        let ours: Vec<String> = out.lines().filter(|l| l.starts_with("HolderChanged|")).map(str::to_string).collect();
        (ours.len() >= want.len()).then_some(ours)
    });
    let expected: Vec<String> = want.iter().map(|n| format!("HolderChanged|{n}|")).collect();
    assert_eq!(events, expected);
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_up_adds_standbys_without_changing_the_holder() {
    let Ledger { ns, checker, c, holder, token } = ledger_among("scale-up", &["w-1"]).await;
    ready_pods(&c, &ns, &["w-2", "w-3"], WORKER).await;
    assert_eq!(elected(&c, &ns, "payments", "ledger", 3).await, (holder, token));
    let st = leaderlock(&c, &ns, "payments").await.status.unwrap();
    assert_eq!(st.locks[0].transitions, 1, "joining standbys are not holder changes");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_leaderlocks_on_the_same_pods_keep_both_sets_of_keys() {
    let (ns, checker) = setup("two-leaderlocks").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_ll(&ns, "a", "[{name: ledger}]", "");
    apply_ll(&ns, "b", "[{name: report}]", "  podLabels: true\n");
    elected(&c, &ns, "a", "ledger", 2).await;
    let (holder, _) = elected(&c, &ns, "b", "report", 2).await;
    let pod = Api::<Pod>::namespaced(c.clone(), &ns).get(&holder).await.unwrap();
    assert_eq!(pod.metadata.labels.unwrap().get("leaderlock.dev/report").map(String::as_str), Some("leader"), "podLabels mirrors the role");
    assert!(pod.metadata.annotations.unwrap().contains_key("leaderlock.dev/ledger"), "keys of LeaderLock a survive b's writes");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_name_already_used_in_the_namespace_is_a_conflict_for_the_newer_leaderlock() {
    let (ns, checker) = setup("name-conflict").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_ll(&ns, "first", "[{name: ledger}]", "");
    let holder = elected(&c, &ns, "first", "ledger", 2).await;
    apply_ll(&ns, "second", "[{name: ledger}, {name: other}]", "");
    let (status, _, message) = eventually("LockNameConflict", T, || async {
        ready_condition(&c, &ns, "second").await.filter(|(_, r, _)| r == "LockNameConflict")
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("\"first\"") && message.contains("rename"), "{message}");
    elected(&c, &ns, "second", "other", 2).await; // its other lock still works
    assert_eq!(elected(&c, &ns, "first", "ledger", 2).await, holder, "the older LeaderLock keeps its holder");
    // Once the older one is gone (its Delete event), the newer one takes the lock name.
    Api::<LeaderLock>::namespaced(c.clone(), &ns).delete("first", &DeleteParams::default()).await.unwrap();
    elected(&c, &ns, "second", "ledger", 2).await;
    let ready = eventually("second Ready", T, || async { ready_condition(&c, &ns, "second").await.filter(|(s, _, _)| s == "True") }).await;
    assert_eq!(ready.1, "Elected");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_key_outside_the_allowed_prefixes_is_rejected_and_an_allowed_one_works() {
    let (ns, checker) = setup("etcd-key").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1"], WORKER).await;
    apply_ll(&ns, "bad", "[{name: ledger, etcdKey: /registry/pods}]", "");
    let (status, _, message) =
        eventually("EtcdKeyNotAllowed", T, || async { ready_condition(&c, &ns, "bad").await.filter(|(_, r, _)| r == "EtcdKeyNotAllowed") })
            .await;
    assert_eq!(status, "False");
    assert!(message.contains("--allowed-key-prefix"), "{message}");
    assert!(annotations(&c, &ns, "w-1").await.is_empty(), "a rejected lock annotates nothing");
    let key = format!("/legacy/{ns}/report");
    apply_ll(&ns, "good", &format!("[{{name: report, etcdKey: {key}}}]"), "");
    elected(&c, &ns, "good", "report", 1).await;
    let keys = common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("{key}/"));
    assert_eq!(keys.len(), 1, "the candidate key lives under etcdKey: {keys:?}");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selector_matching_no_pod_is_ready_with_no_candidates() {
    let (ns, checker) = setup("no-candidates").await;
    let c = client().await;
    apply_ll(&ns, "lonely", "[{name: ledger}]", "");
    let (status, reason, _) = eventually("NoCandidates", T, || async { ready_condition(&c, &ns, "lonely").await }).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NoCandidates"));
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_etcdctl_lock_holder_keeps_every_pod_standby_until_it_releases() {
    let (ns, checker) = setup("external-holder").await;
    let c = client().await;
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let prefix = format!("/leaderlock.dev/locks/{ns}/ledger");
    let (mut etcdctl, external) = common::etcd::etcdctl_lock(&endpoint, &prefix);
    assert!(external.starts_with(&prefix), "etcdctl printed {external:?}");

    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_ll(&ns, "payments", "[{name: ledger}]", "");
    eventually("status to name the external holder and pods to stand by", T, || async {
        let st = leaderlock(&c, &ns, "payments").await.status?;
        let roles = roles(&c, &ns, "ledger").await;
        (st.locks[0].holder.as_deref() == Some(&format!("etcd:{external}")) && roles.len() == 2 && roles.values().all(|r| r == "standby"))
            .then_some(())
    })
    .await;

    let _ = std::process::Command::new("kill").args(["-TERM", &etcdctl.0.id().to_string()]).status();
    let _ = etcdctl.0.wait();
    let (holder, _) = elected(&c, &ns, "payments", "ledger", 2).await;
    assert_eq!(holder, "w-1");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_edit_of_our_keys_is_reverted() {
    // No checker assertion here: the test itself writes a bogus token, which the checker would
    // rightly flag when the controller reverts it.
    let Ledger { ns, c, holder, token, .. } = ledger_among("manual-edit", &["w-1", "w-2"]).await;
    let standby = if holder == "w-1" { "w-2" } else { "w-1" };
    kubectl_ok(&["annotate", "-n", &ns, "--overwrite", "pod", standby, "leaderlock.dev/ledger.token=999999"], None);
    kubectl_ok(&["annotate", "-n", &ns, "pod", &holder, "leaderlock.dev/ledger-"], None);
    eventually("the edits to be reverted", T, || async {
        let s = annotations(&c, &ns, standby).await;
        let h = annotations(&c, &ns, &holder).await;
        (!s.contains_key("leaderlock.dev/ledger.token") && h.get("leaderlock.dev/ledger").map(String::as_str) == Some("leader"))
            .then_some(())
    })
    .await;
    assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await, (holder, token));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_leaderlock_removes_its_etcd_keys_and_pod_keys() {
    let (ns, checker) = setup("delete-ll").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_ll(&ns, "payments", "[{name: ledger}]", "  podLabels: true\n");
    elected(&c, &ns, "payments", "ledger", 2).await;
    Api::<LeaderLock>::namespaced(c.clone(), &ns).delete("payments", &DeleteParams::default()).await.unwrap();
    eventually("the LeaderLock to be gone", T, || async {
        Api::<LeaderLock>::namespaced(c.clone(), &ns).get_opt("payments").await.unwrap().is_none().then_some(())
    })
    .await;
    for p in ["w-1", "w-2"] {
        let pod = Api::<Pod>::namespaced(c.clone(), &ns).get(p).await.unwrap();
        let ours =
            |m: Option<std::collections::BTreeMap<String, String>>| m.unwrap_or_default().keys().any(|k| k.starts_with("leaderlock.dev/"));
        assert!(!ours(pod.metadata.annotations.clone()) && !ours(pod.metadata.labels.clone()), "{p} still has keys");
    }
    let keys = common::etcd::keys_under(&env("LEADERLOCK_ETCD_ENDPOINTS"), &format!("{ROOT}locks/{ns}/"));
    assert!(keys.is_empty(), "candidate keys left in etcd: {keys:?}");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selector_the_controller_cannot_evaluate_is_reported_not_ignored() {
    let (ns, checker) = setup("invalid-selector").await;
    let c = client().await;
    ready_pods(&c, &ns, &["w-1"], WORKER).await;
    let yaml = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: odd}\nspec:\n  selector: {matchExpressions: [{key: app, operator: Near, values: [worker]}]}\n  locks: [{name: ledger}]\n";
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(yaml));
    let (status, _, message) =
        eventually("InvalidSelector", T, || async { ready_condition(&c, &ns, "odd").await.filter(|(_, r, _)| r == "InvalidSelector") })
            .await;
    assert_eq!(status, "False");
    assert!(message.contains("Near"), "the message names the bad operator: {message}");
    assert!(annotations(&c, &ns, "w-1").await.is_empty());
    checker.assert_clean();
}
