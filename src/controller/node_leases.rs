//! The node Lease watch (docs/contract.md §3.2): feeds [`Renewals`] from the kubelets' Leases in
//! `kube-node-lease`, wakes at the next instant a node's silence reaches a threshold in use, and
//! reconciles the LeaderLocks of the pods on every node whose verdict changed. One timer, no
//! polling, no writes: a renewal that changes no verdict costs a map update.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::wiring::WatchBackoff;
use crate::index::Index;
use crate::node_loss::{NODE_LEASE_NAMESPACE, Renewals, Sight, Silence};
use crate::resource::LeaderLock;

/// The renewals seen so far, shared by the watch task and every reconcile.
pub struct NodeLoss {
    renewals: Mutex<Renewals>,
    /// `--node-lost-after` (None: off unless a LeaderLock sets its own).
    default_after: Option<Duration>,
    /// True once the Leases were listed or found unreadable: reconciles wait for it, so a
    /// LeaderLock's first status already knows which nodes have a Lease.
    listed: tokio::sync::watch::Sender<bool>,
}

impl NodeLoss {
    pub fn new(default_after: Option<Duration>) -> NodeLoss {
        let suspect_after = default_after.unwrap_or(Duration::from_secs(15));
        NodeLoss { renewals: Mutex::new(Renewals::new(suspect_after)), default_after, listed: tokio::sync::watch::Sender::new(false) }
    }

    /// Waits until the Leases were listed once (or cannot be read).
    pub async fn wait_listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    fn renewals(&self) -> std::sync::MutexGuard<'_, Renewals> {
        // Every update leaves the map consistent: a panic elsewhere cannot corrupt it.
        self.renewals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Each node's silence now: what a reconcile judges its pods' nodes from.
    pub fn silence(&self) -> Silence {
        self.renewals().silence(Instant::now(), self.default_after)
    }

    /// The thresholds in use: the default and every LeaderLock's own (0 is off).
    fn thresholds(&self, index: &Index) -> BTreeSet<Duration> {
        let own = index.node_lost_overrides().into_iter().filter(|s| *s > 0).map(|s| Duration::from_secs(s.unsigned_abs()));
        self.default_after.into_iter().chain(own).collect()
    }
}

/// Runs the watch until the controller stops (the caller drops this future).
pub async fn run(client: kube::Client, loss: Arc<NodeLoss>, index: Arc<Index>, trigger: UnboundedSender<ObjectRef<LeaderLock>>) {
    let api: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let mut leases = watcher(api, watcher::Config::default()).backoff(WatchBackoff::default()).boxed();
    let mut judged = Judged::default();
    let mut listing = BTreeSet::new();
    loop {
        let thresholds = loss.thresholds(&index);
        let deadline = loss.renewals().next_deadline(&thresholds, Instant::now());
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            ev = leases.next() => match ev {
                Some(ev) => Some(ev),
                None => return,
            },
            () = sleep => None,
        };
        let now = Instant::now();
        let sight_before = loss.renewals().sight().clone();
        if let Some(ev) = event {
            observe(&mut loss.renewals(), ev, &mut listing, now);
        }
        let mut renewals = loss.renewals();
        if *renewals.sight() != Sight::Starting {
            loss.listed.send_replace(true);
        }
        renewals.set_suspect_after(thresholds.first().copied().unwrap_or(Duration::from_secs(15)));
        // Whether Leases can be read at all is in every LeaderLock's status; a failing watch
        // changes no verdict (they stay as they were).
        let readable = |s: &Sight| !matches!(s, Sight::Unreadable(_));
        let sight_changed = readable(renewals.sight()) != readable(&sight_before);
        let verdicts: BTreeMap<Duration, BTreeSet<String>> = thresholds.iter().map(|t| (*t, renewals.lost_under(*t, now))).collect();
        drop(renewals);
        let changed = judged.update(verdicts);
        let concerned: std::collections::HashSet<ObjectRef<LeaderLock>> = if sight_changed {
            index.all_leaderlocks().into_iter().collect()
        } else {
            changed.iter().flat_map(|node| index.leaderlocks_on_node(node)).collect()
        };
        for node in &changed {
            tracing::info!(node, lost = judged.is_lost(node), "node verdict changed");
        }
        for r in concerned {
            let _ = trigger.send(r);
        }
    }
}

/// Feeds one watch event to the renewals.
fn observe(renewals: &mut Renewals, ev: Result<watcher::Event<Lease>, watcher::Error>, listing: &mut BTreeSet<String>, now: Instant) {
    match ev {
        Ok(watcher::Event::Apply(lease)) => {
            renewals.observe(&lease.name_any(), &version(&lease), now);
        }
        Ok(watcher::Event::Delete(lease)) => renewals.forget(&lease.name_any(), now),
        Ok(watcher::Event::Init) => listing.clear(),
        Ok(watcher::Event::InitApply(lease)) => {
            listing.insert(lease.name_any());
            renewals.observe(&lease.name_any(), &version(&lease), now);
        }
        Ok(watcher::Event::InitDone) => renewals.listed(listing, now),
        Err(e) => match unreadable(&e) {
            Some(why) => {
                if !matches!(renewals.sight(), Sight::Unreadable(_)) {
                    tracing::warn!(error = %e, "cannot read the node Leases in {NODE_LEASE_NAMESPACE}: a lost node is noticed only when its pods turn NotReady; retrying");
                }
                renewals.unreadable(why);
            }
            None => {
                tracing::warn!(error = %e, "node Lease watch failed; no node is judged lost until it delivers again");
                renewals.lost_sight(e.to_string(), now);
            }
        },
    }
}

/// What changes when a kubelet renews: `spec.renewTime` (the resourceVersion without one).
fn version(lease: &Lease) -> String {
    match lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) {
        Some(t) => t.0.to_string(),
        None => lease.resource_version().unwrap_or_default(),
    }
}

/// Why Leases cannot be read at all (RBAC, no such API), or None for a failure worth retrying.
fn unreadable(e: &watcher::Error) -> Option<String> {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return None,
    };
    matches!(api.code, 403 | 404).then(|| format!("{} {}", api.code, api.message))
}

/// The verdicts last published: which nodes are lost under each threshold in use.
#[derive(Default)]
struct Judged(BTreeMap<Duration, BTreeSet<String>>);

impl Judged {
    /// Replaces the verdicts; returns the nodes whose verdict changed under any threshold.
    fn update(&mut self, now: BTreeMap<Duration, BTreeSet<String>>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        let empty = BTreeSet::new();
        for t in self.0.keys().chain(now.keys()) {
            let (before, after) = (self.0.get(t).unwrap_or(&empty), now.get(t).unwrap_or(&empty));
            changed.extend(before.symmetric_difference(after).cloned());
        }
        self.0 = now;
        changed
    }

    fn is_lost(&self, node: &str) -> bool {
        self.0.values().any(|lost| lost.contains(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_change_under_any_threshold_names_the_node_once() {
        let (t1, t2) = (Duration::from_secs(11), Duration::from_secs(15));
        let mut j = Judged::default();
        let lost = |pairs: &[(Duration, &[&str])]| -> BTreeMap<Duration, BTreeSet<String>> {
            pairs.iter().map(|(t, n)| (*t, n.iter().map(|s| s.to_string()).collect())).collect()
        };
        assert!(j.update(lost(&[(t1, &[]), (t2, &[])])).is_empty());
        assert_eq!(j.update(lost(&[(t1, &["b"]), (t2, &[])])), ["b".to_string()].into());
        assert_eq!(j.update(lost(&[(t1, &["b"]), (t2, &["b"])])), ["b".to_string()].into());
        assert!(j.is_lost("b"));
        assert!(j.update(lost(&[(t1, &["b"]), (t2, &["b"])])).is_empty(), "nothing new: nobody reconciled");
        assert_eq!(j.update(lost(&[(t1, &[]), (t2, &[])])), ["b".to_string()].into());
        assert!(!j.is_lost("b"));
    }
}
