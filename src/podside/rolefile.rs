//! The role file's content (pure): which of kubelet's two projections it is, and the pod's role
//! for one lock in it (docs/contract.md §3).
//!
//! 1. `fieldRef: metadata.annotations`: one `key="value"` line per annotation, sorted by key,
//!    values quoted by Go's `%q` (kubelet's `fieldpath.FormatMap`); carries the fencing token;
//! 2. `fieldRef: metadata.annotations['leaderlock.dev/<lock>']`: just `leader` or `standby`
//!    (empty when the annotation is absent); no token.
//!
//! Only the first form carries the controller's renewal (`leaderlock.dev/roles.renewed`, see
//! [`super::renewal`]); a file whose renewal is not what the controller writes is as unusable
//! as one with a bad token.

use std::collections::BTreeMap;
use std::fmt;

use super::gounquote::go_unquote;
use super::renewal::{Renewal, parse_renewal};
use crate::contract::{LEADER, RENEWED_KEY, STANDBY, role_key, token_key};

/// The pod's role for one lock, as the controller annotated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod holds the lock; the token is known only from the all-annotations form.
    Leader {
        token: Option<i64>,
    },
    Standby,
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// The line `role` and `wait` print: `leader 18233`, `leader` (token unknown) or `standby`.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Leader { token: Some(token) } => write!(f, "{LEADER} {token}"),
            Role::Leader { token: None } => f.write_str(LEADER),
            Role::Standby => f.write_str(STANDBY),
        }
    }
}

/// The two shapes kubelet projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileForm {
    /// `fieldRef: metadata.annotations`: `key="value"` lines.
    AllAnnotations,
    /// `fieldRef: metadata.annotations['leaderlock.dev/<lock>']`: the bare value.
    SingleValue,
}

/// Why a file's content is not something kubelet would have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line} is not key=\"value\": {text:?}")]
    NotKeyValue { line: usize, text: String },
    #[error("line {line} has a badly quoted value ({reason}): {text:?}")]
    BadQuote { line: usize, reason: String, text: String },
    #[error("role {value:?} is neither \"leader\" nor \"standby\"")]
    UnknownRole { value: String },
    #[error("fencing token {value:?} is not a positive integer")]
    BadToken { value: String },
    #[error(
        "renewal {value:?} ({RENEWED_KEY}) is not \"<deadline> <mark>\" (a duration above 0 and at most 24h such as 15s, one space, decimal digits); only the controller writes it: run a helper of the controller's version"
    )]
    BadRenewal { value: String },
    #[error("the content is not UTF-8")]
    NotUtf8,
    #[error(
        "it holds a single value, not key=\"value\" lines: project every annotation (fieldRef: metadata.annotations) to list the locks"
    )]
    SingleValueForm,
}

/// A line with `="` means the all-annotations form: no role value contains that sequence.
pub fn detect_form(content: &str) -> FileForm {
    if content.lines().any(|line| line.contains("=\"")) { FileForm::AllAnnotations } else { FileForm::SingleValue }
}

/// Parses the all-annotations form: one `key="value"` line per annotation (blank lines skipped).
pub fn parse_annotations(content: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut annotations = BTreeMap::new();
    for (index, text) in content.split('\n').enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line = index + 1;
        // Annotation keys cannot contain '=', so the first one ends the key.
        let (key, quoted) = text
            .split_once('=')
            .filter(|(key, _)| !key.is_empty() && !key.contains(char::is_whitespace))
            .ok_or_else(|| ParseError::NotKeyValue { line, text: text.to_string() })?;
        let value = go_unquote(quoted).map_err(|reason| ParseError::BadQuote { line, reason, text: text.to_string() })?;
        annotations.insert(key.to_string(), value);
    }
    Ok(annotations)
}

/// What one read of the file says about one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The role; `None` when the annotation is absent, meaning the pod is not (yet, or any
    /// more) a candidate.
    pub role: Option<Role>,
    /// The controller's renewal, when the file carries it (the all-annotations form only).
    pub renewal: Option<Renewal>,
}

/// The role for `lock` in the file content; `None` when the annotation is absent, meaning the pod
/// is not (yet, or any more) a candidate.
pub fn role_in(content: &str, lock: &str) -> Result<Option<Role>, ParseError> {
    reading_in(content, lock).map(|reading| reading.role)
}

/// The role for `lock` in the file content, with the renewal the file carries.
pub fn reading_in(content: &str, lock: &str) -> Result<Reading, ParseError> {
    match detect_form(content) {
        FileForm::AllAnnotations => {
            let annotations = parse_annotations(content)?;
            let renewal = renewal_from_annotations(&annotations)?;
            Ok(Reading { role: role_from_annotations(&annotations, lock)?, renewal })
        }
        // kubelet projects an absent annotation as an empty file.
        FileForm::SingleValue => match content.trim() {
            "" => Ok(Reading { role: None, renewal: None }),
            value => Ok(Reading { role: Some(role_from_value(value, None)?), renewal: None }),
        },
    }
}

/// `leaderlock.dev/roles.renewed`, when present; checked whichever lock is asked for, since it
/// concerns every lock the pod leads.
pub fn renewal_from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Renewal>, ParseError> {
    annotations.get(RENEWED_KEY).map(|value| parse_renewal(value)).transpose()
}

/// The role from parsed annotations: `leaderlock.dev/<lock>`, plus `.token` on the holder.
pub fn role_from_annotations(annotations: &BTreeMap<String, String>, lock: &str) -> Result<Option<Role>, ParseError> {
    let Some(value) = annotations.get(&role_key(lock)) else {
        return Ok(None);
    };
    let token = annotations.get(&token_key(lock)).map(|t| parse_token(t)).transpose()?;
    role_from_value(value, token).map(Some)
}

fn role_from_value(value: &str, token: Option<i64>) -> Result<Role, ParseError> {
    match value {
        LEADER => Ok(Role::Leader { token }),
        STANDBY => Ok(Role::Standby),
        other => Err(ParseError::UnknownRole { value: other.to_string() }),
    }
}

/// Fencing tokens are etcd create revisions: positive int64s.
fn parse_token(value: &str) -> Result<i64, ParseError> {
    value.parse::<i64>().ok().filter(|t| *t > 0).ok_or_else(|| ParseError::BadToken { value: value.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podside::gounquote::go_quote;
    use proptest::prelude::*;

    /// Produced by Go 1.26 running kubelet's `fieldpath.FormatMap` (`%v=%q` lines, sorted, no
    /// trailing newline) on a pod's annotations.
    const KUBELET_ALL_ANNOTATIONS: &str = r#"example.com/empty=""
example.com/odd="tab\there \\ back \x01 bell\a é \u2028 😀 \xff end"
kubectl.kubernetes.io/last-applied-configuration="{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"annotations\":{\"a\":\"x=\\\"y\\\"\"}}}\n"
leaderlock.dev/ledger-writer="leader"
leaderlock.dev/ledger-writer.token="18233"
leaderlock.dev/nightly-report="standby""#;

    #[test]
    fn kubelet_all_annotations_output_parses_back_to_the_original_values() {
        let annotations = parse_annotations(KUBELET_ALL_ANNOTATIONS).unwrap();
        assert_eq!(annotations.len(), 6);
        assert_eq!(annotations["example.com/empty"], "");
        assert_eq!(annotations["example.com/odd"], "tab\there \\ back \x01 bell\x07 é \u{2028} 😀 \u{FFFD} end");
        assert_eq!(
            annotations["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"annotations\":{\"a\":\"x=\\\"y\\\"\"}}}\n"
        );
        assert_eq!(annotations["leaderlock.dev/ledger-writer.token"], "18233");
    }

    #[test]
    fn role_from_all_annotations_includes_the_token_of_the_holder_only() {
        assert_eq!(role_in(KUBELET_ALL_ANNOTATIONS, "ledger-writer"), Ok(Some(Role::Leader { token: Some(18233) })));
        assert_eq!(role_in(KUBELET_ALL_ANNOTATIONS, "nightly-report"), Ok(Some(Role::Standby)));
        assert_eq!(role_in(KUBELET_ALL_ANNOTATIONS, "other"), Ok(None));
        assert_eq!(role_in("leaderlock.dev/l=\"leader\"", "l"), Ok(Some(Role::Leader { token: None })));
    }

    #[test]
    fn a_lock_name_that_prefixes_another_does_not_pick_up_its_role() {
        let content = "leaderlock.dev/ab=\"leader\"\nleaderlock.dev/ab.token=\"7\"";
        assert_eq!(role_in(content, "a"), Ok(None));
        assert_eq!(role_in(content, "ab"), Ok(Some(Role::Leader { token: Some(7) })));
    }

    #[test]
    fn form_detection_needs_an_equals_quote_on_a_line() {
        assert_eq!(detect_form(KUBELET_ALL_ANNOTATIONS), FileForm::AllAnnotations);
        assert_eq!(detect_form("leader"), FileForm::SingleValue);
        assert_eq!(detect_form(""), FileForm::SingleValue);
        assert_eq!(detect_form("a=b"), FileForm::SingleValue);
        assert_eq!(detect_form("garbage\nk=\"v\""), FileForm::AllAnnotations);
    }

    #[test]
    fn single_value_form_is_the_bare_role_and_empty_means_absent() {
        assert_eq!(role_in("leader", "l"), Ok(Some(Role::Leader { token: None })));
        assert_eq!(role_in("standby", "l"), Ok(Some(Role::Standby)));
        assert_eq!(role_in("standby\n", "l"), Ok(Some(Role::Standby)));
        assert_eq!(role_in("", "l"), Ok(None));
        assert_eq!(role_in("Leader", "l"), Err(ParseError::UnknownRole { value: "Leader".into() }));
        assert_eq!(role_in("a=b", "l"), Err(ParseError::UnknownRole { value: "a=b".into() }));
        assert_eq!(role_in("leader\nstandby", "l"), Err(ParseError::UnknownRole { value: "leader\nstandby".into() }));
    }

    #[test]
    fn garbage_in_the_all_annotations_form_is_reported_with_its_line() {
        let bad_line = "a=\"x\"\nnot a pair";
        assert!(matches!(parse_annotations(bad_line), Err(ParseError::NotKeyValue { line: 2, .. })));
        let unterminated = "a=\"x\"\nb=\"y";
        assert!(matches!(parse_annotations(unterminated), Err(ParseError::BadQuote { line: 2, .. })));
        let bad_role = "leaderlock.dev/l=\"maybe\"";
        assert_eq!(role_in(bad_role, "l"), Err(ParseError::UnknownRole { value: "maybe".into() }));
        let bad_token = "leaderlock.dev/l=\"leader\"\nleaderlock.dev/l.token=\"-3\"";
        assert_eq!(role_in(bad_token, "l"), Err(ParseError::BadToken { value: "-3".into() }));
    }

    #[test]
    fn the_renewal_comes_with_the_role_from_the_all_annotations_form_only() {
        let content = "leaderlock.dev/l=\"leader\"\nleaderlock.dev/l.token=\"7\"\nleaderlock.dev/roles.renewed=\"15s 1764839100123\"";
        let reading = reading_in(content, "l").unwrap();
        assert_eq!(reading.role, Some(Role::Leader { token: Some(7) }));
        assert_eq!(reading.renewal, Some(Renewal { deadline: std::time::Duration::from_secs(15), mark: "1764839100123".into() }));
        assert_eq!(reading_in(KUBELET_ALL_ANNOTATIONS, "ledger-writer").unwrap().renewal, None);
        assert_eq!(reading_in("leader", "l").unwrap(), Reading { role: Some(Role::Leader { token: None }), renewal: None });
    }

    #[test]
    fn a_bad_renewal_makes_the_file_unusable_for_every_lock() {
        let content = "leaderlock.dev/l=\"leader\"\nleaderlock.dev/roles.renewed=\"soon\"";
        let bad = Err(ParseError::BadRenewal { value: "soon".into() });
        assert_eq!(role_in(content, "l"), bad);
        assert_eq!(role_in(content, "other"), bad, "the key concerns every lock the pod leads");
    }

    proptest! {
        #[test]
        fn any_value_of_another_annotation_leaves_the_role_readable(value in any::<String>()) {
            let content = format!("example.com/x={}\nleaderlock.dev/l=\"standby\"", go_quote(&value));
            prop_assert_eq!(role_in(&content, "l"), Ok(Some(Role::Standby)));
        }
    }

    #[test]
    fn the_printed_line_carries_the_token_when_known() {
        assert_eq!(Role::Leader { token: Some(18233) }.to_string(), "leader 18233");
        assert_eq!(Role::Leader { token: None }.to_string(), "leader");
        assert_eq!(Role::Standby.to_string(), "standby");
    }
}
