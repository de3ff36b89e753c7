//! Placement (docs/contract.md §8) against the real apiserver and lock etcd, under the safety
//! checker: Spread balances shards, a join moves the fewest locks and only to the joiner, a
//! leave moves only the leaver's locks, preference waits out the stabilisation delay,
//! never-lead pods never lead, and a settled LeaderLock writes nothing. One controller process
//! serves every test; each has its own namespace.
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::checker::{Checker, wait_converged};
use common::k8s::*;
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use leaderlock::resource::PlacementStatus;
use serde_json::json;

const WORKER: &[(&str, &str)] = &[("app", "worker")];
const T: Duration = Duration::from_secs(60);

async fn setup(test: &str) -> (String, Checker, kube::Client) {
    install_crd();
    shared_controller();
    let ns = namespace(test);
    let c = client().await;
    // The shared controller also serves other test binaries' leftover LeaderLocks, some of
    // them under its allowed prefix /legacy/.
    let checker = Checker::start(c.clone(), &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    (ns, checker, c)
}

/// LeaderLock `shop` with `shards: n` under `placement`.
fn apply_shards(ns: &str, n: u32, placement: &str) {
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: shop}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  shards: {n}\n  placement: {placement}\n"
    );
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&yaml));
}

/// Each lock's (holder, token) from the status.
async fn holders(c: &kube::Client, ns: &str) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let st = leaderlock(c, ns, "shop").await.status.unwrap_or_default();
    st.locks.into_iter().map(|l| (l.name, (l.holder, l.fencing_token))).collect()
}

/// Waits until the placement is settled with `counts` locks per candidate (in any order) and
/// pods, status and etcd agree; returns the placement status.
async fn settled(c: &kube::Client, ns: &str, counts: &[i32]) -> PlacementStatus {
    let mut want = counts.to_vec();
    want.sort();
    let p = eventually(&format!("a settled placement {counts:?} in {ns}"), T, || async {
        let p = leaderlock(c, ns, "shop").await.status?.placement?;
        let mut got: Vec<i32> = p.distribution.iter().map(|d| d.locks).collect();
        got.sort();
        (p.settled && got == want && p.vacant == 0).then_some(p)
    })
    .await;
    wait_converged(c, ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, None, T).await.unwrap_or_else(|e| panic!("not converged: {e}"));
    p
}

/// Every key under the namespace's lock area with its create and mod revisions.
async fn lock_keys(ns: &str) -> Vec<(String, i64, i64)> {
    let mut etcd = etcd_client::Client::connect([env("LEADERLOCK_ETCD_ENDPOINTS")], None).await.unwrap();
    let kvs = etcd.get(format!("{ROOT}locks/{ns}/"), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    kvs.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision(), kv.mod_revision())).collect()
}

/// Plays the kubelet with a `lastTransitionTime`, which the stabilisation delay counts from.
async fn set_ready_now(c: &kube::Client, ns: &str, name: &str) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    Api::<Pod>::namespaced(c.clone(), ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

/// Nothing is written for `window`: no lock key, no pod, no status.
async fn assert_idle(c: &kube::Client, ns: &str, window: Duration) {
    let (keys, pods, ll) = (lock_keys(ns).await, pod_versions(c, ns).await, leaderlock(c, ns, "shop").await.metadata.resource_version);
    tokio::time::sleep(window).await; // the measurement window itself, not a synchronisation
    assert_eq!(lock_keys(ns).await, keys, "an etcd write while nobody joined or left");
    assert_eq!(pod_versions(c, ns).await, pods, "a pod write while idle");
    assert_eq!(leaderlock(c, ns, "shop").await.metadata.resource_version, ll, "a status write while idle");
}

const SPREAD: &str = "{policy: Spread, stabilizationSeconds: 0}";

#[tokio::test(flavor = "multi_thread")]
async fn spread_puts_8_shards_on_3_pods_3_3_2_then_writes_nothing_and_refuses_handovers() {
    let (ns, checker, c) = setup("place-spread").await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], WORKER).await;
    apply_shards(&ns, 8, SPREAD);
    let p = settled(&c, &ns, &[3, 3, 2]).await;
    assert_eq!(p.policy, "Spread");
    assert_eq!(leaderlock(&c, &ns, "shop").await.status.unwrap().lock_count, 8);
    assert_idle(&c, &ns, Duration::from_secs(5)).await;
    // `kubectl leaderlock status` shows the distribution after the lock table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-leaderlock")).args(["status", "-n", &ns]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("shop ") && l.contains("Spread")).unwrap_or_else(|| panic!("{text}"));
    let mut counts: Vec<&str> = row.split_whitespace().last().unwrap().split(',').map(|c| c.split_once('=').unwrap().1).collect();
    counts.sort();
    assert_eq!(counts, ["2", "3", "3"], "{text}");

    // Placement decides every holder: a Handover would fight it, so it is refused.
    let yaml = "apiVersion: leaderlock.dev/v1alpha1\nkind: Handover\nmetadata: {name: move}\nspec:\n  leaderLock: shop\n  lock: shard-0\n";
    kubectl_ok(&["create", "-n", &ns, "-f", "-"], Some(yaml));
    let api: Api<leaderlock::resource::handover::Handover> = Api::namespaced(c.clone(), &ns);
    let reason = eventually("the Handover refused", T, || async { api.get("move").await.ok()?.status?.reason }).await;
    assert_eq!(reason, "PlacedBySpread");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_moves_the_fewest_locks_only_to_the_joiner_and_a_leave_only_the_leavers() {
    let (ns, checker, c) = setup("place-join-leave").await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], WORKER).await;
    apply_shards(&ns, 8, SPREAD);
    settled(&c, &ns, &[3, 3, 2]).await;
    let before = holders(&c, &ns).await;

    ready_pods(&c, &ns, &["w-4"], WORKER).await;
    settled(&c, &ns, &[2, 2, 2, 2]).await;
    let after = holders(&c, &ns).await;
    let moved: Vec<&String> = before.keys().filter(|l| before[*l].0 != after[*l].0).collect();
    assert_eq!(moved.len(), 2, "the joiner's share and no more: {before:?} -> {after:?}");
    for lock in &moved {
        assert_eq!(after[*lock].0.as_deref(), Some("w-4"), "{lock} moved, but not to the joiner");
        let (old, new): (i64, i64) =
            (before[*lock].1.as_ref().unwrap().parse().unwrap(), after[*lock].1.as_ref().unwrap().parse().unwrap());
        assert!(new > old, "{lock}: token {old} -> {new}");
    }

    let leaver = "w-2";
    delete_pod(&c, &ns, leaver).await;
    settled(&c, &ns, &[3, 3, 2]).await;
    let last = holders(&c, &ns).await;
    for (lock, (holder, _)) in &after {
        if holder.as_deref() == Some(leaver) {
            assert_ne!(last[lock].0.as_deref(), Some(leaver));
        } else {
            assert_eq!(&last[lock].0, holder, "{lock} moved though its holder stayed");
        }
    }
    let events = kubectl_ok(&["get", "events.events.k8s.io", "-n", &ns, "-o", "jsonpath={range .items[*]}{.note}{\"\\n\"}{end}"], None);
    assert!(events.contains("placement: Spread"), "{events}");
    assert!(events.contains("placement: HolderLeft"), "{events}");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preferred_pod_takes_every_lock_only_after_the_stabilisation_delay() {
    let (ns, checker, c) = setup("place-preferred").await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_shards(&ns, 4, "{policy: Spread, stabilizationSeconds: 4, preferred: {matchLabels: {zone: a}}}");
    settled(&c, &ns, &[2, 2]).await;

    create_pod(&c, &ns, "zone-a", &[("app", "worker"), ("zone", "a")]).await;
    set_ready_now(&c, &ns, "zone-a").await;
    let ready = Instant::now();
    let early = eventually("zone-a counted as a candidate", T, || async {
        let p = leaderlock(&c, &ns, "shop").await.status?.placement?;
        p.distribution.iter().find(|d| d.pod == "zone-a").map(|d| (d.locks, p.settled))
    })
    .await;
    assert_eq!(early, (0, false), "no lock before the delay, and the placement says it is not settled");
    settled(&c, &ns, &[0, 0, 4]).await;
    // Transition times have whole seconds: the delay may start up to 1 s before `ready`.
    assert!(ready.elapsed() >= Duration::from_secs(3), "moved after {:?}", ready.elapsed());
    assert!(holders(&c, &ns).await.values().all(|(h, _)| h.as_deref() == Some("zone-a")));
    let events = kubectl_ok(&["get", "events.events.k8s.io", "-n", &ns, "-o", "jsonpath={range .items[*]}{.note}{\"\\n\"}{end}"], None);
    assert!(events.contains("placement: Preference"), "{events}");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn never_lead_pods_stay_standby_with_no_key_even_when_nobody_else_is_left() {
    let (ns, checker, c) = setup("place-never-lead").await;
    ready_pods(&c, &ns, &["w-1"], WORKER).await;
    ready_pods(&c, &ns, &["reader"], &[("app", "worker"), ("role", "reader")]).await;
    apply_shards(&ns, 4, "{policy: Spread, stabilizationSeconds: 0, neverLead: {matchLabels: {role: reader}}}");
    settled(&c, &ns, &[4, 0]).await;
    let reader_uid = Api::<Pod>::namespaced(c.clone(), &ns).get("reader").await.unwrap().metadata.uid.unwrap();
    assert!(lock_keys(&ns).await.iter().all(|(k, _, _)| !k.contains(&reader_uid)), "a never-lead pod owns no key");
    assert_eq!(roles(&c, &ns, "shard-0").await.get("reader").map(String::as_str), Some("standby"));

    delete_pod(&c, &ns, "w-1").await;
    let p = eventually("every lock vacant", T, || async {
        let p = leaderlock(&c, &ns, "shop").await.status?.placement?;
        (p.vacant == 4).then_some(p)
    })
    .await;
    assert_eq!(p.distribution.len(), 1);
    assert_eq!(roles(&c, &ns, "shard-3").await.get("reader").map(String::as_str), Some("standby"));
    assert!(lock_keys(&ns).await.is_empty(), "nobody may lead, so nobody is in line");
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_shards_spread_over_five_pods_and_stay_idle() {
    let (ns, checker, c) = setup("place-64").await;
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3", "w-4", "w-5"], WORKER).await;
    apply_shards(&ns, 64, SPREAD);
    settled(&c, &ns, &[13, 13, 13, 13, 12]).await;
    let annotations = annotations(&c, &ns, "w-1").await;
    let roles = annotations.keys().filter(|k| !k.ends_with(".token") && *k != leaderlock::pods::RESYNC_KEY);
    assert_eq!(roles.count(), 64, "a role per shard on every pod");
    assert_idle(&c, &ns, Duration::from_secs(5)).await;
    checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn fewer_shards_release_the_removed_ones_and_spread_the_rest() {
    let (ns, checker, c) = setup("place-shrink").await;
    ready_pods(&c, &ns, &["w-1", "w-2"], WORKER).await;
    apply_shards(&ns, 6, SPREAD);
    settled(&c, &ns, &[3, 3]).await;
    apply_shards(&ns, 4, SPREAD);
    settled(&c, &ns, &[2, 2]).await;
    let keys = lock_keys(&ns).await;
    assert!(keys.iter().all(|(k, _, _)| !k.contains("/shard-4/") && !k.contains("/shard-5/")), "removed shards keep keys: {keys:?}");
    assert_eq!(keys.len(), 8, "4 shards x 2 pods");
    assert!(
        annotations(&c, &ns, "w-1")
            .await
            .keys()
            .all(|k| !k.starts_with("leaderlock.dev/shard-4") && !k.starts_with("leaderlock.dev/shard-5"))
    );
    assert_eq!(leaderlock(&c, &ns, "shop").await.status.unwrap().lock_count, 4);
    checker.assert_clean();
}
