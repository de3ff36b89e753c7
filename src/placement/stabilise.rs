//! Stabilisation: a candidate may take locks only once it has been Ready for the delay, and
//! counts as preferred only once it has matched the preference for the delay. A pod whose
//! readiness or label flaps therefore never pulls leadership back and forth; holders are not
//! concerned (they keep their locks while they stay candidates, see [`super::place`]).
//!
//! The answer also says when it next changes by itself, so the controller can look again at
//! that one moment instead of polling.

use std::time::{Duration, SystemTime};

use super::Candidate;

/// What the controller observed of one candidate pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateState {
    pub id: String,
    /// When it last became Ready (the `Ready` condition's `lastTransitionTime`, which survives
    /// controller restarts and is the same for every replica).
    pub ready_since: SystemTime,
    /// Since when it has matched the preference; `None` when it does not. Losing the preference
    /// counts at once (its locks may move away); gaining it counts after the delay.
    pub preferred_since: Option<SystemTime>,
    pub never_lead: bool,
}

/// Candidates as placement should see them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stabilised {
    /// In the order observed.
    pub candidates: Vec<Candidate>,
    /// The earliest moment a candidate becomes eligible or preferred, if any is still waiting:
    /// place again then.
    pub recheck_at: Option<SystemTime>,
}

/// Applies `delay` to what was observed, as of `now`.
pub fn stabilise(states: &[CandidateState], delay: Duration, now: SystemTime) -> Stabilised {
    let mut recheck_at: Option<SystemTime> = None;
    let mut settled = |since: SystemTime| match since.checked_add(delay) {
        Some(at) if at <= now => true,
        Some(at) => {
            recheck_at = Some(recheck_at.map_or(at, |r| r.min(at)));
            false
        }
        // Beyond what the clock can say: never, and nothing to wait for.
        None => false,
    };
    let candidates = states
        .iter()
        .map(|o| Candidate {
            id: o.id.clone(),
            eligible: settled(o.ready_since),
            preferred: o.preferred_since.is_some_and(&mut settled),
            never_lead: o.never_lead,
        })
        .collect();
    Stabilised { candidates, recheck_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn state(id: &str, ready: u64, preferred: Option<u64>) -> CandidateState {
        CandidateState { id: id.into(), ready_since: at(ready), preferred_since: preferred.map(at), never_lead: false }
    }

    #[test]
    fn a_candidate_may_take_locks_only_once_ready_for_the_delay() {
        let delay = Duration::from_secs(30);
        let pods = [state("old", 0, None), state("new", 100, None)];
        let now = stabilise(&pods, delay, at(110));
        assert_eq!(now.candidates.iter().map(|c| c.eligible).collect::<Vec<_>>(), [true, false]);
        assert_eq!(now.recheck_at, Some(at(130)), "look again exactly when `new` settles");
        let later = stabilise(&pods, delay, at(130));
        assert!(later.candidates.iter().all(|c| c.eligible));
        assert_eq!(later.recheck_at, None, "nothing pending: no wake-up at all");
    }

    #[test]
    fn preference_counts_after_the_delay_and_its_loss_at_once() {
        let delay = Duration::from_secs(30);
        let pods = [state("a", 0, Some(90)), state("b", 0, Some(0)), state("c", 0, None)];
        let now = stabilise(&pods, delay, at(100));
        assert_eq!(now.candidates.iter().map(|c| c.preferred).collect::<Vec<_>>(), [false, true, false]);
        assert_eq!(now.recheck_at, Some(at(120)));
    }

    #[test]
    fn a_flapping_pod_restarts_its_delay_every_time_it_becomes_ready() {
        let delay = Duration::from_secs(30);
        // Ready at 0, not Ready at 25, Ready again at 40: only the last transition counts.
        let flapping = [state("f", 40, None)];
        assert!(!stabilise(&flapping, delay, at(60)).candidates[0].eligible);
        assert!(stabilise(&flapping, delay, at(70)).candidates[0].eligible);
    }

    #[test]
    fn zero_delay_and_clock_extremes_are_handled() {
        let pods = [state("a", 100, Some(100))];
        let now = stabilise(&pods, Duration::ZERO, at(100));
        assert!(now.candidates[0].eligible && now.candidates[0].preferred);
        let never = stabilise(&pods, Duration::MAX, at(100));
        assert!(!never.candidates[0].eligible);
        assert_eq!(never.recheck_at, None, "an unreachable moment is not waited for");
    }
}
