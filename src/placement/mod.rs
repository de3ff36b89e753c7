//! Placement (pure): which candidate *should* hold each lock of a LeaderLock, and the moves
//! (planned handovers) that get there. etcd's mutex still decides who holds; placement only
//! says where the controller should hand a lock over to.
//!
//! ```text
//!  locks + current holders ──┐
//!  candidates, oldest first ─┼─▶ place(policy) ─▶ target holder per lock
//!  (eligible, preferred,     │                  ─▶ moves, one planned handover each
//!   never_lead)              │                  ─▶ queued: who owns an etcd key at all
//!  Ready/preferred since ────┴─▶ stabilise() ─▶ eligible / preferred now, when to look again
//! ```
//!
//! Two policies:
//!
//! * [`Policy::Queue`] (the default): etcd's order, interoperable with `etcdctl lock`. Placement
//!   decides nothing but who queues: `never_lead` candidates get **no etcd key at all**. Queuing
//!   them behind the others would not keep them from leading: the moment every key ahead of
//!   theirs is gone etcd makes them holder, and the controller would have to move the lock again (a
//!   delete and a create, an etcd write while nobody joined or left) or leave the lock with a
//!   holder it will not annotate `leader`. With no key they can never be first in line, a flag
//!   turned on for a holder is an ordinary leave (demote, delete the key, the next key holds:
//!   demote-before-promote as for any leave), and a settled LeaderLock writes nothing.
//! * [`Policy::Spread`]: balances the locks over the candidates (each leads ⌊L/C⌋ or ⌈L/C⌉ once
//!   settled), with the fewest moves on a join, only the leaver's locks moving on a leave,
//!   preferred candidates first, and ties broken by the candidates' order, so the same input
//!   always gives the same answer: replicas agree and a restarted controller plans nothing new.
//!
//! Holders keep their locks while they stay candidates; [`stabilise`] says who may *take* a
//! lock, so a flapping pod does not bounce leadership.

mod shards;
mod spread;
mod stabilise;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use shards::{InvalidShards, MAX_SHARDS, shard_names};
pub use stabilise::{CandidateState, Stabilised, stabilise};

/// How a LeaderLock's locks are placed on its candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// etcd's order: the oldest key holds. Only `never_lead` is honoured (no key).
    #[default]
    Queue,
    /// Balance the locks over the candidates, preferred ones first.
    Spread,
}

/// One candidate pod, as placement sees it. Every candidate is Running and Ready (§3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Stable and unique (the pod UID): what holders and moves name.
    pub id: String,
    /// May *take* a lock now (Ready for the stabilisation delay, see [`stabilise`]). A candidate
    /// that is not eligible keeps the locks it holds and only gives some up.
    pub eligible: bool,
    /// Matches the preference (see [`stabilise`]): while any preferred candidate is eligible,
    /// Spread gives locks to preferred candidates only.
    pub preferred: bool,
    /// Never leads (Patroni's `nofailover`): owns no etcd key, so it is never in line.
    pub never_lead: bool,
}

impl Candidate {
    /// Whether it owns an etcd key in every lock.
    pub fn queued(&self) -> bool {
        !self.never_lead
    }
}

/// Who holds a lock, or should.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Occupant {
    /// Nobody: no key under the lock prefix (or, as a target, nobody placement may give it to:
    /// etcd's queue decides).
    None,
    /// A candidate, by id (possibly one that has just stopped being a candidate).
    Candidate(String),
    /// A key LeaderLock did not write (`etcdctl lock`, another cluster): never moved.
    External,
}

impl Occupant {
    pub fn candidate(&self) -> Option<&str> {
        match self {
            Occupant::Candidate(id) => Some(id),
            Occupant::None | Occupant::External => None,
        }
    }
}

/// A lock and its holder: current ones go in, targets come out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub lock: String,
    pub holder: Occupant,
}

/// Why a lock moves; the controller's Event says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// The lock has no holder.
    Vacant,
    /// The holder is no longer a candidate (deleted, not Ready, no longer selected).
    HolderLeft,
    /// The holder was marked never to lead.
    NeverLead,
    /// A preferred candidate is eligible and the holder is not preferred.
    Preference,
    /// The holder leads more than its share.
    Spread,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Vacant => "vacant",
            Why::HolderLeft => "holder left",
            Why::NeverLead => "holder must never lead",
            Why::Preference => "preference",
            Why::Spread => "spread",
        })
    }
}

/// One planned handover of `lock` from `from` (None: nobody holds it) to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub lock: String,
    pub from: Option<String>,
    pub to: String,
    pub why: Why,
}

/// What placement wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The desired holder of every lock, in the order the locks were given.
    pub target: Vec<Assignment>,
    /// The holder changes that reach `target`, one planned handover each, to run one at a
    /// time: locks without a valid holder first (vacant, holder left, never-lead), then
    /// preference, then spread; in lock order within each. Always empty under [`Policy::Queue`].
    pub moves: Vec<Move>,
    /// The candidates that own an etcd key in every lock (all but `never_lead`), in the order
    /// given: under both policies everyone else in line stays queued, so a holder that leaves is
    /// replaced at once by etcd even before any move runs.
    pub queued: Vec<String>,
}

/// Places `current` (every lock of one LeaderLock with its holder) on `candidates`.
///
/// `candidates` come in etcd seniority, oldest first (e.g. pod creation time then name, the
/// order §3.2 creates keys in): it breaks ties when locks must move, so give the same order for
/// the same candidates. A settled placement plans nothing whatever the order, so an order read
/// from etcd revisions that a handover changed cannot make locks flap. A duplicate id or lock
/// counts once (its first occurrence).
pub fn place(policy: Policy, current: &[Assignment], candidates: &[Candidate]) -> Placement {
    let candidates = dedup_by(candidates, |c| &c.id);
    let current = dedup_by(current, |a| &a.lock);
    let queued = candidates.iter().filter(|c| c.queued()).map(|c| c.id.clone()).collect();
    let (target, moves) = match policy {
        Policy::Queue => (queue_targets(&current, &candidates), Vec::new()),
        Policy::Spread => spread::spread(&current, &candidates),
    };
    Placement { target, moves, queued }
}

/// Under Queue the holder stays while it is queued; otherwise etcd gives the lock to the first
/// key in line, which is the first queued candidate (a prediction for the status, not a move).
fn queue_targets(current: &[Assignment], candidates: &[Candidate]) -> Vec<Assignment> {
    let queued = |id: &str| candidates.iter().any(|c| c.id == id && c.queued());
    let first = candidates.iter().find(|c| c.queued()).map_or(Occupant::None, |c| Occupant::Candidate(c.id.clone()));
    current
        .iter()
        .map(|a| {
            let holder = match &a.holder {
                Occupant::External => Occupant::External,
                Occupant::Candidate(id) if queued(id) => a.holder.clone(),
                Occupant::Candidate(_) | Occupant::None => first.clone(),
            };
            Assignment { lock: a.lock.clone(), holder }
        })
        .collect()
}

fn dedup_by<T: Clone>(items: &[T], key: impl Fn(&T) -> &String) -> Vec<T> {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().filter(|item| seen.insert(key(item).clone())).cloned().collect()
}

/// Locks per candidate, for the status: every candidate in the order given (zero included),
/// then holders that are no longer candidates, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Distribution {
    pub per_candidate: Vec<(String, usize)>,
    /// Locks held by a key LeaderLock did not write.
    pub external: usize,
    /// Locks with no holder.
    pub vacant: usize,
}

impl Distribution {
    /// The spread between the busiest and the idlest of the candidates that may lead (0 or 1
    /// once Spread has settled); `None` when no candidate may lead.
    pub fn imbalance(&self, candidates: &[Candidate]) -> Option<usize> {
        let counts: Vec<usize> =
            self.per_candidate.iter().filter(|(id, _)| candidates.iter().any(|c| &c.id == id && c.queued())).map(|(_, n)| *n).collect();
        Some(counts.iter().max()? - counts.iter().min()?)
    }
}

/// Counts the locks each candidate holds in `assignments` (current holders or targets).
pub fn distribution(assignments: &[Assignment], candidates: &[Candidate]) -> Distribution {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut result = Distribution::default();
    for a in assignments {
        match &a.holder {
            Occupant::Candidate(id) => *counts.entry(id).or_default() += 1,
            Occupant::External => result.external += 1,
            Occupant::None => result.vacant += 1,
        }
    }
    for c in dedup_by(candidates, |c| &c.id) {
        let n = counts.remove(c.id.as_str()).unwrap_or(0);
        result.per_candidate.push((c.id, n));
    }
    result.per_candidate.extend(counts.into_iter().map(|(id, n)| (id.to_string(), n)));
    result
}
