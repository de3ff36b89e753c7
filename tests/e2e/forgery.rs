//! A forged role on the real node (docs/contract.md §9.1, §9.5): `leader` written on a standby
//! pod's annotation and label by someone other than the controller (the admin here), watched
//! where it would do harm — the role file the kubelet projects into the pod (read on the host,
//! on every change, through inotify) and the leader-only Service's EndpointSlice — and on the pod
//! itself through the apiserver.
//!
//! With the chart's admission policy (on, as installed) every forgery is refused and neither
//! the file nor the Service ever shows it: a window of 0. With the policy's binding deleted the
//! controller reverts each forgery; the report says how long that took and how often, and for
//! how long, the kubelet projected `leader` into the standby's file meanwhile. Each round ends
//! once the file shows a marker annotation written after the forgery was refused or reverted,
//! i.e. once the kubelet has projected a later state of the pod: nothing it could still show
//! about the forgery is missed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;

use super::*;

const BINDING: &str = "leaderlock-pod-roles";
const MESSAGE: &str = "leaderlock.dev/ annotations and labels are written only by the LeaderLock controller";
const MARKER: &str = "e2e/marker";
/// Rounds with the policy on and off: each ends once the kubelet projected the marker (about
/// 0.2–1 s), so the whole step costs seconds.
const REFUSED_ROUNDS: usize = 5;
const REVERTED_ROUNDS: usize = 20;

/// What one forgery did, timed from sending the patch.
#[derive(Debug)]
struct Round {
    /// The forgery was stored (policy off), and the controller's revert was seen this long after.
    reverted: Option<Duration>,
    /// The kubelet projected `leader` into the standby's file at this time, and `standby` again
    /// at the second.
    file: Option<(Duration, Duration)>,
    /// The leader Service's EndpointSlice held the standby's address from the first time to the
    /// second.
    routed: Option<(Duration, Duration)>,
}

/// Forges `leader` on `standby` with the policy on, then off, and returns the report printed
/// (and asserted: refused and never projected with it; reverted within 5 s without it).
pub fn refused_with_the_policy_and_reverted_without(node_dir: &Path, ns: &str, lock: &str, standby: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = kube::Client::try_default().await.expect("a kube client from KUBECONFIG");
        let pods = Api::<Pod>::namespaced(c.clone(), ns);
        let pod = pods.get(standby).await.unwrap();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("the standby's IP");
        let uid = pod.uid().unwrap();
        let dir = node_dir.join("kubelet/pods").join(&uid).join("volumes/kubernetes.io~downward-api/leaderlock");
        let file = RoleFile::watch(&dir, lock);
        let mut marker = 0;

        let on: Vec<Round> = {
            let mut rounds = Vec::new();
            for _ in 0..REFUSED_ROUNDS {
                marker += 1;
                rounds.push(round(&c, ns, lock, standby, &ip, &file, marker, false).await);
            }
            rounds
        };
        let saved = unbind();
        wait_enforced(ns, standby, lock, false);
        let mut off = Vec::new();
        for _ in 0..REVERTED_ROUNDS {
            marker += 1;
            off.push(round(&c, ns, lock, standby, &ip, &file, marker, true).await);
        }
        kubectl_ok(&["create", "-f", saved.to_str().unwrap()]);
        wait_enforced(ns, standby, lock, true);
        let _ = std::fs::remove_file(saved);

        let report = report(&on, &off);
        println!("{report}");
        assert!(on.iter().all(|r| r.reverted.is_none() && r.file.is_none() && r.routed.is_none()), "{report}");
        assert!(off.iter().all(|r| r.reverted.is_some_and(|d| d < Duration::from_secs(5))), "{report}");
        report
    })
}

/// One forgery of `leader` (annotation and label, one merge patch) on `standby`, followed to its
/// end: refused (`admitted` false) or reverted, then the marker `n` projected.
#[allow(clippy::too_many_arguments)]
async fn round(c: &kube::Client, ns: &str, lock: &str, standby: &str, ip: &str, file: &RoleFile, n: u32, admitted: bool) -> Round {
    let key = format!("leaderlock.dev/{lock}");
    let pods = Api::<Pod>::namespaced(c.clone(), ns);
    let rv = pods.get(standby).await.unwrap().resource_version().unwrap();
    let mut pod_events = pods.watch(&WatchParams::default().fields(&format!("metadata.name={standby}")), &rv).await.unwrap().boxed();
    let slices = Api::<EndpointSlice>::namespaced(c.clone(), ns);
    let selector = "kubernetes.io/service-name=ledger-leader";
    let slice_rv = slices.list(&ListParams::default().labels(selector)).await.unwrap().metadata.resource_version.unwrap();
    let mut slice_events = slices.watch(&WatchParams::default().labels(selector), &slice_rv).await.unwrap().boxed();
    file.drain();

    let forged = json!({"metadata": {"annotations": {&key: "leader"}, "labels": {&key: "leader"}}});
    let sent = Instant::now();
    let reverted = if admitted {
        // The apiserver's admission caches follow the deleted binding on their own time.
        let sent = loop {
            let sent = Instant::now();
            match pods.patch(standby, &PatchParams::default(), &Patch::Merge(&forged)).await {
                Ok(_) => break sent,
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(MESSAGE) => {
                    assert!(sent.elapsed() < Duration::from_secs(30), "the forgery is still refused with the binding deleted");
                }
                Err(e) => panic!("forging leader on {standby}: {e}"),
            }
        };
        Some(revert_seen(&mut pod_events, &key, sent).await)
    } else {
        match pods.patch(standby, &PatchParams::default(), &Patch::Merge(&forged)).await {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(MESSAGE) => None,
            other => panic!("the forgery was not refused by the policy: {other:?}"),
        }
    };
    let marked = json!({"metadata": {"annotations": {MARKER: n.to_string()}}});
    pods.patch(standby, &PatchParams::default(), &Patch::Merge(&marked)).await.unwrap();
    let changes = file.until_marker(n);
    let leader_at = changes.iter().find(|(_, role, _)| role == "leader").map(|(t, _, _)| *t);
    let in_file = leader_at.map(|at| {
        let back = changes.iter().find(|(t, role, _)| *t > at && role != "leader").map(|(t, _, _)| *t).unwrap();
        (at - sent, back - sent)
    });
    // The slice's changes: those up to now (the forgery is over, in the apiserver and in the
    // file), and, if it still routes to the standby, until it no longer does.
    let mut routed: Option<(Duration, Option<Duration>)> = None;
    loop {
        let wait = if matches!(routed, Some((_, None))) { Duration::from_secs(30) } else { Duration::from_millis(1) };
        let Ok(event) = tokio::time::timeout(wait, slice_events.next()).await else {
            assert!(!matches!(routed, Some((_, None))), "the leader Service still routes to the standby 30 s after the revert");
            break;
        };
        let (WatchEvent::Added(s) | WatchEvent::Modified(s)) = event.expect("the EndpointSlice watch").unwrap() else { continue };
        let has = s.endpoints.iter().flatten().any(|e| e.addresses.iter().any(|a| a == ip));
        routed = match routed {
            None if has => Some((sent.elapsed(), None)),
            Some((from, None)) if !has => Some((from, Some(sent.elapsed()))),
            other => other,
        };
    }
    let routed = routed.map(|(from, to)| (from, to.unwrap()));
    if !admitted {
        // Nothing of the forgery was stored: no version of the pod with `leader`.
        while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(1), pod_events.next()).await {
            if let WatchEvent::Modified(p) = event.unwrap() {
                assert_ne!(p.annotations().get(&key).map(String::as_str), Some("leader"), "a refused forgery was stored");
            }
        }
    }
    Round { reverted, file: in_file, routed }
}

/// Time from `sent` until the watch shows the forged `leader` replaced by the controller.
async fn revert_seen(
    events: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
    key: &str,
    sent: Instant,
) -> Duration {
    let mut forged_seen = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("a revert within 30 s").expect("the watch");
        let WatchEvent::Modified(p) = event.unwrap() else { continue };
        let leader = |m: &std::collections::BTreeMap<String, String>| m.get(key).map(String::as_str) == Some("leader");
        let (a, l) = (leader(p.annotations()), leader(p.labels()));
        forged_seen |= a && l;
        if forged_seen && !a && !l {
            return sent.elapsed();
        }
    }
}

/// Deletes the policy's binding, and returns a file to create it again from.
fn unbind() -> PathBuf {
    let mut binding: Value = json(&["get", "validatingadmissionpolicybinding", BINDING]);
    let meta = binding["metadata"].as_object_mut().unwrap();
    for field in ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"] {
        meta.remove(field);
    }
    let path = std::env::temp_dir().join(format!("e2e-binding-{}.json", std::process::id()));
    std::fs::write(&path, binding.to_string()).unwrap();
    kubectl_ok(&["delete", "validatingadmissionpolicybinding", BINDING]);
    path
}

/// Waits until the policy is (`on`) or is no longer enforced: a server-side dry run of the
/// forgery, which runs admission and stores nothing, refused (admitted) three times in a row —
/// the apiserver's admission caches follow the binding on their own time.
fn wait_enforced(ns: &str, pod: &str, lock: &str, on: bool) {
    let mut in_a_row = 0;
    wait_for(&format!("the admission policy to be {}", if on { "enforced" } else { "lifted" }), 60, || {
        let forged = format!("leaderlock.dev/{lock}=leader");
        let out = kubectl(&["annotate", "--dry-run=server", "--overwrite", "-n", ns, "pod", pod, &forged]);
        let refused = String::from_utf8_lossy(&out.stderr).contains(MESSAGE);
        assert!(out.status.success() || refused, "{}", String::from_utf8_lossy(&out.stderr));
        in_a_row = if refused == on { in_a_row + 1 } else { 0 };
        (in_a_row >= 3).then_some(())
    });
}

/// The role file of one pod as its kubelet projects it, read on every change of its directory.
struct RoleFile {
    changes: mpsc::Receiver<(Instant, String, String)>,
    _watcher: notify::RecommendedWatcher,
}

impl RoleFile {
    /// Follows `dir/annotations`: each change sent as (when, the lock's role, the marker).
    fn watch(dir: &Path, lock: &str) -> RoleFile {
        use notify::Watcher;
        let (tx, changes) = mpsc::channel();
        let path = dir.join("annotations");
        assert!(path.exists(), "no role file at {}", path.display());
        let role_line = format!("leaderlock.dev/{lock}=");
        let read = move || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let value = |prefix: &str| {
                text.lines().find_map(|l| l.strip_prefix(prefix)).map(|v| v.trim_matches('"').to_string()).unwrap_or_default()
            };
            (value(&role_line), value(&format!("{MARKER}=")))
        };
        let mut last = read();
        let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            let now = read();
            if now != last {
                last = now.clone();
                let _ = tx.send((Instant::now(), now.0, now.1));
            }
        })
        .unwrap();
        watcher.watch(dir, notify::RecursiveMode::NonRecursive).unwrap();
        RoleFile { changes, _watcher: watcher }
    }

    fn drain(&self) {
        while self.changes.try_recv().is_ok() {}
    }

    /// The file's changes until it shows marker `n` (the kubelet may take up to its sync period).
    fn until_marker(&self, n: u32) -> Vec<(Instant, String, String)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(FILE_SECS);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let change = self.changes.recv_timeout(left).unwrap_or_else(|_| panic!("the role file to show marker {n} within {FILE_SECS}s"));
            let done = change.2 == n.to_string();
            seen.push(change);
            if done {
                return seen;
            }
        }
    }
}

fn report(on: &[Round], off: &[Round]) -> String {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let stats = |mut d: Vec<Duration>| {
        d.sort();
        if d.is_empty() { "-".to_string() } else { format!("p50 {} max {}", ms(d[d.len() / 2]), ms(d[d.len() - 1])) }
    };
    let spans = |what: &str, s: Vec<(Duration, Duration)>| {
        format!(
            "{what} {} times (from {}, until {} after the patch)",
            s.len(),
            stats(s.iter().map(|p| p.0).collect()),
            stats(s.iter().map(|p| p.1).collect())
        )
    };
    let count = |rounds: &[Round], f: fn(&Round) -> bool| rounds.iter().filter(|r| f(r)).count();
    format!(
        "forged leader (annotation and label) on a standby, real kubelet (default settings):\n  \
         policy on:  {} of {} refused; role file showed leader {} times; leader Service routed to the standby {} times\n  \
         policy off: {} of {} reverted by the controller, {} after the patch; {}; {}",
        count(on, |r| r.reverted.is_none()),
        on.len(),
        count(on, |r| r.file.is_some()),
        count(on, |r| r.routed.is_some()),
        count(off, |r| r.reverted.is_some()),
        off.len(),
        stats(off.iter().filter_map(|r| r.reverted).collect()),
        spans("role file showed leader", off.iter().filter_map(|r| r.file).collect()),
        spans("leader Service routed to the standby", off.iter().filter_map(|r| r.routed).collect()),
    )
}
