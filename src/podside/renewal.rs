//! The controller's renewal of a leading pod (docs/contract.md §3.1 "Renewal", §3.5), pure: the
//! value of `leaderlock.dev/roles.renewed`, and the deadline it sets on a `leader` role.
//!
//! A leader whose node is frozen or cut off, or whose kubelet or controller died, cannot be told
//! it was demoted. With `renewDeadlineSeconds` the controller rewrites the key with a new mark
//! every third of the deadline `D`; a pod that reads no new mark for `D` stops acting as leader.
//! Time is the pod's own monotonic clock, from when it read a mark: no clocks are compared, and
//! the mark only counts as "changed".
//!
//! ```text
//!  read: "15s 17648…123" ──new mark──▶ due = now + 15s ──timer──▶ lapsed: leader acts as standby
//!  read: same mark again ─────────────▶ due unchanged         ──new mark──▶ due = now + 15s
//!  read: no key ──────────────────────▶ no deadline
//! ```

use std::time::Duration;

use tokio::time::Instant;

use super::rolefile::ParseError;
use crate::contract::parse_duration;

/// Deadlines above this are refused as hostile: far above any sensible setting, and low enough
/// that no timer overflows.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A value of `leaderlock.dev/roles.renewed`: `<D> <mark>`, e.g. `15s 1764839100123`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// How long a `leader` role stays valid after a new mark was read.
    pub deadline: Duration,
    /// The controller's clock in milliseconds; only ever compared for change.
    pub mark: String,
}

/// Parses `<D> <mark>`: `D` a duration of the flags' syntax (a decimal number with at most three
/// digits after the point, then `ms`, `s`, `m`, `h` or nothing for seconds), above 0 and at most
/// [`MAX_DEADLINE`]; one space; `mark` decimal digits. Anything else is not what the controller
/// writes. The shape is checked before [`parse_duration`] so that the Go package, whose float
/// parser reads other spellings (hex, exponents), accepts exactly the same values.
pub fn parse_renewal(value: &str) -> Result<Renewal, ParseError> {
    let bad = || ParseError::BadRenewal { value: value.to_string() };
    let (deadline, mark) = value.split_once(' ').ok_or_else(bad)?;
    if mark.is_empty() || !mark.bytes().all(|b| b.is_ascii_digit()) || !decimal_with_unit(deadline) {
        return Err(bad());
    }
    let deadline = parse_duration(deadline).map_err(|_| bad())?;
    if deadline.is_zero() || deadline > MAX_DEADLINE {
        return Err(bad());
    }
    Ok(Renewal { deadline, mark: mark.to_string() })
}

/// `15`, `15s`, `1.5s`, `500ms`, `0.25m`, `1h`: digits, optionally a point and one to three
/// digits, optionally a unit.
fn decimal_with_unit(text: &str) -> bool {
    let number = ["ms", "s", "m", "h"].iter().find_map(|unit| text.strip_suffix(unit)).unwrap_or(text);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction) && fraction.len() <= 3
}

/// The renewal deadline across reads of the file: when the current mark was first read, and how
/// long a `leader` role is valid from then.
#[derive(Debug, Default)]
pub struct Deadline {
    current: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    mark: String,
    deadline: Duration,
    read_at: Instant,
}

impl Deadline {
    /// A read of the file at `now` found `renewal`. A new mark (or the key's first appearance,
    /// such as at the first read of a restarted helper) starts the deadline from `now`; the same
    /// mark read again (another annotation changed, a safety re-read) does not; no key, no
    /// deadline. Returns whether the mark was new.
    pub fn read(&mut self, renewal: Option<Renewal>, now: Instant) -> bool {
        let Some(Renewal { deadline, mark }) = renewal else {
            self.current = None;
            return false;
        };
        match self.current.as_mut() {
            Some(seen) if seen.mark == mark => {
                seen.deadline = deadline;
                false
            }
            _ => {
                self.current = Some(Seen { mark, deadline, read_at: now });
                true
            }
        }
    }

    /// The deadline `D` the file states, when it carries the key.
    pub fn deadline(&self) -> Option<Duration> {
        self.current.as_ref().map(|seen| seen.deadline)
    }

    /// When a `leader` role stops being valid unless a new mark is read first; `None` without
    /// the key.
    pub fn due(&self) -> Option<Instant> {
        self.current.as_ref().and_then(|seen| seen.read_at.checked_add(seen.deadline))
    }

    /// Whether `D` has passed since the current mark was read: a `leader` role is then acted
    /// on as `standby`.
    pub fn lapsed(&self, now: Instant) -> bool {
        self.due().is_some_and(|due| now >= due)
    }
}

/// The log line when a leader's renewal lapses, after `"lock L: "` or `"shards: "`.
pub fn lapsed_message(deadline: Option<Duration>) -> String {
    let deadline = deadline.map_or_else(|| "the renewal deadline".to_string(), |d| format!("{d:?}"));
    format!("no renewal for {deadline}: the controller cannot reach this pod; acting as standby")
}

/// Why a lapse ended while the role stayed `leader`, for the log line.
pub fn renewed_message(deadline: &Deadline) -> &'static str {
    if deadline.due().is_some() { "renewed again: the controller reaches this pod" } else { "the renewal key is gone: no deadline" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renewal(deadline_ms: u64, mark: &str) -> Option<Renewal> {
        Some(Renewal { deadline: Duration::from_millis(deadline_ms), mark: mark.into() })
    }

    #[test]
    fn the_value_is_a_duration_a_space_and_a_mark() {
        for (value, deadline) in [
            ("15s 1764839100123", Duration::from_secs(15)),
            ("15 1", Duration::from_secs(15)),
            ("1.5s 0", Duration::from_millis(1500)),
            ("500ms 42", Duration::from_millis(500)),
            ("0.25m 42", Duration::from_secs(15)),
            ("1.001s 42", Duration::from_millis(1001)),
            ("24h 42", MAX_DEADLINE),
        ] {
            assert_eq!(parse_renewal(value).map(|r| r.deadline), Ok(deadline), "{value}");
        }
        assert_eq!(parse_renewal("15s 0017").unwrap().mark, "0017", "the mark is kept as written");
    }

    #[test]
    fn anything_else_is_a_bad_renewal() {
        for value in [
            "",
            "15s",
            "15s ",
            " 15s 1",
            "15s 1 ",
            "15s  1",
            "15s\t1",
            "15s -1",
            "15s 1a",
            "15s 1 2",
            "s 1",
            ".5s 1",
            "5.s 1",
            "1.0001s 1",
            "1e3s 1",
            "0x10s 1",
            "+5s 1",
            "inf 1",
            "0s 1",
            "0.000ms 1",
            "24.001h 1",
            "86401s 1",
            "15S 1",
            "15sec 1",
            "-15s 1",
        ] {
            assert_eq!(parse_renewal(value), Err(ParseError::BadRenewal { value: value.into() }), "{value:?}");
        }
    }

    #[test]
    fn a_new_mark_starts_the_deadline_from_when_it_was_read() {
        let t0 = Instant::now();
        let mut deadline = Deadline::default();
        assert_eq!(deadline.due(), None);
        assert!(!deadline.lapsed(t0 + Duration::from_secs(3600)), "no key, no deadline");

        assert!(deadline.read(renewal(1000, "1"), t0));
        assert_eq!(deadline.due(), Some(t0 + Duration::from_secs(1)));
        assert!(!deadline.lapsed(t0 + Duration::from_millis(999)));
        assert!(deadline.lapsed(t0 + Duration::from_millis(1000)));

        // The same mark read again (another annotation changed) does not move the deadline.
        assert!(!deadline.read(renewal(1000, "1"), t0 + Duration::from_millis(900)));
        assert!(deadline.lapsed(t0 + Duration::from_millis(1000)));

        // A new mark does, from when it is read, even after the deadline passed.
        assert!(deadline.read(renewal(1000, "2"), t0 + Duration::from_millis(1500)));
        assert!(!deadline.lapsed(t0 + Duration::from_millis(2499)));
        assert!(deadline.lapsed(t0 + Duration::from_millis(2500)));
        assert_eq!(deadline.deadline(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn the_key_removed_ends_the_deadline_and_its_return_starts_a_new_one() {
        let t0 = Instant::now();
        let mut deadline = Deadline::default();
        deadline.read(renewal(1000, "1"), t0);
        assert!(!deadline.read(None, t0 + Duration::from_secs(5)));
        assert!(!deadline.lapsed(t0 + Duration::from_secs(5)), "a file without the key has no deadline");
        assert!(deadline.read(renewal(1000, "1"), t0 + Duration::from_secs(6)), "back with the same mark: counted from now");
        assert!(!deadline.lapsed(t0 + Duration::from_millis(6999)));
    }

    #[test]
    fn a_new_deadline_with_the_same_mark_applies_from_the_mark_s_first_read() {
        let t0 = Instant::now();
        let mut deadline = Deadline::default();
        deadline.read(renewal(1000, "1"), t0);
        deadline.read(renewal(3000, "1"), t0 + Duration::from_millis(500));
        assert_eq!(deadline.due(), Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn the_lapse_is_logged_with_the_deadline() {
        assert_eq!(
            lapsed_message(Some(Duration::from_secs(15))),
            "no renewal for 15s: the controller cannot reach this pod; acting as standby"
        );
        assert_eq!(
            lapsed_message(Some(Duration::from_millis(1500))),
            "no renewal for 1.5s: the controller cannot reach this pod; acting as standby"
        );
    }
}
