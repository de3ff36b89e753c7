//! What one reconcile reads from the index, and the roles it implies for a pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::lock::LockKey;
use crate::pods::{LockRoles, Matcher, PodInfo};
use crate::resolve::Resolution;
use crate::resource::LeaderLock;

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
}

impl View {
    fn selects(&self, ll: &str, pod: &PodInfo) -> bool {
        self.leaderlocks.get(ll).and_then(|(_, s)| s.as_ref()).is_some_and(|s| s.matches(&pod.labels))
    }

    /// Candidate pods of `ll`, in creation-priority order (oldest pod first).
    pub fn candidates(&self, ll: &str) -> Vec<Arc<PodInfo>> {
        let mut c: Vec<Arc<PodInfo>> = self.pods.values().filter(|p| p.candidate && self.selects(ll, p)).cloned().collect();
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
            if obj.metadata.deletion_timestamp.is_some() || !(pod.candidate || obj.spec.paused) {
                continue;
            }
            for (lock, res) in self.resolved.get(ll).into_iter().flatten() {
                let Resolution::Accepted(prefix) = res else { continue };
                let holds = |h: &LockKey| h.owner.is_some() && h.owner == pod.uid;
                let leader = holder(prefix).filter(holds).map(|h| (name.clone(), h.token));
                if !pod.candidate && leader.is_none() {
                    continue; // paused, but only the holder is frozen in place
                }
                out.push(LockRoles { lock: lock.clone(), candidates: vec![name.clone()], leader, labels: obj.spec.pod_labels });
            }
        }
        out
    }
}
