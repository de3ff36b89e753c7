//! What one reconcile reads from the index, and the roles it implies for a pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::lock::LockKey;
use crate::node_loss::{NodeVerdict, Sight, Silence};
use crate::pods::{LockRoles, Matcher, PodInfo};
use crate::resolve::Resolution;
use crate::resource::LeaderLock;

/// What a LeaderLock's `NodeLost` condition reports (docs/contract.md §3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// Its threshold (None: node loss is off for it).
    pub threshold: Option<std::time::Duration>,
    /// Its Ready pods on lost nodes, by node.
    pub lost: BTreeMap<String, Vec<String>>,
    /// The nodes of its candidates without a Lease.
    pub without_lease: Vec<String>,
    /// Why node Leases cannot be read, if they cannot.
    pub unreadable: Option<String>,
}

/// What one reconcile reads, taken under the index's lock in one go.
pub struct View {
    /// The reconciled LeaderLock and every LeaderLock selecting a pod in `pods`, by name, with
    /// its parsed selector (None: selects nothing).
    pub leaderlocks: BTreeMap<String, (Arc<LeaderLock>, Option<Matcher>)>,
    /// The pods the reconciled LeaderLock selects or whose keys name one of its locks, by name.
    pub pods: BTreeMap<String, Arc<PodInfo>>,
    /// For each pod in `pods`, the LeaderLocks (names) selecting it.
    pub selecting: BTreeMap<String, Vec<String>>,
    /// How every lock of the LeaderLocks in `leaderlocks` resolves.
    pub resolved: BTreeMap<String, Vec<(String, Resolution)>>,
    /// The locks (name, etcd prefix) the reconciled LeaderLock held and no longer has, whose
    /// keys nobody else's lock covers: to be deleted.
    pub released: Vec<(String, String)>,
    /// How long each node's Lease has gone unrenewed: pods on a node lost to a LeaderLock are
    /// not its candidates (docs/contract.md §3.2). Filled in by the reconcile, not the index.
    pub nodes: Silence,
}

impl View {
    fn selects(&self, ll: &str, pod: &PodInfo) -> bool {
        self.leaderlocks.get(ll).and_then(|(_, s)| s.as_ref()).is_some_and(|s| s.matches(&pod.labels))
    }

    /// What `ll` makes of `pod`'s node (its own `nodeLostAfterSeconds`, else the default).
    pub fn node_verdict(&self, ll: &str, pod: &PodInfo) -> NodeVerdict {
        let own = self.leaderlocks.get(ll).and_then(|(l, _)| l.spec.node_lost_after_seconds);
        self.nodes.verdict(pod.node.as_deref(), self.nodes.threshold(own))
    }

    /// Whether `pod` competes for `ll`'s locks: Ready, and its node not lost to `ll`.
    fn is_candidate(&self, ll: &str, pod: &PodInfo) -> bool {
        pod.candidate && self.node_verdict(ll, pod) != NodeVerdict::Lost
    }

    /// What `ll`'s status says about its pods' nodes.
    pub fn node_report(&self, ll: &str) -> NodeReport {
        let own = self.leaderlocks.get(ll).and_then(|(l, _)| l.spec.node_lost_after_seconds);
        let unreadable = match &self.nodes.sight {
            Sight::Unreadable(why) => Some(why.clone()),
            _ => None,
        };
        NodeReport { threshold: self.nodes.threshold(own), lost: self.on_lost_nodes(ll), without_lease: self.without_lease(ll), unreadable }
    }

    /// The pods `ll` selects that are Ready on a node lost to it, by node.
    fn on_lost_nodes(&self, ll: &str) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in self.pods.values().filter(|p| p.candidate && self.selects(ll, p)) {
            if let (Some(node), NodeVerdict::Lost) = (&p.node, self.node_verdict(ll, p)) {
                out.entry(node.clone()).or_default().push(p.name.clone());
            }
        }
        out
    }

    /// The nodes of `ll`'s candidates that have no Lease (only readiness tells if they are lost).
    fn without_lease(&self, ll: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.candidate && self.selects(ll, p) && self.node_verdict(ll, p) == NodeVerdict::NoLease)
            .filter_map(|p| p.node.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Candidate pods of `ll`, in creation-priority order (oldest pod first).
    pub fn candidates(&self, ll: &str) -> Vec<Arc<PodInfo>> {
        let mut c: Vec<Arc<PodInfo>> = self.pods.values().filter(|p| self.is_candidate(ll, p) && self.selects(ll, p)).cloned().collect();
        c.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        c
    }

    /// The roles every accepted lock of the namespace assigns to `pod`, given each lock
    /// prefix's holder. LeaderLocks being deleted assign nothing: their keys are to be removed.
    /// A paused LeaderLock keeps its holder `leader` even once it stops being a candidate.
    pub fn roles_for(&self, pod: &PodInfo, holder: impl Fn(&str) -> Option<LockKey>) -> Vec<LockRoles> {
        let name = pod.name.clone();
        let mut out = Vec::new();
        for ll in self.selecting.get(&name).into_iter().flatten() {
            let Some((obj, _)) = self.leaderlocks.get(ll) else { continue };
            let candidate = self.is_candidate(ll, pod);
            if obj.metadata.deletion_timestamp.is_some() || !(candidate || obj.spec.paused) {
                continue;
            }
            for (lock, res) in self.resolved.get(ll).into_iter().flatten() {
                let Resolution::Accepted(prefix) = res else { continue };
                let holds = |h: &LockKey| h.owner.is_some() && h.owner == pod.uid;
                let leader = holder(prefix).filter(holds).map(|h| (name.clone(), h.token));
                if !candidate && leader.is_none() {
                    continue; // paused, but only the holder is frozen in place
                }
                out.push(LockRoles {
                    lock: lock.clone(),
                    candidates: vec![name.clone()],
                    leader,
                    labels: obj.spec.pod_labels,
                    renew_deadline: obj.spec.renew_deadline_seconds,
                });
            }
        }
        out
    }
}
