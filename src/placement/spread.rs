//! The Spread policy: balance with the fewest moves.
//!
//! 1. The *pool* is the queued candidates, or only the preferred ones while any preferred
//!    candidate is eligible. A lock held outside the pool (or by nobody) is *free*.
//! 2. *Takers* are the eligible pool members. A pool member that is not eligible keeps what it
//!    holds up to ⌈L/n⌉ (n: takers plus such holders) and takes nothing; the takers share the
//!    rest, ⌊·⌋ or ⌈·⌉ each, the larger shares going to those already holding the most (then to
//!    the senior), so that as few locks as possible leave their holder.
//! 3. A holder above its share gives up its last locks (in lock order); every free lock, in
//!    lock order, goes to the taker furthest below its share (then the senior).
//!
//! Applying the result and placing again gives the same shares, hence no move: a settled
//! LeaderLock plans nothing. With no taker at all, nothing moves and free locks get no target.

use std::collections::BTreeMap;

use super::{Assignment, Candidate, Move, Occupant, Why};

/// A free lock: its index in the locks, who holds it now, why it must move.
struct Free {
    lock: usize,
    from: Option<String>,
    why: Why,
}

/// A pool member that takes part in the sharing.
struct Member<'a> {
    id: &'a str,
    eligible: bool,
    /// Indexes of the locks it holds and may keep, in lock order.
    kept: Vec<usize>,
    share: usize,
}

pub(super) fn spread(current: &[Assignment], candidates: &[Candidate]) -> (Vec<Assignment>, Vec<Move>) {
    let preferred_only = candidates.iter().any(|c| c.queued() && c.eligible && c.preferred);
    let in_pool = |c: &Candidate| c.queued() && (!preferred_only || c.preferred);
    let by_id: BTreeMap<&str, &Candidate> = candidates.iter().map(|c| (c.id.as_str(), c)).collect();

    let mut kept: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut free = Vec::new();
    let mut placeable = 0;
    for (lock, a) in current.iter().enumerate() {
        let why = match &a.holder {
            Occupant::External => continue,
            Occupant::None => Why::Vacant,
            Occupant::Candidate(id) => match by_id.get(id.as_str()) {
                Some(c) if in_pool(c) => {
                    kept.entry(&c.id).or_default().push(lock);
                    placeable += 1;
                    continue;
                }
                Some(c) if c.never_lead => Why::NeverLead,
                Some(_) => Why::Preference,
                None => Why::HolderLeft,
            },
        };
        placeable += 1;
        free.push(Free { lock, from: a.holder.candidate().map(str::to_string), why });
    }

    let mut members: Vec<Member> = candidates
        .iter()
        .filter(|c| in_pool(c))
        .map(|c| Member { id: &c.id, eligible: c.eligible, kept: kept.remove(c.id.as_str()).unwrap_or_default(), share: 0 })
        .filter(|m| m.eligible || !m.kept.is_empty())
        .collect();
    let mut target: Vec<Assignment> = current.to_vec();
    for f in &free {
        target[f.lock].holder = Occupant::None;
    }
    if !members.iter().any(|m| m.eligible) {
        return (target, Vec::new());
    }
    set_shares(&mut members, placeable);
    shed(&mut members, &mut free);
    let moves = fill(&mut members, free, current, &mut target);
    (target, moves)
}

/// Step 2: each member's share; the shares add up to `placeable`.
fn set_shares(members: &mut [Member], placeable: usize) {
    let ceiling = placeable.div_ceil(members.len());
    let mut left = placeable;
    for m in members.iter_mut().filter(|m| !m.eligible) {
        m.share = m.kept.len().min(ceiling);
        left -= m.share;
    }
    // Rank takers by what they hold, most first, then by seniority (their order here).
    let mut takers: Vec<&mut Member> = members.iter_mut().filter(|m| m.eligible).collect();
    takers.sort_by_key(|m| std::cmp::Reverse(m.kept.len()));
    let (base, extra) = (left / takers.len(), left % takers.len());
    for (rank, m) in takers.into_iter().enumerate() {
        m.share = base + usize::from(rank < extra);
    }
}

/// Step 3a: holders above their share free their last locks.
fn shed(members: &mut [Member], free: &mut Vec<Free>) {
    for m in members.iter_mut() {
        while m.kept.len() > m.share {
            if let Some(lock) = m.kept.pop() {
                free.push(Free { lock, from: Some(m.id.to_string()), why: Why::Spread });
            }
        }
    }
}

/// Step 3b: free locks, in lock order, to the taker with the largest shortfall.
fn fill(members: &mut [Member], mut free: Vec<Free>, current: &[Assignment], target: &mut [Assignment]) -> Vec<Move> {
    free.sort_by_key(|f| f.lock);
    let mut moves = Vec::new();
    for f in free {
        let best = members
            .iter_mut()
            .filter(|m| m.share > m.kept.len())
            .reduce(|best, m| if m.share - m.kept.len() > best.share - best.kept.len() { m } else { best });
        let Some(m) = best else {
            target[f.lock].holder = Occupant::None;
            continue;
        };
        m.kept.push(f.lock);
        target[f.lock].holder = Occupant::Candidate(m.id.to_string());
        moves.push((f.why, f.lock, Move { lock: current[f.lock].lock.clone(), from: f.from, to: m.id.to_string(), why: f.why }));
    }
    moves.sort_by_key(|(why, lock, _)| (*why, *lock));
    moves.into_iter().map(|(_, _, m)| m).collect()
}
