//! The decision of one reconcile stage, pure: from one [`Snapshot`] and what is derived from it
//! once ([`Decided`]: the Handover verdicts and placement's decision), every write to make, as
//! data, in the order the writes must land. Applying a plan is [`super::reconcile`]'s business.
//!
//! ```text
//!  Snapshot ─▶ decide ─▶ Decided ─▶ before_etcd ─▶ [Request…, Pod (demotions)…, Sync…, Move…, Release…]
//!  fresh Snapshot (after etcd) ─▶ decide ─▶ after_etcd ─▶ [Pod…, Status, Request…, Publish]
//!                                          cleanup     ─▶ [Pod…, Release…]
//! ```
//!
//! Two stages, because a promotion carries the fencing token, which only exists once etcd has
//! created the holder's key. A Handover ([`super::handover`]) is accepted (`Request`), its
//! holder demoted (the lock's holder is taken as unknown while it moves), the lock moved
//! (`Move`), the new holder promoted, and the request settled (`Request`). While the
//! LeaderLock is paused no `Sync` or `Move` is planned: the keys, and so the holders, stay.
//! Recording which locks were accepted (the index's claims) is not a write: the reconcile does
//! it after the etcd stage succeeded.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::handover::{self, Facts, Verdict};
use super::placement;
use super::snapshot::Snapshot;
use super::status;
use crate::lock::Candidate;
use crate::placement::Why;
use crate::pods::{self, PodInfo, PodKeys};
use crate::renewal::{self, Renew};
use crate::resolve::Resolution;
use crate::resource::handover::HandoverStatus;
use crate::resource::{LeaderLockStatus, reasons};

/// What one snapshot implies, derived once: each decision below reads it instead of judging or
/// placing again.
pub struct Decided {
    /// How the LeaderLock's locks resolve, in spec order.
    pub mine: Vec<(String, Resolution)>,
    /// Its candidate pods, oldest first.
    pub candidates: Vec<std::sync::Arc<PodInfo>>,
    /// Each open Handover and what becomes of it.
    pub judged: Vec<handover::Judged>,
    /// Placement's decision: never-lead candidates, moves, the status block, the next deadline.
    pub placed: placement::Decision,
    /// The instant of the decision: renewal marks (docs/contract.md §3.1) are written as of it.
    pub now: jiff::Timestamp,
}

/// Judges the Handovers and places the locks of `s`, once.
pub fn decide(s: &Snapshot, now: jiff::Timestamp) -> Decided {
    let mine = s.mine();
    let candidates = s.candidates();
    let pods: Vec<_> = s.view.pods.values().cloned().collect();
    let queue = |prefix: &str| s.queues.get(prefix).cloned().unwrap_or_default();
    let placed = placement::decide(s, &candidates, now);
    let never_lead = &placed.never_lead;
    let facts = Facts { ll: s.ll, mine: &mine, candidates: &candidates, pods: &pods, line: &queue, never_lead, now };
    let judged = handover::judge(&s.requests, &facts);
    Decided { mine, candidates, judged, placed, now }
}

/// One write, in the order it must land.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Server-side apply `to` as the pod's `leaderlock.dev/*` keys (`from`: what it carries).
    Pod { name: String, uid: Option<String>, from: PodKeys, to: PodKeys },
    /// Make the candidate keys under `prefix` match `wanted` (in creation priority order).
    Sync { lock: String, prefix: String, wanted: Vec<Candidate>, ttl: i64 },
    /// Delete every key of ours under `prefix`; foreign keys stay.
    Release { lock: String, prefix: String },
    /// Apply the LeaderLock's status.
    Status(LeaderLockStatus),
    /// Announce holder changes: one Event each, the holder-change metric, failover latency.
    Publish(Vec<HolderChange>),
    /// Apply a Handover's status.
    Request { name: String, status: HandoverStatus },
    /// Announce that nodes of the LeaderLock's pods are lost: one `NodeLost` Event (the note).
    NodeLost(String),
    /// Hand the lock at `prefix` from the holder with token `from_token` to the candidate `to`
    /// (None: the next in line) in one etcd transaction: for the Handover `request`, or (None)
    /// a move placement planned, for the reason `why`.
    Move { lock: String, prefix: String, from_token: i64, to: Option<String>, request: Option<String>, why: Option<Why> },
}

/// A lock of the LeaderLock got a new holder (or a new fencing token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderChange {
    pub lock: String,
    /// The lock's etcd prefix, to find when its previous holder's key was deleted.
    pub prefix: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub token: Option<String>,
    /// Why placement moved the lock, when it did (docs/contract.md §8).
    pub why: Option<Why>,
}

/// Which pod writes a plan makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Only pods losing a `leader` role (before their etcd keys go).
    Demotions,
    /// Everything: demotions and settled pods first, then promotions.
    All,
    /// Everything, for a LeaderLock going away: no resync follows, so none is left pending.
    Cleanup,
}

fn candidate_of(pod: &PodInfo) -> Option<Candidate> {
    Some(Candidate { id: pod.uid.clone()?, name: format!("{}/{}", pod.namespace, pod.name) })
}

/// Before etcd: demote the pods that must not lead any more (before their keys go), one etcd
/// sync per accepted lock, the moves, one release per lock no longer held.
pub fn before_etcd(s: &Snapshot, d: &Decided) -> Vec<Step> {
    let placed = &d.placed;
    let mut steps = request_writes(&d.judged, true);
    let mut masked = moving(&d.judged);
    masked.extend(placed.moves.iter().map(|m| m.prefix.clone()));
    // A never-lead holder's key is about to go (under Queue it simply leaves the line): demoted
    // first, like any holder that leaves.
    masked.extend(d.mine.iter().filter_map(|(_, r)| match r {
        Resolution::Accepted(p) if s.holders.get(p).and_then(|h| h.owner.as_ref()).is_some_and(|id| placed.never_lead.contains(id)) => {
            Some(p.clone())
        }
        _ => None,
    }));
    steps.extend(pod_writes(s, Pass::Demotions, &masked, Renew::Keep));
    if !s.ll.spec.paused {
        let wanted: Vec<Candidate> =
            d.candidates.iter().filter_map(|p| candidate_of(p)).filter(|c| !placed.never_lead.contains(&c.id)).collect();
        for (lock, res) in &d.mine {
            if let Resolution::Accepted(prefix) = res {
                steps.extend(sync_and_move(s, placed, lock, prefix, &wanted));
            }
        }
    }
    for j in &d.judged {
        if let Verdict::Move { lock, prefix, from_token, to, .. } = &j.verdict {
            let request = Some(j.request.metadata.name.clone().unwrap_or_default());
            steps.push(Step::Move {
                lock: lock.clone(),
                prefix: prefix.clone(),
                from_token: *from_token,
                to: to.clone(),
                request,
                why: None,
            });
        }
    }
    steps.extend(releases(s));
    steps
}

/// The locks placement moved in `steps`, and why: the Events of the holder changes say it.
pub fn placement_moves(steps: &[Step]) -> BTreeMap<String, Why> {
    steps
        .iter()
        .filter_map(|step| match step {
            Step::Move { lock, why: Some(why), .. } => Some((lock.clone(), *why)),
            _ => None,
        })
        .collect()
}

/// One lock's etcd steps: its keys synced with the candidates (never-lead ones excluded, a vacant
/// lock's placement target first), then placement's move, if any. A holder that must go (it left,
/// or must never lead) keeps its key until the move's transaction hands the lock straight to the
/// target, and loses it in a second sync: a plain delete would give the lock to whoever is next
/// in line, and placement would have to move it again.
fn sync_and_move(s: &Snapshot, placed: &placement::Decision, lock: &str, prefix: &str, wanted: &[Candidate]) -> Vec<Step> {
    let ttl = s.ll.spec.ttl_seconds;
    let sync = |wanted: Vec<Candidate>| Step::Sync { lock: lock.to_string(), prefix: prefix.to_string(), wanted, ttl };
    let wanted = placement::wanted_order(placed, prefix, wanted.to_vec());
    let Some(m) = placed.moves.iter().find(|m| m.prefix == prefix) else { return vec![sync(wanted)] };
    let mut keeping = wanted.clone();
    let kept = !keeping.iter().any(|c| c.id == m.from);
    if kept {
        keeping.insert(0, Candidate { id: m.from.clone(), name: m.from_name.clone() });
    }
    let mut steps = vec![sync(keeping)];
    steps.push(Step::Move {
        lock: lock.to_string(),
        prefix: prefix.to_string(),
        from_token: m.from_token,
        to: Some(m.to.clone()),
        request: None,
        why: Some(m.why),
    });
    if kept {
        steps.push(sync(wanted));
    }
    steps
}

/// Only the demotions: what a lease at risk calls for (docs/contract.md §4.7), with no etcd
/// write, which could not be made anyway.
pub fn demotions(o: &Snapshot) -> Vec<Step> {
    pod_writes(o, Pass::Demotions, &BTreeSet::new(), Renew::Keep)
}

/// The Handover status writes of `judged`: the settled ones, and (`accepting`) the acceptances
/// of the moves about to be made.
fn request_writes(judged: &[handover::Judged], accepting: bool) -> Vec<Step> {
    let name = |j: &handover::Judged| j.request.metadata.name.clone().unwrap_or_default();
    judged
        .iter()
        .filter_map(|j| match &j.verdict {
            Verdict::Settle(status) => Some(Step::Request { name: name(j), status: status.clone() }),
            Verdict::Move { accept: Some(status), .. } if accepting => Some(Step::Request { name: name(j), status: status.clone() }),
            Verdict::Move { .. } => None,
        })
        .collect()
}

/// The prefixes whose lock is being moved: their holder is taken as unknown, so it is demoted
/// before the move and nobody is promoted until etcd shows the new holder.
fn moving(judged: &[handover::Judged]) -> BTreeSet<String> {
    judged
        .iter()
        .filter_map(|j| match &j.verdict {
            Verdict::Move { prefix, .. } => Some(prefix.clone()),
            Verdict::Settle(_) => None,
        })
        .collect()
}

/// After etcd: every pod write left (promotions of the holders etcd now shows last), then the
/// status and the holder changes it reports (`moved`: the locks placement moved before etcd).
pub fn after_etcd(s: &Snapshot, d: &Decided, moved: &BTreeMap<String, Why>, now: jiff::Timestamp) -> Vec<Step> {
    let mut steps = pod_writes(s, Pass::All, &moving(&d.judged), Renew::At(d.now));
    let mut status = status::build(s.ll, &d.mine, &d.candidates, &s.holders, &s.queue_names(), now);
    status.placement = Some(d.placed.status.clone());
    status::set_node_condition(&mut status, s.ll, &s.view.node_report(&s.ll.name_any()), now);
    let old = s.ll.status.clone().unwrap_or_default();
    let lost = newly_lost(&old, &status);
    let mut changes = holder_changes(&old, &status, &d.mine);
    for change in &mut changes {
        change.why = moved.get(&change.lock).copied();
    }
    if s.ll.status.as_ref() != Some(&status) {
        steps.push(Step::Status(status));
    }
    // After the status: a requester told "done" reads the new holder there too.
    steps.extend(request_writes(&d.judged, false));
    // After the status write: a failed write is retried from the old status, which would
    // announce the same change again.
    if !changes.is_empty() {
        steps.push(Step::Publish(changes));
    }
    steps.extend(lost.map(Step::NodeLost));
    steps
}

/// The `NodeLost` message when the condition turned `True` or names other nodes than before.
fn newly_lost(old: &LeaderLockStatus, new: &LeaderLockStatus) -> Option<String> {
    let lost =
        |s: &LeaderLockStatus| s.conditions.iter().find(|c| c.type_ == reasons::NODE_LOST && c.status == "True").map(|c| c.message.clone());
    lost(new).filter(|m| lost(old).as_ref() != Some(m))
}

/// How long until the next renewal mark of `s`'s pods is due, once `steps` are written (None:
/// no pod carries one).
pub fn next_renewal(s: &Snapshot, steps: &[Step], now: jiff::Timestamp) -> Option<std::time::Duration> {
    let mut keys: BTreeMap<&String, &PodKeys> = s.current.iter().collect();
    for step in steps {
        if let Step::Pod { name, to, .. } = step {
            keys.insert(name, to);
        }
    }
    keys.values().filter_map(|k| renewal::due_in(k, now)).min()
}

/// A LeaderLock being deleted (it assigns no roles any more): unlabel its pods, demotions
/// first, then delete its candidate keys.
pub fn cleanup(o: &Snapshot) -> Vec<Step> {
    let mut steps = pod_writes(o, Pass::Cleanup, &BTreeSet::new(), Renew::Keep);
    for (lock, res) in o.mine() {
        if let Resolution::Accepted(prefix) = res {
            steps.push(Step::Release { lock, prefix });
        }
    }
    steps.extend(releases(o));
    steps
}

/// One release per lock the LeaderLock held and no longer has (removed from `spec.locks`, or
/// moved to another prefix): nobody else deletes those keys, and the controller's lease would
/// keep them alive for ever, blocking every other client of that prefix.
fn releases(o: &Snapshot) -> Vec<Step> {
    o.view.released.iter().map(|(lock, prefix)| Step::Release { lock: lock.clone(), prefix: prefix.clone() }).collect()
}

/// The `leaderlock.dev/*` writes to the pods of the view — each pod's full set, across every
/// LeaderLock of the namespace, as one field manager must — every demotion before any
/// promotion. Nothing for pods already right, and each pod at most twice (only a pod that loses
/// one lock and gains another needs the intermediate step).
fn pod_writes(o: &Snapshot, pass: Pass, moving: &BTreeSet<String>, renew: Renew) -> Vec<Step> {
    let holder = |prefix: &str| if moving.contains(prefix) { None } else { o.holders.get(prefix).cloned() };
    let mut plans = Vec::new();
    for (name, pod) in &o.view.pods {
        let roles = o.view.roles_for(pod, holder);
        let current = o.current.get(name).cloned().unwrap_or_else(|| pod.keys());
        let when = if pass == Pass::Cleanup { pods::Resync::Final } else { o.resync.when(name) };
        let desired = renewal::with_renewal(pods::desired(name, &roles), &current, name, &roles, renew);
        let (desired, _) = pods::with_resync(desired, &current, when);
        if current != desired {
            let first = pods::demotions_only(&current, &desired, &roles);
            plans.push((name, &pod.uid, current, first, desired));
        }
    }
    let write = |name: &String, uid: &Option<String>, from: &PodKeys, to: &PodKeys| Step::Pod {
        name: name.clone(),
        uid: uid.clone(),
        from: from.clone(),
        to: to.clone(),
    };
    let mut steps = Vec::new();
    for (name, uid, current, first, desired) in &mut plans {
        let settles = pass != Pass::Demotions && first == desired;
        if first != current && (settles || pods::is_demotion(current, first)) {
            steps.push(write(name, uid, current, first));
            *current = first.clone();
        }
    }
    if pass != Pass::Demotions {
        for (name, uid, current, _, desired) in &plans {
            if desired != current {
                steps.push(write(name, uid, current, desired));
            }
        }
    }
    steps
}

/// One change per lock whose holder or token differs from the last reported status (not one
/// per reconcile); a lock losing its holder is not a change to announce.
pub fn holder_changes(old: &LeaderLockStatus, new: &LeaderLockStatus, mine: &[(String, Resolution)]) -> Vec<HolderChange> {
    let mut out = Vec::new();
    for st in &new.locks {
        let Some(to) = st.holder.clone() else {
            continue;
        };
        let prev = old.locks.iter().find(|l| l.name == st.name);
        let (from, from_token) = (prev.and_then(|p| p.holder.clone()), prev.and_then(|p| p.fencing_token.clone()));
        if Some(&to) == from.as_ref() && st.fencing_token == from_token {
            continue;
        }
        let prefix = mine.iter().find_map(|(n, r)| match r {
            Resolution::Accepted(p) if *n == st.name => Some(p.clone()),
            _ => None,
        });
        out.push(HolderChange { lock: st.name.clone(), prefix, from, to, token: st.fencing_token.clone(), why: None });
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "plan_handover_tests.rs"]
mod handover_tests;
