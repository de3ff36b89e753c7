//! Every case of `testdata/rolefile/vectors.json`, run through what `role`, `wait` and `run` do
//! with the role file: check the lock name, then [`read_reading`] (the role and the controller's
//! renewal) on a real file laid out as the vector says. The Go package (`clients/go/role`) runs the same table, so the two readers of
//! the file format cannot drift apart; this helper is the reference when they disagree.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::rolefile::{ParseError, Reading, Role};
use super::{PodsideError, read_reading};
use crate::contract::parse_lock_name;

const VECTORS: &str = include_str!("../../testdata/rolefile/vectors.json");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(rename = "about")]
    _about: Vec<String>,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    lock: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    content_hex: Option<String>,
    #[serde(default)]
    content_repeat: Option<Vec<Repeat>>,
    /// Checked by the Go tests, which have Go's own `%q`.
    #[serde(default, rename = "as_kubelet_writes")]
    _as_kubelet_writes: bool,
    expect: Outcome,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Repeat {
    text: String,
    times: usize,
}

/// What reading the file gave: a role (with the token when known) or an error class.
#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Outcome {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    token: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    line: Option<usize>,
    /// The renewal's deadline in milliseconds, when the file carries `leaderlock.dev/roles.renewed`.
    #[serde(default)]
    renew_deadline_ms: Option<u128>,
    #[serde(default)]
    renew_mark: Option<String>,
}

impl Outcome {
    fn role(Reading { role, renewal }: Reading) -> Self {
        let (role, token) = match role {
            None => ("absent", None),
            Some(Role::Standby) => ("standby", None),
            Some(Role::Leader { token }) => ("leader", token),
        };
        Outcome {
            role: Some(role.to_string()),
            token,
            renew_deadline_ms: renewal.as_ref().map(|r| r.deadline.as_millis()),
            renew_mark: renewal.map(|r| r.mark),
            ..Outcome::default()
        }
    }

    fn error(class: &str, line: Option<usize>) -> Self {
        Outcome { error: Some(class.to_string()), line, ..Outcome::default() }
    }
}

impl Vector {
    fn content(&self) -> Vec<u8> {
        match (&self.content, &self.content_hex, &self.content_repeat) {
            (Some(text), None, None) => text.as_bytes().to_vec(),
            (None, Some(hex), None) => decode_hex(hex),
            (None, None, Some(parts)) => parts.iter().flat_map(|part| part.text.repeat(part.times).into_bytes()).collect(),
            (None, None, None) => Vec::new(),
            _ => panic!("vector {:?}: give at most one of content, content_hex, content_repeat", self.name),
        }
    }

    /// Lays the file out in `dir` as the vector says and returns the path to read.
    fn lay_out(&self, dir: &Path) -> PathBuf {
        let content = self.content();
        let regular = |path: PathBuf| {
            fs::write(&path, &content).unwrap();
            path
        };
        match self.file.as_deref().unwrap_or("regular") {
            "regular" => regular(dir.join("annotations")),
            "kubelet" => {
                let data = dir.join("..2026_01_02_03_04_05.000000001");
                fs::create_dir(&data).unwrap();
                regular(data.join("annotations"));
                symlink("..2026_01_02_03_04_05.000000001", dir.join("..data_tmp")).unwrap();
                fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
                symlink("..data/annotations", dir.join("annotations")).unwrap();
                dir.join("annotations")
            }
            "symlink" => {
                regular(dir.join("target"));
                symlink("target", dir.join("annotations")).unwrap();
                dir.join("annotations")
            }
            "missing" => dir.join("annotations"),
            "dangling-symlink" => {
                symlink("nowhere", dir.join("annotations")).unwrap();
                dir.join("annotations")
            }
            "directory" => {
                fs::create_dir(dir.join("annotations")).unwrap();
                dir.join("annotations")
            }
            "fifo" => {
                let path = dir.join("annotations");
                // The crate forbids unsafe code, so coreutils' mkfifo rather than libc's.
                let status = std::process::Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
                assert!(status.success(), "mkfifo {}", path.display());
                path
            }
            "dev-null" => {
                symlink("/dev/null", dir.join("annotations")).unwrap();
                dir.join("annotations")
            }
            other => panic!("vector {:?}: unknown file layout {other:?}", self.name),
        }
    }
}

fn decode_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex {hex:?}");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// What `role`, `wait` and `run` make of the file: the lock name is checked first (clap's
/// parser), then the file is read.
fn outcome(path: &Path, lock: &str) -> Outcome {
    if parse_lock_name(lock).is_err() {
        return Outcome::error("invalid_lock", None);
    }
    match read_reading(path, lock) {
        Ok(reading) => Outcome::role(reading),
        Err(PodsideError::Read { .. }) => Outcome::error("unreadable", None),
        Err(PodsideError::NotRegular { .. }) => Outcome::error("not_regular", None),
        Err(PodsideError::Garbage { source, .. }) => match source {
            ParseError::NotKeyValue { line, .. } => Outcome::error("not_key_value", Some(line)),
            ParseError::BadQuote { line, .. } => Outcome::error("bad_quote", Some(line)),
            ParseError::UnknownRole { .. } => Outcome::error("unknown_role", None),
            ParseError::BadToken { .. } => Outcome::error("bad_token", None),
            ParseError::BadRenewal { .. } => Outcome::error("bad_renewal", None),
            ParseError::NotUtf8 => Outcome::error("not_utf8", None),
            ParseError::SingleValueForm => Outcome::error("single_value_form", None),
        },
        Err(other) => Outcome::error(&format!("unexpected: {other}"), None),
    }
}

#[test]
fn every_role_file_vector_reads_as_the_table_says() {
    let table: Table = serde_json::from_str(VECTORS).expect("testdata/rolefile/vectors.json parses");
    assert!(table.vectors.len() >= 100, "the table lost vectors: {}", table.vectors.len());
    let mut names = std::collections::BTreeSet::new();
    let mut mismatches = Vec::new();
    for vector in &table.vectors {
        assert!(names.insert(vector.name.as_str()), "duplicate vector name {:?}", vector.name);
        let dir = tempfile::tempdir().unwrap();
        let path = vector.lay_out(dir.path());
        let got = outcome(&path, &vector.lock);
        if got != vector.expect {
            mismatches.push(format!("{:?}: expected {:?}, got {:?}", vector.name, vector.expect, got));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} vectors disagree:\n{}", mismatches.len(), table.vectors.len(), mismatches.join("\n"));
}
