//! What one reconcile decides from, read once and never changed: the index's view, each pod's
//! `leaderlock.dev/*` keys as we last knew them, the holder and queue of every accepted lock as
//! etcd's mirror shows them, and the open Handovers. Every decision module ([`super::plan`],
//! [`super::placement`], [`super::handover`], [`super::status`]) reads a snapshot; none defines
//! it, so the modules stand in layers:
//!
//! ```text
//!  snapshot ◀── handover, placement, status ◀── plan ◀── reconcile (I/O)
//! ```
//!
//! A reconcile takes two: one before its etcd writes and a fresh one after them (the fencing
//! token of a new holder only exists once etcd has created its key). The writes of the first
//! stage reach the second through the expectations ([`super::expectations`]), as they would
//! reach any later reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;

use crate::index::View;
use crate::lock::LockKey;
use crate::pods::{PodInfo, PodKeys, Resync};
use crate::resolve::Resolution;
use crate::resource::LeaderLock;
use crate::resource::handover::Handover;

/// The holder of each accepted lock prefix, as etcd's mirror showed it (absent: no holder).
pub type Holders = BTreeMap<String, LockKey>;

/// Every key in line for each accepted lock prefix, holder first.
pub type Queues = BTreeMap<String, Vec<LockKey>>;

/// Each prefix's queue named as the status names holders (see [`Snapshot::queue_names`]).
pub type QueueNames = BTreeMap<String, Vec<String>>;

/// How many of a lock's queue the status shows: enough to see who is next, small enough that
/// 256 locks with many candidates keep the status far below the apiserver's object size limit.
const QUEUE_SHOWN: usize = 16;

/// Everything one reconcile stage decides from.
pub struct Snapshot<'a> {
    /// The reconciled LeaderLock, with the status we last wrote.
    pub ll: &'a LeaderLock,
    pub view: &'a View,
    /// Each pod of the view's keys as we know them: our own write when the view's copy is older.
    pub current: BTreeMap<String, PodKeys>,
    pub holders: Holders,
    pub queues: Queues,
    /// The Handovers naming this LeaderLock that are not final, as we last knew them.
    pub requests: Vec<Arc<Handover>>,
    /// Whose resync (docs/contract.md §3.1) may be written now.
    pub resync: ResyncGate,
}

/// Where the pods' resyncs stand: turned off, or due except for the pods listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResyncGate {
    pub enabled: bool,
    /// Pods (by name) whose leadership changed less than the resync delay ago.
    pub not_yet: BTreeSet<String>,
}

impl ResyncGate {
    /// When `pod`'s resync key may be brought up to date.
    pub fn when(&self, pod: &str) -> Resync {
        match (self.enabled, self.not_yet.contains(pod)) {
            (false, _) => Resync::Off,
            (true, true) => Resync::Later,
            (true, false) => Resync::Now,
        }
    }
}

impl Snapshot<'_> {
    /// How the reconciled LeaderLock's locks resolve, in spec order.
    pub fn mine(&self) -> Vec<(String, Resolution)> {
        self.view.resolved.get(&self.ll.name_any()).cloned().unwrap_or_default()
    }

    /// The candidate pods of the reconciled LeaderLock, oldest first.
    pub fn candidates(&self) -> Vec<Arc<PodInfo>> {
        self.view.candidates(&self.ll.name_any())
    }

    /// Every accepted lock prefix of the view: the holders a plan needs.
    pub fn prefixes(view: &View) -> impl Iterator<Item = &String> {
        view.resolved.values().flatten().filter_map(|(_, r)| match r {
            Resolution::Accepted(p) => Some(p),
            Resolution::Rejected { .. } => None,
        })
    }

    /// The first keys of each queue, named as the status names holders: a pod name (by UID, or
    /// as its key records it for a pod that is gone), `<cluster>/<namespace>/<pod>`, or
    /// `etcd:<key>`.
    pub fn queue_names(&self) -> QueueNames {
        let name = |k: &LockKey| match &k.owner {
            Some(id) => {
                self.view.pods.values().find(|p| p.uid.as_deref() == Some(id.as_str())).map(|p| p.name.clone()).unwrap_or_else(|| {
                    k.name.as_deref().and_then(|n| n.rsplit_once('/')).map_or_else(|| id.clone(), |(_, pod)| pod.to_string())
                })
            }
            None => k.outside_name(),
        };
        self.queues.iter().map(|(prefix, queue)| (prefix.clone(), queue.iter().take(QUEUE_SHOWN).map(name).collect())).collect()
    }
}
