//! The placement step of a reconcile (docs/contract.md §8), pure: from one observation, who
//! queues for the locks (never-lead candidates get no etcd key), which planned handovers move
//! locks where the policy wants them, when to look again, and the distribution for the status.
//!
//! ```text
//!  spec.placement ─┐
//!  candidates ─────┼─▶ stabilise ─▶ place ─▶ Decision { never_lead, moves, recheck_at }
//!  holders ────────┘                               └─▶ PlacementStatus (distribution, settled)
//! ```
//!
//! A move is a handover with no request object: [`super::plan`] demotes the holder, runs one
//! etcd transaction (`Step::Move`), then promotes the target. A lock with no key at all is
//! not moved: its target's key is simply created first, so etcd gives it the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::snapshot::Snapshot;
use crate::lock::LockKey;
use crate::placement::{self, Assignment, Candidate, CandidateState, Policy, Why};
use crate::pods::{Matcher, PodInfo};
use crate::resolve::Resolution;
use crate::resource::{LeaderLock, PlacementPolicy, PlacementStatus, PodLocks};

/// One planned handover of an accepted lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub lock: String,
    pub prefix: String,
    /// The holder's key's create revision: the transaction is guarded on it.
    pub from_token: i64,
    /// The holder's candidate id (pod UID) and its name as its key records it (`<ns>/<pod>`).
    pub from: String,
    pub from_name: String,
    /// The target's candidate id.
    pub to: String,
    pub why: Why,
}

/// What placement decided for one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Candidate ids that own no etcd key: never-lead candidates.
    pub never_lead: BTreeSet<String>,
    /// Handovers to make now, at most one per lock.
    pub moves: Vec<PlannedMove>,
    /// Each vacant lock's target (by prefix): its key is created first.
    pub first: BTreeMap<String, String>,
    /// When a candidate's stabilisation delay ends: reconcile again then.
    pub recheck_at: Option<SystemTime>,
    /// The status to report.
    pub status: PlacementStatus,
}

/// Decides placement for the reconciled LeaderLock.
pub fn decide(o: &Snapshot, pods: &[Arc<PodInfo>], now: jiff::Timestamp) -> Decision {
    let spec = o.ll.spec.placement();
    let policy = match spec.policy {
        PlacementPolicy::Queue => Policy::Queue,
        PlacementPolicy::Spread => Policy::Spread,
    };
    let delay = Duration::from_secs(u64::try_from(spec.stabilization_seconds).unwrap_or(0));
    let seen = states(pods, spec.preferred.as_ref().and_then(Matcher::new), spec.never_lead.as_ref().and_then(Matcher::new));
    let stable = placement::stabilise(&seen, delay, to_system(now));
    let never_lead = stable.candidates.iter().filter(|c| c.never_lead).map(|c| c.id.clone()).collect();
    let locks = accepted(o);
    let current: Vec<Assignment> = locks.iter().map(|(lock, prefix)| assignment(lock, o.holders.get(prefix))).collect();
    let placed = placement::place(policy, &current, &stable.candidates);
    let (moves, first) = if o.ll.spec.paused { (Vec::new(), BTreeMap::new()) } else { carry_out(o, &locks, &placed.moves) };
    let recheck_at = if policy == Policy::Spread && !o.ll.spec.paused { stable.recheck_at } else { None };
    let settled = placed.moves.is_empty() && recheck_at.is_none();
    let status = status(o, pods, &current, &stable.candidates, spec.policy, settled);
    Decision { never_lead, moves, first, recheck_at, status }
}

/// How long until the next stabilisation deadline, if any: the one timer placement allows.
pub fn recheck_after(d: &Decision, now: jiff::Timestamp) -> Option<Duration> {
    // A second of slack, so the reconcile lands past the deadline rather than on its edge.
    d.recheck_at.map(|at| at.duration_since(to_system(now)).unwrap_or_default() + Duration::from_secs(1))
}

fn to_system(t: jiff::Timestamp) -> SystemTime {
    SystemTime::from(t)
}

/// Candidates as placement sees them, in the order given (oldest first). A pod with no
/// recorded Ready transition time has been Ready for as long as anyone can tell.
fn states(pods: &[Arc<PodInfo>], preferred: Option<Matcher>, never: Option<Matcher>) -> Vec<CandidateState> {
    pods.iter()
        .filter_map(|p| {
            let ready_since = p.ready_since.map_or(SystemTime::UNIX_EPOCH, to_system);
            Some(CandidateState {
                id: p.uid.clone()?,
                ready_since,
                // Labels carry no timestamp: the preference counts once the pod has been Ready
                // for the delay, which is what keeps a restarting pod from pulling locks.
                preferred_since: preferred.as_ref().filter(|m| m.matches(&p.labels)).map(|_| ready_since),
                never_lead: never.as_ref().is_some_and(|m| m.matches(&p.labels)),
            })
        })
        .collect()
}

/// The accepted locks, (name, prefix), in spec order.
fn accepted(o: &Snapshot) -> Vec<(String, String)> {
    o.mine()
        .into_iter()
        .filter_map(|(lock, r)| match r {
            Resolution::Accepted(prefix) => Some((lock, prefix)),
            Resolution::Rejected { .. } => None,
        })
        .collect()
}

fn assignment(lock: &str, holder: Option<&LockKey>) -> Assignment {
    let holder = match holder {
        None => placement::Occupant::None,
        Some(h) => match &h.owner {
            Some(id) => placement::Occupant::Candidate(id.clone()),
            None => placement::Occupant::External,
        },
    };
    Assignment { lock: lock.to_string(), holder }
}

/// The moves placement asked for, as handovers of held locks and first keys of vacant ones.
fn carry_out(o: &Snapshot, locks: &[(String, String)], moves: &[placement::Move]) -> (Vec<PlannedMove>, BTreeMap<String, String>) {
    let mut planned = Vec::new();
    let mut first = BTreeMap::new();
    for m in moves {
        let Some((_, prefix)) = locks.iter().find(|(lock, _)| *lock == m.lock) else { continue };
        match (&m.from, o.holders.get(prefix)) {
            (Some(from), Some(h)) if h.owner.as_ref() == Some(from) => planned.push(PlannedMove {
                lock: m.lock.clone(),
                prefix: prefix.clone(),
                from_token: h.token,
                from: from.clone(),
                from_name: h.name.clone().unwrap_or_default(),
                to: m.to.clone(),
                why: m.why,
            }),
            // Nobody holds it and nobody is in line: the target's key goes first.
            (None, None) if o.queues.get(prefix).is_none_or(Vec::is_empty) => {
                first.insert(prefix.clone(), m.to.clone());
            }
            // A holder whose lease is at risk, or keys without a holder: wait for etcd.
            _ => {}
        }
    }
    (planned, first)
}

/// The status: locks per candidate (by pod name), then per holder that is no longer one.
fn status(
    o: &Snapshot,
    pods: &[Arc<PodInfo>],
    current: &[Assignment],
    candidates: &[Candidate],
    policy: PlacementPolicy,
    settled: bool,
) -> PlacementStatus {
    let d = placement::distribution(current, candidates);
    let name_of = |id: &str| {
        pods.iter().chain(o.view.pods.values()).find(|p| p.uid.as_deref() == Some(id)).map(|p| p.name.clone()).unwrap_or_else(|| {
            let recorded = o.holders.values().find(|h| h.owner.as_deref() == Some(id)).and_then(|h| h.name.clone());
            recorded.as_deref().and_then(|n| n.rsplit_once('/')).map_or_else(|| id.to_string(), |(_, pod)| pod.to_string())
        })
    };
    PlacementStatus {
        policy: match policy {
            PlacementPolicy::Queue => "Queue",
            PlacementPolicy::Spread => "Spread",
        }
        .into(),
        distribution: d.per_candidate.iter().map(|(id, n)| PodLocks { pod: name_of(id), locks: *n as i32 }).collect(),
        external: d.external as i32,
        vacant: d.vacant as i32,
        settled,
    }
}

/// The key-creation order for `prefix`: the candidates, with the vacant lock's target first.
pub fn wanted_order(d: &Decision, prefix: &str, mut wanted: Vec<crate::lock::Candidate>) -> Vec<crate::lock::Candidate> {
    if let Some(to) = d.first.get(prefix)
        && let Some(i) = wanted.iter().position(|c| &c.id == to)
    {
        wanted[..=i].rotate_right(1);
    }
    wanted
}

/// Whether `ll` places its locks with Spread (the Handover judge refuses requests then).
pub fn spreads(ll: &LeaderLock) -> bool {
    ll.spec.placement().policy == PlacementPolicy::Spread
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
