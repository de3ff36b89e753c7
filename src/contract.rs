//! The names and value syntaxes users depend on (docs/contract.md §2, §3, §5), in one place so
//! that the controller, the CRD and the pod-side helper cannot drift apart.
//!
//! Pure and dependency-free: the pod-side helper links nothing else of the crate.

use std::time::Duration;

/// API group of every name LeaderLock owns: the CRD, the pod annotations and labels.
pub const GROUP: &str = "leaderlock.dev";

/// The role of the holder of a lock.
pub const LEADER: &str = "leader";
/// The role of every other candidate.
pub const STANDBY: &str = "standby";

/// `leaderlock.dev/<lock>`: the role annotation (and label, with `podLabels`).
pub fn role_key(lock: &str) -> String {
    format!("{GROUP}/{lock}")
}

/// `leaderlock.dev/<lock>.token`: the fencing token, on the holder only.
pub fn token_key(lock: &str) -> String {
    format!("{GROUP}/{lock}.token")
}

/// `leaderlock.dev/roles.resync`: a digest of the locks a pod leads, written about two seconds
/// after they change (docs/contract.md §3.1): a second pod update that makes the kubelet project
/// the role keys again, in case it lost the first. Its dot keeps it apart from every lock's keys
/// (lock names have none).
pub const RESYNC_KEY: &str = "leaderlock.dev/roles.resync";

/// `leaderlock.dev/roles.renewed`: `<deadline> <mark>` (e.g. `15s 1764839100123`) on a pod
/// leading a lock of a LeaderLock with `renewDeadlineSeconds`, rewritten with a new mark every
/// third of the deadline (docs/contract.md §3.1). A pod whose file shows no new mark for the
/// deadline stops acting as leader: a leader the controller cannot reach stops on its own.
pub const RENEWED_KEY: &str = "leaderlock.dev/roles.renewed";

/// Whether an annotation or label key is one the controller owns.
pub fn is_ours(key: &str) -> bool {
    key.strip_prefix(GROUP).is_some_and(|rest| rest.starts_with('/'))
}

/// Lock names are at most this long, so that `leaderlock.dev/<lock>.token` stays a valid key.
pub const MAX_LOCK_NAME_LEN: usize = 50;

/// The CRD schema's pattern for a lock name; [`is_lock_name`] implements the same rule.
pub const LOCK_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// How every duration flag is written; `--help` and error messages quote it.
pub const DURATION_SYNTAX: &str = "500ms, 10s, 1.5m or 2h (units ms, s, m, h; a bare number is seconds)";

/// A flag value that breaks one of the rules above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error(
        "{0:?} is not a lock name: use a DNS-1123 label (a-z, 0-9 and '-', not at either end, at most {MAX_LOCK_NAME_LEN} characters), as in spec.locks[].name"
    )]
    LockName(String),
    #[error("{0:?} is not a duration: write it like {DURATION_SYNTAX}")]
    Duration(String),
}

/// A DNS-1123 label of at most [`MAX_LOCK_NAME_LEN`] characters, as the CRD schema demands.
pub fn is_lock_name(name: &str) -> bool {
    let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = !name.starts_with('-') && !name.ends_with('-');
    !name.is_empty() && name.len() <= MAX_LOCK_NAME_LEN && valid_chars && valid_ends
}

/// A lock name given on the command line; catching a typo here beats waiting forever for an
/// annotation that cannot exist.
pub fn parse_lock_name(name: &str) -> Result<String, InvalidValue> {
    if is_lock_name(name) { Ok(name.to_string()) } else { Err(InvalidValue::LockName(name.to_string())) }
}

/// The one duration syntax of every flag: see [`DURATION_SYNTAX`].
///
/// The number is whatever Rust's float parser reads (so `.5s` and `1e3` still work, as they did
/// for `--etcd-timeout`), finite and not negative; surrounding whitespace is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let invalid = || InvalidValue::Duration(text.to_string());
    let trimmed = text.trim();
    let (number, seconds_per_unit) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .into_iter()
        .find_map(|(unit, scale)| trimmed.strip_suffix(unit).map(|number| (number, scale)))
        .unwrap_or((trimmed, 1.0));
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * seconds_per_unit).ok())
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_in_the_group() {
        assert_eq!(role_key("ledger"), "leaderlock.dev/ledger");
        assert_eq!(token_key("ledger"), "leaderlock.dev/ledger.token");
        assert!(is_ours("leaderlock.dev/ledger.token"));
        assert!(!is_ours("leaderlock.dev.evil/ledger"));
        assert!(!is_ours("app"));
    }

    #[test]
    fn lock_names_are_dns_labels_of_at_most_50_characters() {
        for good in ["ledger-writer", "a", "0", "a-b-9", &"a".repeat(50)] {
            assert_eq!(parse_lock_name(good), Ok(good.to_string()));
        }
        for bad in ["", "-a", "a-", "Ledger", "a.b", "a/b", "a_b", "é", &"a".repeat(51)] {
            assert_eq!(parse_lock_name(bad), Err(InvalidValue::LockName(bad.to_string())));
        }
    }

    #[test]
    fn the_crd_schema_states_the_same_lock_name_rule() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::resource::LeaderLock::crd()).unwrap();
        let name = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["locks"]["items"]["properties"]
            ["name"];
        assert_eq!(name["pattern"], LOCK_NAME_PATTERN);
        assert_eq!(name["maxLength"], MAX_LOCK_NAME_LEN);
        assert_eq!(crd["spec"]["group"], GROUP);
    }

    #[test]
    fn durations_take_every_unit_and_bare_seconds() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.5m", Duration::from_secs(90)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("3", Duration::from_secs(3)),
            ("0.5", Duration::from_millis(500)),
            (".5s", Duration::from_millis(500)),
            ("0s", Duration::ZERO),
            (" 5s ", Duration::from_secs(5)),
            ("1e3", Duration::from_secs(1000)),
            ("+5s", Duration::from_secs(5)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn durations_refuse_what_is_not_one_and_say_how_to_write_it() {
        for bad in ["", "s", "ms", "-1s", "-1", "10x", "1.2.3s", "ten", "1 h", "inf", "NaN", "1e400", "1m30s", "5sec"] {
            assert_eq!(parse_duration(bad), Err(InvalidValue::Duration(bad.to_string())), "{bad}");
        }
        let message = parse_duration("5sec").unwrap_err().to_string();
        assert!(message.contains("500ms") && message.contains("bare number is seconds"), "{message}");
    }
}
