//! The pod-side helper (docs/contract.md §3): `role`, `wait` and `run` read the pod's role for
//! one lock from its downward-API file, so that a pod needs no Kubernetes or etcd client to
//! follow elections.
//!
//! ```text
//!  kubelet ──atomic ..data swap──▶ /etc/leaderlock/annotations ──inotify on the dir──▶ re-read
//!                                          │
//!                         parse (pure) ────┴──▶ Role ──▶ role: print + exit code
//!                                                   ──▶ wait: return once leader
//!                                                   ──▶ run:  start / SIGTERM+SIGKILL / restart CMD
//! ```
//!
//! One module per concern, each depending only on [`crate::contract`]: `rolefile` parses the two
//! forms kubelet projects (pure, with `gounquote` for Go's `%q`), `read` reads the file once,
//! `watch` wakes on kubelet's updates, `supervisor` runs CMD for `run`; `shardset` (pure) and
//! `shards` serve the set of locks a pod leads to one program (`leaderlock shards`);
//! `inherited` (pure) holds back, for `run` and `shards`, leadership found at the first read,
//! which may have been revoked before this process started; `renewal` (pure) reads the
//! controller's renewal key and keeps, for `run` and `shards`, the deadline after which a leader
//! the controller no longer reaches stops. `role` and `wait` are small enough to live here:
//! `role` reports the file as it is, and `wait` runs before readiness (in init containers), where
//! no role is inherited; both act on one fresh read, whose renewal mark is new by definition, so
//! no deadline concerns them.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod gounquote;
pub mod inherited;
pub mod read;
pub mod renewal;
pub mod rolefile;
pub mod shards;
pub mod shardset;
pub mod supervisor;
pub mod watch;

#[cfg(test)]
#[path = "vectors_tests.rs"]
mod vectors_tests;

pub use read::{read_reading, read_role};
pub use renewal::Renewal;
pub use rolefile::{ParseError, Reading, Role};
pub use shards::{SHARDS_ENV, SHARDS_FILE_ENV, ShardsOptions, shards_main};
pub use supervisor::{TOKEN_ENV, run_main};
pub use watch::{FileWatch, RoleWatch};

/// Where the examples mount the all-annotations projection.
pub const DEFAULT_ROLE_FILE: &str = "/etc/leaderlock/annotations";
/// Exit status of `role` for a leader, and of `wait` once leader.
pub const EXIT_LEADER: u8 = 0;
/// Exit status of `role` for a standby.
pub const EXIT_STANDBY: u8 = 1;
/// Exit status when the helper itself fails (file or annotation missing, garbage, timeout).
pub const EXIT_ERROR: u8 = 2;

// ───────────────────────────── errors ─────────────────────────────

/// Why a pod-side command cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PodsideError {
    #[error("cannot read the role file {path}: {source}; mount the downward-API volume there or point --file (LEADERLOCK_ROLE_FILE) at it")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is {kind}, not a regular file: point --file (LEADERLOCK_ROLE_FILE) at the downward-API file (a regular file, or kubelet's symlink to one)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is not a downward-API projection of metadata.annotations or of metadata.annotations['leaderlock.dev/<lock>']: {source}"
    )]
    Garbage { path: PathBuf, source: ParseError },
    #[error(
        "{path} has no annotation leaderlock.dev/{lock}: the pod is not a candidate (not Running and Ready, or no LeaderLock selects it), the lock name is wrong, or the file projects another lock's annotation"
    )]
    MissingAnnotation { path: PathBuf, lock: String },
    #[error("cannot watch {dir} for changes of the role file: {source}; check that the directory exists")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("timed out after {after:?} before becoming leader of lock {lock}")]
    Timeout { lock: String, after: Duration },
    #[error("cannot start the command {program:?}: {source}")]
    Spawn { program: OsString, source: io::Error },
    #[error("cannot wait for the command: {0}")]
    WaitChild(io::Error),
    #[error("cannot set up the runtime or signal handling: {0}")]
    Runtime(io::Error),
    #[error("cannot install this binary as {dest}: {source}; mount a writable volume (e.g. an emptyDir) at that directory")]
    CopySelf { dest: PathBuf, source: io::Error },
    #[error("no command given: put it after `--`, e.g. `leaderlock run --lock L -- my-server --flag`")]
    NoCommand,
    #[error("{path} is not a downward-API projection of metadata.annotations: {source}")]
    NotAnnotations { path: PathBuf, source: ParseError },
    #[error(
        "cannot write the shards file {path}: {source}; point --shards-file (LEADERLOCK_SHARDS_FILE) into a writable directory, e.g. an emptyDir"
    )]
    ShardsFile { path: PathBuf, source: io::Error },
    #[error(
        "{0:?} is not a signal the command can act on and keep running: name one like SIGHUP, HUP or SIGUSR1 (not KILL, STOP, TERM or INT)"
    )]
    BadSignal(String),
    #[error("{0:?} is not the start of a lock name: use a-z, 0-9 and '-' (not first), at most 50 characters, e.g. shard-")]
    BadPrefix(String),
}

fn describe(role: Option<&Role>) -> String {
    match role {
        Some(Role::Leader { token: Some(token) }) => format!("leader (fencing token {token})"),
        Some(role) => role.to_string(),
        None => "no annotation (not a candidate)".to_string(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, PodsideError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PodsideError::Runtime)
}

fn fail(command: &str, error: &PodsideError) -> u8 {
    eprintln!("leaderlock {command}: error: {error}");
    EXIT_ERROR
}

// ───────────────────────────── role ─────────────────────────────

/// `leaderlock role`: prints `leader <token>`, `leader` or `standby`; exits 0, 1, or 2 on error.
pub fn role_main(path: &Path, lock: &str) -> u8 {
    match read_role(path, lock) {
        Ok(Some(role)) => {
            println!("{role}");
            if role.is_leader() { EXIT_LEADER } else { EXIT_STANDBY }
        }
        Ok(None) => fail("role", &PodsideError::MissingAnnotation { path: path.to_path_buf(), lock: lock.to_string() }),
        Err(e) => fail("role", &e),
    }
}

// ───────────────────────────── wait ─────────────────────────────

/// `leaderlock wait`: blocks until leader, prints the role line, exits 0; 2 on error or timeout.
/// An absent annotation is waited through: a starting pod is not a candidate until Ready.
pub fn wait_main(path: &Path, lock: &str, timeout: Option<Duration>) -> u8 {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let mut watch = RoleWatch::start(path, lock)?;
            match timeout {
                None => wait_for_leader(&mut watch, lock).await,
                Some(after) => tokio::time::timeout(after, wait_for_leader(&mut watch, lock))
                    .await
                    .unwrap_or_else(|_| Err(PodsideError::Timeout { lock: lock.to_string(), after })),
            }
        })
    });
    match result {
        Ok(role) => {
            println!("{role}");
            EXIT_LEADER
        }
        Err(e) => fail("wait", &e),
    }
}

async fn wait_for_leader(watch: &mut RoleWatch, lock: &str) -> Result<Role, PodsideError> {
    let mut last = None;
    loop {
        let role = watch.read()?;
        if let Some(role @ Role::Leader { .. }) = role {
            return Ok(role);
        }
        if last != Some(role) {
            tracing::info!("lock {lock}: {}, waiting to become leader", describe(role.as_ref()));
            last = Some(role);
        }
        watch.changed().await;
    }
}

/// Copies the running binary to `dest` with mode 0755 (see `leaderlock copy-self`): the image
/// has no shell or `cp`, so the binary installs itself for an application container.
pub fn copy_self(dest: &Path) -> Result<(), PodsideError> {
    use std::os::unix::fs::PermissionsExt;
    let copy = || {
        let me = std::env::current_exe()?;
        std::fs::copy(me, dest)?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
    };
    copy().map_err(|source| PodsideError::CopySelf { dest: dest.to_path_buf(), source })
}
