//! Placement by example, then its promises as properties over random LeaderLocks.

use proptest::prelude::*;

use super::*;

fn candidate(id: &str) -> Candidate {
    Candidate { id: id.into(), eligible: true, preferred: false, never_lead: false }
}

fn locks(holders: &[Occupant]) -> Vec<Assignment> {
    holders.iter().enumerate().map(|(i, h)| Assignment { lock: format!("shard-{i}"), holder: h.clone() }).collect()
}

fn on(id: &str) -> Occupant {
    Occupant::Candidate(id.into())
}

/// The holders once every move has run.
fn apply(current: &[Assignment], moves: &[Move]) -> Vec<Assignment> {
    let mut after = current.to_vec();
    for m in moves {
        let a = after.iter_mut().find(|a| a.lock == m.lock).expect("a move names a known lock");
        assert_eq!(a.holder.candidate(), m.from.as_deref(), "move {m:?} starts from the current holder");
        a.holder = on(&m.to);
    }
    after
}

fn counts(assignments: &[Assignment], candidates: &[Candidate]) -> Vec<usize> {
    distribution(assignments, candidates).per_candidate.into_iter().map(|(_, n)| n).collect()
}

// ───────────────────────────── examples ─────────────────────────────

#[test]
fn queue_keeps_etcds_order_and_plans_no_move() {
    let pods = [candidate("w1"), candidate("w2"), candidate("w3")];
    let current = locks(&[on("w1"), on("w1")]);
    let p = place(Policy::Queue, &current, &pods);
    assert_eq!(p.target, current, "the demo's two locks stay on the oldest pod");
    assert!(p.moves.is_empty());
    assert_eq!(p.queued, ["w1", "w2", "w3"]);
}

#[test]
fn queue_gives_never_lead_candidates_no_key_so_etcd_passes_them_by() {
    let mut pods = [candidate("w1"), candidate("w2"), candidate("w3")];
    pods[0].never_lead = true;
    pods[1].never_lead = true;
    let p = place(Policy::Queue, &locks(&[on("w1"), Occupant::None, Occupant::External]), &pods);
    assert_eq!(p.queued, ["w3"], "no key, so never first in line");
    assert_eq!(p.target, locks(&[on("w3"), on("w3"), Occupant::External]));
    assert!(p.moves.is_empty(), "deleting w1's key is an ordinary leave, not a handover");
}

#[test]
fn spread_moves_one_of_the_demos_two_locks_to_the_second_pod() {
    let pods = [candidate("w1"), candidate("w2"), candidate("w3")];
    let current = locks(&[on("w1"), on("w1")]);
    let p = place(Policy::Spread, &current, &pods);
    assert_eq!(p.moves, [Move { lock: "shard-1".into(), from: Some("w1".into()), to: "w2".into(), why: Why::Spread }]);
    assert_eq!(counts(&p.target, &pods), [1, 1, 0]);
}

#[test]
fn spread_takes_32_locks_off_one_pod_with_24_moves_8_each() {
    let pods: Vec<_> = (1..=4).map(|i| candidate(&format!("w{i}"))).collect();
    let current = locks(&vec![on("w1"); 32]);
    let p = place(Policy::Spread, &current, &pods);
    assert_eq!(p.moves.len(), 24);
    assert_eq!(counts(&p.target, &pods), [8, 8, 8, 8]);
    assert!(p.moves.iter().all(|m| m.from.as_deref() == Some("w1") && m.why == Why::Spread));
    assert_eq!(place(Policy::Spread, &p.target, &pods).moves, []);
}

#[test]
fn spread_fills_vacant_locks_and_says_why_each_moves() {
    let mut pods = [candidate("a"), candidate("b"), candidate("c")];
    pods[2].never_lead = true;
    let current = locks(&[Occupant::None, on("gone"), on("c"), on("a"), Occupant::External]);
    let p = place(Policy::Spread, &current, &pods);
    let whys: Vec<_> = p.moves.iter().map(|m| (m.lock.as_str(), m.why)).collect();
    assert_eq!(whys, [("shard-0", Why::Vacant), ("shard-1", Why::HolderLeft), ("shard-2", Why::NeverLead)]);
    assert_eq!(p.target[4].holder, Occupant::External, "an external holder is never moved");
    assert_eq!(counts(&p.target, &pods), [2, 2, 0]);
}

#[test]
fn preferred_candidates_take_every_lock_once_one_is_eligible() {
    let mut pods = [candidate("zone-b-1"), candidate("zone-a-1"), candidate("zone-a-2")];
    pods[1].preferred = true;
    pods[2].preferred = true;
    pods[1].eligible = false;
    pods[2].eligible = false;
    let current = locks(&[on("zone-b-1"), on("zone-b-1"), on("zone-b-1")]);
    assert_eq!(place(Policy::Spread, &current, &pods).moves, [], "no preferred candidate is eligible yet");

    pods[1].eligible = true;
    let p = place(Policy::Spread, &current, &pods);
    assert_eq!(p.moves.len(), 3);
    assert!(p.moves.iter().all(|m| m.to == "zone-a-1" && m.why == Why::Preference), "only eligible ones take: {:?}", p.moves);

    // Once zone-a-2 settles too, zone-a-1 shares; zone-b-1 leads nothing while they are there.
    pods[2].eligible = true;
    let settled = place(Policy::Spread, &apply(&current, &p.moves), &pods);
    assert_eq!(counts(&settled.target, &pods), [0, 2, 1]);
}

#[test]
fn a_holder_that_may_not_take_keeps_up_to_its_share_and_nobody_takes_without_eligibility() {
    let mut pods = [candidate("first"), candidate("second")];
    pods[0].eligible = false;
    pods[1].eligible = false;
    let current = locks(&[on("first"), on("first"), on("first"), Occupant::None]);
    let p = place(Policy::Spread, &current, &pods);
    assert_eq!(p.moves, [], "nobody may take: etcd's queue decides the vacant lock");
    assert_eq!(p.target[3].holder, Occupant::None);

    pods[1].eligible = true;
    let p = place(Policy::Spread, &current, &pods);
    assert_eq!(counts(&p.target, &pods), [2, 2], "first keeps its share (not yet eligible), second takes the rest");
    assert_eq!(place(Policy::Spread, &p.target, &pods).moves, [], "and nothing more moves once first settles either");
}

#[test]
fn ties_follow_the_candidates_order() {
    let pods = [candidate("b"), candidate("a")];
    let p = place(Policy::Spread, &locks(&[Occupant::None, Occupant::None, Occupant::None]), &pods);
    assert_eq!(p.target, locks(&[on("b"), on("b"), on("a")]), "the senior gets the larger share, the largest shortfall fills first");
    let reversed = [candidate("a"), candidate("b")];
    assert_eq!(place(Policy::Spread, &p.target, &reversed).moves, [], "a settled placement stays whatever the order");
}

#[test]
fn the_distribution_lists_every_candidate_then_departed_holders() {
    let mut pods = [candidate("a"), candidate("b"), candidate("n")];
    pods[2].never_lead = true;
    let current = locks(&[on("a"), on("gone"), Occupant::External, Occupant::None, on("a")]);
    let d = distribution(&current, &pods);
    assert_eq!(d.per_candidate, [("a".into(), 2), ("b".into(), 0), ("n".into(), 0), ("gone".into(), 1)]);
    assert_eq!((d.external, d.vacant), (1, 1));
    assert_eq!(d.imbalance(&pods), Some(2), "never-lead candidates do not count");
    assert_eq!(distribution(&current, &[]).imbalance(&[]), None);
}

#[test]
fn duplicates_count_once() {
    let pods = [candidate("a"), candidate("a")];
    let p = place(Policy::Spread, &locks(&[Occupant::None, Occupant::None]), &pods);
    assert_eq!(p.queued, ["a"]);
    assert_eq!(counts(&p.target, &pods), [2]);
}

// ───────────────────────────── properties ─────────────────────────────

/// Up to 40 locks on up to 8 candidates with random flags and holders (some of them gone, some
/// external).
fn any_lockset() -> impl Strategy<Value = (Vec<Assignment>, Vec<Candidate>)> {
    (1usize..=40, 0usize..=8).prop_flat_map(|(l, c)| {
        let flags = proptest::collection::vec((any::<bool>(), any::<bool>(), prop::bool::weighted(0.2)), c);
        let holders = proptest::collection::vec(
            prop_oneof![1 => Just(Occupant::None), 1 => Just(Occupant::External), 6 => (0..c + 2).prop_map(|i| on(&format!("p{i}")))],
            l,
        );
        (holders, flags).prop_map(|(holders, flags)| {
            let pods = flags
                .into_iter()
                .enumerate()
                .map(|(i, (eligible, preferred, never_lead))| Candidate { id: format!("p{i}"), eligible, preferred, never_lead })
                .collect();
            (locks(&holders), pods)
        })
    })
}

/// A LeaderLock settled under Spread: `l` locks (some external) on `c` eligible candidates.
fn settled(l: usize, c: usize, externals: usize) -> (Vec<Assignment>, Vec<Candidate>) {
    let pods: Vec<_> = (0..c).map(|i| candidate(&format!("p{i}"))).collect();
    let holders: Vec<_> = (0..l).map(|i| if i < externals { Occupant::External } else { Occupant::None }).collect();
    let start = locks(&holders);
    let p = place(Policy::Spread, &start, &pods);
    (apply(&start, &p.moves), pods)
}

fn pool(pods: &[Candidate]) -> Vec<&Candidate> {
    let preferred_only = pods.iter().any(|c| c.queued() && c.eligible && c.preferred);
    pods.iter().filter(|c| c.queued() && (!preferred_only || c.preferred)).collect()
}

proptest! {
    #[test]
    fn the_same_input_gives_the_same_placement((current, pods) in any_lockset()) {
        prop_assert_eq!(place(Policy::Spread, &current, &pods), place(Policy::Spread, &current, &pods));
    }

    #[test]
    fn applying_the_moves_leaves_nothing_to_move((current, pods) in any_lockset()) {
        let p = place(Policy::Spread, &current, &pods);
        let after = apply(&current, &p.moves);
        let again = place(Policy::Spread, &after, &pods);
        prop_assert_eq!(&again.moves, &vec![]);
        prop_assert_eq!(&again.target, &p.target);
    }

    /// A handover recreates keys at the back of the line, so an order taken from etcd's revisions may change after the
    /// moves ran: a settled placement must not care.
    #[test]
    fn a_settled_placement_stays_settled_whatever_the_candidates_order((current, pods) in any_lockset()) {
        let p = place(Policy::Spread, &current, &pods);
        let after = apply(&current, &p.moves);
        let reversed: Vec<_> = pods.iter().rev().cloned().collect();
        prop_assert_eq!(place(Policy::Spread, &after, &reversed).moves, vec![]);
    }

    #[test]
    fn moves_go_only_to_eligible_pool_members_and_targets_never_to_never_lead((current, pods) in any_lockset()) {
        let p = place(Policy::Spread, &current, &pods);
        let pool = pool(&pods);
        for m in &p.moves {
            prop_assert!(pool.iter().any(|c| c.id == m.to && c.eligible), "{m:?} goes outside the eligible pool");
        }
        for (now, want) in current.iter().zip(&p.target) {
            if let Occupant::Candidate(id) = &want.holder {
                let c = pods.iter().find(|c| &c.id == id);
                prop_assert!(c.is_some_and(|c| c.queued()), "{want:?} targets a never-lead or unknown pod");
                prop_assert!(now.holder == want.holder || c.is_some_and(|c| c.eligible), "{want:?} given to a pod that may not take");
            }
        }
    }

    #[test]
    fn moves_are_exactly_the_changed_targets_and_external_holders_stay((current, pods) in any_lockset()) {
        let p = place(Policy::Spread, &current, &pods);
        for (now, want) in current.iter().zip(&p.target) {
            prop_assert_eq!(now.holder == Occupant::External, want.holder == Occupant::External);
            let moved = p.moves.iter().filter(|m| m.lock == now.lock).count();
            let changes = now.holder != want.holder && want.holder != Occupant::None;
            prop_assert_eq!(moved, usize::from(changes), "lock {}: {:?} -> {:?}", now.lock, now.holder, want.holder);
        }
        let order: Vec<_> = p.moves.iter().map(|m| m.why).collect();
        prop_assert!(order.is_sorted(), "moves that fill an empty seat run first: {order:?}");
    }

    #[test]
    fn settled_spread_is_balanced(
        (current, mut pods) in any_lockset(),
    ) {
        for c in &mut pods {
            c.eligible = true;
        }
        let p = place(Policy::Spread, &current, &pods);
        let pool = pool(&pods);
        let d = distribution(&p.target, &pods);
        let shares: Vec<usize> =
            d.per_candidate.iter().filter(|(id, _)| pool.iter().any(|c| &c.id == id)).map(|(_, n)| *n).collect();
        if let (Some(max), Some(min)) = (shares.iter().max(), shares.iter().min()) {
            prop_assert!(max - min <= 1, "shares {shares:?}");
        }
        let outside: usize =
            d.per_candidate.iter().filter(|(id, _)| !pool.iter().any(|c| &c.id == id)).map(|(_, n)| *n).sum();
        prop_assert_eq!(outside, 0, "nobody outside the pool leads once settled");
    }

    #[test]
    fn a_join_moves_at_most_the_joiners_share_and_only_to_it(
        l in 1usize..=64, c in 1usize..=12, ext in 0usize..=3, at in 0usize..=12,
    ) {
        let (current, mut pods) = settled(l, c, ext.min(l));
        // Wherever it ranks (an older pod may become Ready late).
        pods.insert(at.min(c), candidate("joiner"));
        let p = place(Policy::Spread, &current, &pods);
        let placeable = l - ext.min(l);
        prop_assert!(p.moves.len() <= placeable.div_ceil(c + 1), "{} moves for {placeable} locks on {} pods", p.moves.len(), c + 1);
        prop_assert!(p.moves.iter().all(|m| m.to == "joiner" && m.why == Why::Spread), "{:?}", p.moves);
        prop_assert!(distribution(&p.target, &pods).imbalance(&pods).unwrap_or(0) <= 1);
    }

    #[test]
    fn a_leave_moves_exactly_the_leavers_locks(l in 1usize..=64, c in 2usize..=12, leaver in 0usize..12) {
        let (current, mut pods) = settled(l, c, 0);
        let gone = pods.remove(leaver % c);
        let p = place(Policy::Spread, &current, &pods);
        let held: Vec<_> = current.iter().filter(|a| a.holder == on(&gone.id)).map(|a| a.lock.clone()).collect();
        let moved: Vec<_> = p.moves.iter().map(|m| m.lock.clone()).collect();
        prop_assert_eq!(moved, held);
        prop_assert!(p.moves.iter().all(|m| m.why == Why::HolderLeft));
        prop_assert!(distribution(&p.target, &pods).imbalance(&pods).unwrap_or(0) <= 1);
    }

    #[test]
    fn queue_moves_nothing_and_never_targets_never_lead((current, pods) in any_lockset()) {
        let p = place(Policy::Queue, &current, &pods);
        prop_assert!(p.moves.is_empty());
        for want in &p.target {
            if let Occupant::Candidate(id) = &want.holder {
                prop_assert!(pods.iter().any(|c| &c.id == id && c.queued()));
            }
        }
        prop_assert!(p.queued.iter().all(|id| pods.iter().any(|c| &c.id == id && !c.never_lead)));
    }
}
