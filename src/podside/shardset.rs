//! The set of locks a pod leads, read from the all-annotations projection (pure), and the two
//! forms `leaderlock shards` hands it to the program in: `LEADERLOCK_SHARDS` and the shards
//! file (docs/contract.md §3.6).

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::renewal::Renewal;
use super::rolefile::{FileForm, ParseError, Role, detect_form, parse_annotations, renewal_from_annotations, role_from_annotations};
use crate::contract::{GROUP, MAX_LOCK_NAME_LEN, is_lock_name};

/// One lock the pod leads, with its fencing token when the file carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub lock: String,
    pub token: Option<i64>,
}

/// What one read of the file says about the pod's shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Led {
    /// The locks led, in [`natural_order`].
    pub shards: Vec<Shard>,
    /// The controller's renewal, when the file carries it: its deadline holds for every shard.
    pub renewal: Option<Renewal>,
}

/// The locks whose name starts with `prefix` that the pod leads, in [`natural_order`].
///
/// An empty file is a pod with no annotation at all: it leads nothing. The single-value
/// projection cannot list locks and is refused.
pub fn shards_in(content: &str, prefix: &str) -> Result<Vec<Shard>, ParseError> {
    led_in(content, prefix).map(|led| led.shards)
}

/// [`shards_in`], with the renewal the file carries.
pub fn led_in(content: &str, prefix: &str) -> Result<Led, ParseError> {
    if content.trim().is_empty() {
        return Ok(Led::default());
    }
    if detect_form(content) == FileForm::SingleValue {
        return Err(ParseError::SingleValueForm);
    }
    let annotations = parse_annotations(content)?;
    let renewal = renewal_from_annotations(&annotations)?;
    let role_prefix = format!("{GROUP}/");
    let mut shards = Vec::new();
    // Role keys are `leaderlock.dev/<lock>`; token keys carry a '.', which no lock name has.
    for lock in annotations.keys().filter_map(|key| key.strip_prefix(&role_prefix)) {
        if !is_lock_name(lock) || !lock.starts_with(prefix) {
            continue;
        }
        if let Some(Role::Leader { token }) = role_from_annotations(&annotations, lock)? {
            shards.push(Shard { lock: lock.to_string(), token });
        }
    }
    shards.sort_by(|a, b| natural_order(&a.lock, &b.lock));
    Ok(Led { shards, renewal })
}

/// Names compared with their trailing number as a number: `shard-2` before `shard-10`.
pub fn natural_order(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        let stem = s.trim_end_matches(|c: char| c.is_ascii_digit());
        let digits = &s[stem.len()..];
        // Lock names are at most 50 characters: compare digit strings by length, then value.
        (stem.to_string(), digits.trim_start_matches('0').len(), digits.trim_start_matches('0').to_string(), digits.len())
    };
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

/// `LEADERLOCK_SHARDS`: the names, comma-separated, in order (empty when none).
pub fn env_value(shards: &[Shard]) -> String {
    shards.iter().map(|s| s.lock.as_str()).collect::<Vec<_>>().join(",")
}

/// The shards file: one `<lock> <token>` line per shard (`<lock>` alone without a token).
pub fn file_content(shards: &[Shard]) -> String {
    let mut out = String::new();
    for shard in shards {
        let _ = match shard.token {
            Some(token) => writeln!(out, "{} {token}", shard.lock),
            None => writeln!(out, "{}", shard.lock),
        };
    }
    out
}

/// A `--lock-prefix`: empty, or the start of a lock name.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_LOCK_NAME_LEN
        && !prefix.starts_with('-')
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podside::gounquote::go_quote;
    use proptest::prelude::*;

    const FILE: &str = r#"example.com/notes="leaderlock.dev/shard-7=\"leader\""
leaderlock.dev/ledger-writer="leader"
leaderlock.dev/ledger-writer.token="3"
leaderlock.dev/shard-0="leader"
leaderlock.dev/shard-0.token="41"
leaderlock.dev/shard-1="standby"
leaderlock.dev/shard-10="leader"
leaderlock.dev/shard-10.token="44"
leaderlock.dev/shard-2="leader"
leaderlock.dev/shard-2.token="43""#;

    fn names(shards: &[Shard]) -> Vec<&str> {
        shards.iter().map(|s| s.lock.as_str()).collect()
    }

    #[test]
    fn the_set_is_the_locks_led_with_their_tokens_in_natural_order() {
        let shards = shards_in(FILE, "shard-").unwrap();
        assert_eq!(names(&shards), ["shard-0", "shard-2", "shard-10"]);
        assert_eq!(shards[2], Shard { lock: "shard-10".into(), token: Some(44) });
        assert_eq!(env_value(&shards), "shard-0,shard-2,shard-10");
        assert_eq!(file_content(&shards), "shard-0 41\nshard-2 43\nshard-10 44\n");
        assert_eq!(names(&shards_in(FILE, "").unwrap()), ["ledger-writer", "shard-0", "shard-2", "shard-10"]);
    }

    #[test]
    fn no_annotation_means_no_shard_and_a_single_value_is_refused() {
        assert_eq!(shards_in("", "shard-"), Ok(vec![]));
        assert_eq!(shards_in("\n", ""), Ok(vec![]));
        assert_eq!(shards_in("leader", ""), Err(ParseError::SingleValueForm));
        assert_eq!(file_content(&[]), "");
        assert_eq!(env_value(&[]), "");
    }

    #[test]
    fn a_bad_role_or_token_of_a_matching_lock_is_an_error_and_others_are_ignored() {
        let bad_token = "leaderlock.dev/shard-0=\"leader\"\nleaderlock.dev/shard-0.token=\"x\"";
        assert_eq!(shards_in(bad_token, "shard-"), Err(ParseError::BadToken { value: "x".into() }));
        assert_eq!(shards_in(bad_token, "other-"), Ok(vec![]));
        let bad_role = "leaderlock.dev/shard-0=\"maybe\"";
        assert!(matches!(shards_in(bad_role, ""), Err(ParseError::UnknownRole { .. })));
    }

    #[test]
    fn the_renewal_comes_with_the_set_and_is_no_shard() {
        let content = format!("{FILE}\nleaderlock.dev/roles.renewed=\"2s 17\"\nleaderlock.dev/roles.resync=\"00ff\"");
        let led = led_in(&content, "").unwrap();
        assert_eq!(names(&led.shards), ["ledger-writer", "shard-0", "shard-2", "shard-10"]);
        assert_eq!(led.renewal.map(|r| (r.deadline, r.mark)), Some((std::time::Duration::from_secs(2), "17".to_string())));
        let bad = format!("{FILE}\nleaderlock.dev/roles.renewed=\"2s\"");
        assert_eq!(led_in(&bad, "other-"), Err(ParseError::BadRenewal { value: "2s".into() }));
    }

    #[test]
    fn a_leader_without_a_token_is_listed_without_one() {
        let shards = shards_in("leaderlock.dev/a=\"leader\"", "").unwrap();
        assert_eq!(file_content(&shards), "a\n");
    }

    #[test]
    fn prefixes_are_the_start_of_a_lock_name() {
        for good in ["", "shard-", "a", "s0"] {
            assert!(valid_prefix(good), "{good}");
        }
        for bad in ["-a", "Shard", "a.b", "a/", &"a".repeat(51)] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn natural_order_sorts_numbered_names_by_number(mut numbers in proptest::collection::vec(0u32..100_000, 0..20)) {
            let mut names: Vec<String> = numbers.iter().map(|n| format!("shard-{n}")).collect();
            names.sort_by(|a, b| natural_order(a, b));
            numbers.sort_unstable();
            prop_assert_eq!(names, numbers.iter().map(|n| format!("shard-{n}")).collect::<Vec<_>>());
        }

        #[test]
        fn every_led_lock_is_listed_whatever_else_the_pod_carries(
            roles in proptest::collection::btree_map(0u32..300, proptest::option::of(1i64..i64::MAX), 0..40),
            other in any::<String>(),
        ) {
            let mut lines = vec![format!("example.com/x={}", go_quote(&other))];
            for (n, token) in &roles {
                match token {
                    Some(t) => {
                        lines.push(format!("leaderlock.dev/shard-{n}=\"leader\""));
                        lines.push(format!("leaderlock.dev/shard-{n}.token=\"{t}\""));
                    }
                    None => lines.push(format!("leaderlock.dev/shard-{n}=\"standby\"")),
                }
            }
            lines.sort();
            let shards = shards_in(&lines.join("\n"), "shard-").unwrap();
            let expected: Vec<Shard> = roles
                .iter()
                .filter_map(|(n, t)| t.map(|t| Shard { lock: format!("shard-{n}"), token: Some(t) }))
                .collect();
            prop_assert_eq!(shards, expected);
        }
    }
}
