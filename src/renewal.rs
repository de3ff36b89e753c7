//! The opt-in renewal of a leader (docs/contract.md §3.1, `renewDeadlineSeconds`), pure: which
//! value of [`RENEWED_KEY`] a pod should carry, and when it next needs a new mark. The pod side
//! stops acting as leader when the mark stops changing for the deadline, so a leader the
//! controller cannot reach (frozen or cut-off node, dead kubelet, dead controller) stops on its
//! own, D after the last mark it saw.
//!
//! The mark is the controller's clock in milliseconds; pods only compare it for change. A mark
//! is rewritten once it is a third of the deadline old, so a pod sees two or three marks per
//! deadline and one lost kubelet projection does not stop a healthy leader.

use std::time::Duration;

use crate::contract::RENEWED_KEY;
use crate::pods::{LockRoles, PodKeys};

/// How a pod write treats [`RENEWED_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    /// Keep the mark the pod carries (demotion-only writes, which must not wait on anything).
    Keep,
    /// Write a new mark when the current one is due, as of this instant.
    At(jiff::Timestamp),
}

/// `<deadline seconds>`, `<mark ms>` of a [`RENEWED_KEY`] value such as `15s 1764839100123`, read
/// as the pod side reads it (one parser for the format).
pub fn parse(value: &str) -> Option<(i64, i64)> {
    let r = crate::podside::renewal::parse_renewal(value).ok()?;
    Some((i64::try_from(r.deadline.as_secs()).ok()?, r.mark.parse().ok()?))
}

/// The smallest renew deadline (seconds) of the locks `pod` leads, if any sets one.
fn deadline(pod: &str, locks: &[LockRoles]) -> Option<i64> {
    locks.iter().filter(|l| l.leader.as_ref().is_some_and(|(p, _)| p == pod)).filter_map(|l| l.renew_deadline).min()
}

/// `desired` with `pod`'s [`RENEWED_KEY`]: absent unless it leads a lock that sets a renew
/// deadline; the current value while its mark is younger than a third of the deadline (or the
/// write is `Keep`), a new mark otherwise.
pub fn with_renewal(mut desired: PodKeys, current: &PodKeys, pod: &str, locks: &[LockRoles], renew: Renew) -> PodKeys {
    let Some(d) = deadline(pod, locks) else { return desired };
    let have = current.annotations.get(RENEWED_KEY);
    let fresh = |now: jiff::Timestamp| {
        have.and_then(|v| parse(v)).is_some_and(|(hd, mark)| hd == d && (now.as_millisecond() - mark).abs() < period_ms(d))
    };
    let value = match renew {
        Renew::Keep => have.cloned(),
        Renew::At(now) if fresh(now) => have.cloned(),
        Renew::At(now) => Some(format!("{d}s {}", now.as_millisecond())),
    };
    if let Some(v) = value {
        desired.annotations.insert(RENEWED_KEY.to_string(), v);
    }
    desired
}

/// A third of the deadline, in milliseconds: how often a mark is renewed.
fn period_ms(deadline_secs: i64) -> i64 {
    deadline_secs.saturating_mul(1000) / 3
}

/// How long until `keys`' mark needs renewing (None: they carry none). Never less than 100 ms,
/// so a mark that could not be written does not spin the reconcile.
pub fn due_in(keys: &PodKeys, now: jiff::Timestamp) -> Option<Duration> {
    let (d, mark) = parse(keys.annotations.get(RENEWED_KEY)?)?;
    let left = mark.saturating_add(period_ms(d)).saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(left.max(100).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(lock: &str, leader: &str, renew: Option<i64>) -> LockRoles {
        LockRoles {
            lock: lock.into(),
            candidates: vec![leader.into()],
            leader: Some((leader.into(), 7)),
            labels: false,
            renew_deadline: renew,
        }
    }

    fn at(ms: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(ms).unwrap()
    }

    fn renewed(v: &str) -> PodKeys {
        PodKeys { annotations: [(RENEWED_KEY.to_string(), v.to_string())].into(), ..Default::default() }
    }

    #[test]
    fn a_leader_gets_a_new_mark_every_third_of_the_smallest_deadline_and_keeps_it_in_between() {
        let locks = [roles("a", "p", Some(15)), roles("b", "p", Some(30)), roles("c", "p", None)];
        let first = with_renewal(PodKeys::default(), &PodKeys::default(), "p", &locks, Renew::At(at(1_000_000)));
        assert_eq!(first.annotations[RENEWED_KEY], "15s 1000000");
        assert_eq!(due_in(&first, at(1_000_000)), Some(Duration::from_secs(5)));
        let kept = with_renewal(PodKeys::default(), &first, "p", &locks, Renew::At(at(1_004_999)));
        assert_eq!(kept, first, "not due yet: no write");
        let renewed = with_renewal(PodKeys::default(), &first, "p", &locks, Renew::At(at(1_005_000)));
        assert_eq!(renewed.annotations[RENEWED_KEY], "15s 1005000");
        assert_eq!(with_renewal(PodKeys::default(), &first, "p", &locks, Renew::Keep), first, "Keep never writes a mark");
    }

    #[test]
    fn no_key_without_a_deadline_and_a_changed_deadline_or_a_far_future_mark_is_rewritten() {
        let none = [roles("a", "p", None)];
        assert!(with_renewal(PodKeys::default(), &renewed("15s 1000000"), "p", &none, Renew::At(at(1_000_001))).annotations.is_empty());
        let standby = [LockRoles { leader: Some(("q".into(), 7)), ..roles("a", "p", Some(15)) }];
        assert!(with_renewal(PodKeys::default(), &renewed("15s 1000000"), "p", &standby, Renew::At(at(1_000_001))).annotations.is_empty());
        let locks = [roles("a", "p", Some(6))];
        let changed = with_renewal(PodKeys::default(), &renewed("15s 1000000"), "p", &locks, Renew::At(at(1_000_001)));
        assert_eq!(changed.annotations[RENEWED_KEY], "6s 1000001");
        let future = with_renewal(PodKeys::default(), &renewed("6s 9000000"), "p", &locks, Renew::At(at(1_000_001)));
        assert_eq!(future.annotations[RENEWED_KEY], "6s 1000001", "another replica's clock far ahead must not stall renewals");
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!(parse("15s 1764839100123"), Some((15, 1_764_839_100_123)));
        for bad in ["15s", "0s 1", "-3s 1", "15s +1", "15s 1 2", "s 1", ""] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
