//! The pod-side helper (SPEC §3): `role`, `wait` and `run` read the pod's role for one lock from
//! its downward-API file, so that a pod needs no Kubernetes or etcd client to follow elections.
//!
//! ```text
//!  kubelet ──atomic ..data swap──▶ /etc/leaderlock/annotations ──inotify on the dir──▶ re-read
//!                                          │
//!                         parse (pure) ────┴──▶ Role ──▶ role: print + exit code
//!                                                   ──▶ wait: return once leader
//!                                                   ──▶ run:  start / SIGTERM+SIGKILL / restart CMD
//! ```
//!
//! Two file forms are understood, detected from the content:
//! 1. `fieldRef: metadata.annotations`: one `key="value"` line per annotation, sorted by key,
//!    values quoted by Go's `%q` (kubelet's `fieldpath.FormatMap`); carries the fencing token;
//! 2. `fieldRef: metadata.annotations['leaderlock.dev/<lock>']`: just `leader` or `standby`
//!    (empty when the annotation is absent); no token.
//!
//! Parsing is pure and unit-tested; file reading, watching and process control come after it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::Chars;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::pods::{LEADER, STANDBY, role_key, token_key};

/// Where the examples mount the all-annotations projection.
pub const DEFAULT_ROLE_FILE: &str = "/etc/leaderlock/annotations";
/// Environment variable through which `run` hands the fencing token to CMD (when known).
pub const TOKEN_ENV: &str = "LEADERLOCK_FENCING_TOKEN";
/// Exit status of `role` for a leader, and of `wait` once leader.
pub const EXIT_LEADER: u8 = 0;
/// Exit status of `role` for a standby.
pub const EXIT_STANDBY: u8 = 1;
/// Exit status when the helper itself fails (file or annotation missing, garbage, timeout).
pub const EXIT_ERROR: u8 = 2;
/// Re-read even without a notification, in case one was lost; tests never depend on it.
const SAFETY_REREAD: Duration = Duration::from_secs(60);
/// A path lookup can race the removal of kubelet's old timestamped dir; by the time the lookup
/// fails, `..data` already points at the new dir, so an immediate retry succeeds.
const READ_ATTEMPTS: usize = 3;

// ───────────────────────────── pure part: parsing ─────────────────────────────

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
    #[error("the content is not UTF-8")]
    NotUtf8,
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

/// The role for `lock` in the file content; `None` when the annotation is absent, meaning the pod
/// is not (yet, or any more) a candidate.
pub fn role_in(content: &str, lock: &str) -> Result<Option<Role>, ParseError> {
    match detect_form(content) {
        FileForm::AllAnnotations => {
            let annotations = parse_annotations(content)?;
            role_from_annotations(&annotations, lock)
        }
        // kubelet projects an absent annotation as an empty file.
        FileForm::SingleValue => match content.trim() {
            "" => Ok(None),
            value => role_from_value(value, None).map(Some),
        },
    }
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

/// Undoes Go's `strconv.Quote` (kubelet's `%q`): the whole input must be one double-quoted
/// string. Accepts every escape Go's `strconv.Unquote` accepts in a double-quoted string.
pub fn go_unquote(quoted: &str) -> Result<String, String> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| "the value must be enclosed in double quotes".to_string())?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Err("unescaped '\"' inside the value".into()),
            '\\' => unescape(&mut chars, &mut bytes)?,
            c => push_char(&mut bytes, c),
        }
    }
    // `\xNN` may produce bytes that are not UTF-8; they cannot matter for our keys.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// One escape sequence, the backslash already consumed.
fn unescape(chars: &mut Chars<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let c = chars.next().ok_or("a backslash ends the value")?;
    let byte = match c {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => b'\n',
        'r' => b'\r',
        't' => b'\t',
        'v' => 0x0b,
        '\\' => b'\\',
        '"' => b'"',
        'x' => digits(chars, 2, 16)?.try_into().map_err(|_| "\\x escape out of range")?,
        '0'..='7' => octal_byte(c, chars)?,
        'u' => return push_rune(out, digits(chars, 4, 16)?),
        'U' => return push_rune(out, digits(chars, 8, 16)?),
        other => return Err(format!("unknown escape \\{other}")),
    };
    out.push(byte);
    Ok(())
}

/// `\NNN`: exactly three octal digits, at most 0o377.
fn octal_byte(first: char, chars: &mut Chars<'_>) -> Result<u8, String> {
    let high = first.to_digit(8).ok_or("bad octal escape")?;
    let value = high * 64 + digits(chars, 2, 8)?;
    u8::try_from(value).map_err(|_| format!("octal escape \\{value:o} is above \\377"))
}

/// Exactly `count` digits in `radix`.
fn digits(chars: &mut Chars<'_>, count: usize, radix: u32) -> Result<u32, String> {
    (0..count).try_fold(0u32, |acc, _| {
        let digit =
            chars.next().and_then(|c| c.to_digit(radix)).ok_or_else(|| format!("expected {count} base-{radix} digits in an escape"))?;
        Ok(acc * radix + digit)
    })
}

fn push_rune(out: &mut Vec<u8>, code: u32) -> Result<(), String> {
    let c = char::from_u32(code).ok_or_else(|| format!("escape U+{code:04X} is not a Unicode scalar value"))?;
    push_char(out, c);
    Ok(())
}

fn push_char(out: &mut Vec<u8>, c: char) {
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

/// Durations for `--timeout` and `--grace-period`: `500ms`, `10s`, `1.5s`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h")),
    };
    number
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h"))
}

/// Lock names are DNS-1123 labels of at most 50 characters (SPEC §2); catching a typo here
/// beats waiting forever for an annotation that cannot exist.
pub fn parse_lock_name(name: &str) -> Result<String, String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = !name.starts_with('-') && !name.ends_with('-');
    if !name.is_empty() && name.len() <= 50 && valid_chars && valid_ends {
        Ok(name.to_string())
    } else {
        Err(format!("{name:?} is not a lock name (a DNS-1123 label: a-z, 0-9 and '-', at most 50 characters)"))
    }
}

/// The exit status a shell would report: the code, or 128 + the signal that killed the process.
pub fn shell_exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

// ───────────────────────────── errors ─────────────────────────────

/// Why a pod-side command cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PodsideError {
    #[error("cannot read the role file {path}: {source}; mount the downward-API volume there or point --file (LEADERLOCK_ROLE_FILE) at it")]
    Read { path: PathBuf, source: io::Error },
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
    #[error("no command given: put it after `--`, e.g. `leaderlock run --lock L -- my-server --flag`")]
    NoCommand,
}

// ───────────────────────────── I/O: reading and watching ─────────────────────────────

/// Reads and parses the role file once; `None` when the annotation is absent.
pub fn read_role(path: &Path, lock: &str) -> Result<Option<Role>, PodsideError> {
    let content = read_retrying(path).map_err(|source| PodsideError::Read { path: path.to_path_buf(), source })?;
    let content =
        String::from_utf8(content).map_err(|_| PodsideError::Garbage { path: path.to_path_buf(), source: ParseError::NotUtf8 })?;
    role_in(&content, lock).map_err(|source| PodsideError::Garbage { path: path.to_path_buf(), source })
}

fn read_retrying(path: &Path) -> io::Result<Vec<u8>> {
    let mut attempt = 1;
    loop {
        match std::fs::read(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < READ_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Watches the role file's directory: kubelet replaces the `..data` symlink there, so the
/// file (itself a symlink into a replaced dir) would never report a change of its own.
pub struct RoleWatch {
    path: PathBuf,
    lock: String,
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    closed: bool,
}

impl RoleWatch {
    /// Starts watching before the first read, so no update can slip in between.
    pub fn start(path: &Path, lock: &str) -> Result<Self, PodsideError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if is_relevant(&event) {
                let _ = tx.send(());
            }
        })
        .map_err(|source| PodsideError::Watch { dir: dir.clone(), source })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| PodsideError::Watch { dir, source })?;
        Ok(Self { path: path.to_path_buf(), lock: lock.to_string(), _watcher: watcher, events, closed: false })
    }

    pub fn read(&self) -> Result<Option<Role>, PodsideError> {
        read_role(&self.path, &self.lock)
    }

    /// Resolves once the directory changed (or the safety interval passed); a burst of events,
    /// like kubelet's create-dir, create-symlink, rename, remove-dir, counts once. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.closed {
            tokio::time::sleep(SAFETY_REREAD).await;
            return;
        }
        match tokio::time::timeout(SAFETY_REREAD, self.events.recv()).await {
            Ok(Some(())) | Err(_) => while self.events.try_recv().is_ok() {},
            Ok(None) => {
                tracing::warn!("file-system notifications stopped; re-reading {} every {SAFETY_REREAD:?}", self.path.display());
                self.closed = true;
            }
        }
    }
}

/// Our own reads open the file and would wake us up forever: skip opens and read-only closes.
fn is_relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(_) => true,
    }
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

// ───────────────────────────── run ─────────────────────────────

/// `leaderlock run`: runs CMD only while leader. Exits with CMD's status when CMD ends on its own
/// while leader or after a forwarded SIGTERM/SIGINT (128 + signal if nothing was running), and
/// 2 when the helper fails (CMD is stopped first).
pub fn run_main(path: &Path, lock: &str, grace: Duration, command: Vec<OsString>) -> u8 {
    let result = runtime().and_then(|rt| rt.block_on(Supervisor::new(lock, grace, command).run(path)));
    match result {
        Ok(code) => code,
        Err(e) => fail("run", &e),
    }
}

/// Why `run` is winding down: once CMD is gone it exits.
enum Shutdown {
    /// SIGTERM or SIGINT received and forwarded.
    Signal(Signal),
    /// The role file turned unreadable: CMD cannot be known to be leader any more.
    Failed(PodsideError),
}

/// The running CMD.
struct Child {
    process: tokio::process::Child,
    token: Option<i64>,
    /// When SIGKILL is due, once a stop has begun.
    kill_at: Option<Instant>,
    killed: bool,
}

impl Child {
    /// Signals CMD's whole process group (CMD runs in its own), so `sh -c` pipelines stop too.
    /// The pid is only used while CMD is not reaped, so it cannot have been reused.
    fn signal(&self, sig: Signal) {
        let Some(pid) = self.process.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw) else {
            return;
        };
        if killpg(pid, sig).is_err() {
            let _ = kill(pid, sig);
        }
    }

    /// SIGTERM (or a forwarded signal) now, SIGKILL after the grace period unless already due.
    fn stop(&mut self, sig: Signal, grace: Duration) {
        self.signal(sig);
        self.kill_at.get_or_insert_with(|| Instant::now() + grace);
    }

    fn stopping(&self) -> bool {
        self.kill_at.is_some()
    }

    fn kill_due(&self) -> Option<Instant> {
        self.kill_at.filter(|_| !self.killed)
    }
}

struct Supervisor {
    lock: String,
    grace: Duration,
    command: Vec<OsString>,
    child: Option<Child>,
    shutdown: Option<Shutdown>,
}

impl Supervisor {
    fn new(lock: &str, grace: Duration, command: Vec<OsString>) -> Self {
        Self { lock: lock.to_string(), grace, command, child: None, shutdown: None }
    }

    async fn run(mut self, path: &Path) -> Result<u8, PodsideError> {
        if self.command.is_empty() {
            return Err(PodsideError::NoCommand);
        }
        // Handlers first: a signal that arrives once CMD exists must be forwarded, not fatal.
        let mut sigterm = signal(SignalKind::terminate()).map_err(PodsideError::Runtime)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(PodsideError::Runtime)?;
        let mut watch = RoleWatch::start(path, &self.lock)?;
        let mut role = watch.read()?;
        self.log_role(role.as_ref());
        loop {
            if self.shutdown.is_none() {
                self.reconcile(role)?;
            }
            if self.child.is_none()
                && let Some(shutdown) = self.shutdown.take()
            {
                return match shutdown {
                    Shutdown::Signal(sig) => Ok(u8::try_from(128 + sig as i32).unwrap_or(255)),
                    Shutdown::Failed(e) => Err(e),
                };
            }
            let kill_due = self.child.as_ref().and_then(Child::kill_due);
            tokio::select! {
                status = wait_child(&mut self.child) => {
                    if let Some(code) = self.on_exit(status)? {
                        return Ok(code);
                    }
                }
                () = sleep_until(kill_due) => self.kill(),
                () = watch.changed(), if self.shutdown.is_none() => match watch.read() {
                    Ok(new) => {
                        if new != role {
                            self.log_role(new.as_ref());
                        }
                        role = new;
                    }
                    Err(e) => self.begin_shutdown(Shutdown::Failed(e)),
                },
                _ = sigterm.recv() => self.begin_shutdown(Shutdown::Signal(Signal::SIGTERM)),
                _ = sigint.recv() => self.begin_shutdown(Shutdown::Signal(Signal::SIGINT)),
            }
        }
    }

    fn log_role(&self, role: Option<&Role>) {
        tracing::info!("lock {}: {}", self.lock, describe(role));
    }

    /// Brings CMD in line with the role: start when leader, stop when not, restart when the
    /// fencing token changed (another holder may have come and gone in between).
    fn reconcile(&mut self, role: Option<Role>) -> Result<(), PodsideError> {
        let grace = self.grace;
        match (role, self.child.as_mut()) {
            (Some(Role::Leader { token }), None) => self.spawn(token)?,
            (Some(Role::Leader { token: Some(new) }), Some(child)) if !child.stopping() => {
                if let Some(old) = child.token.filter(|old| *old != new) {
                    tracing::info!("lock {}: fencing token changed {old} -> {new}, restarting the command: sending SIGTERM", self.lock);
                    child.stop(Signal::SIGTERM, grace);
                }
            }
            (Some(Role::Leader { .. }), Some(_)) => {}
            (_, Some(child)) if !child.stopping() => {
                tracing::info!(
                    "lock {}: no longer leader, sending SIGTERM to the command (pid {}), SIGKILL in {grace:?}",
                    self.lock,
                    child.process.id().unwrap_or(0)
                );
                child.stop(Signal::SIGTERM, grace);
            }
            (_, _) => {}
        }
        Ok(())
    }

    fn spawn(&mut self, token: Option<i64>) -> Result<(), PodsideError> {
        let (program, args) = self.command.split_first().ok_or(PodsideError::NoCommand)?;
        let mut command = tokio::process::Command::new(program);
        command.args(args).process_group(0).kill_on_drop(true);
        match token {
            Some(token) => command.env(TOKEN_ENV, token.to_string()),
            None => command.env_remove(TOKEN_ENV),
        };
        let process = command.spawn().map_err(|source| PodsideError::Spawn { program: program.clone(), source })?;
        tracing::info!("lock {}: leader, started the command (pid {})", self.lock, process.id().unwrap_or(0));
        self.child = Some(Child { process, token, kill_at: None, killed: false });
        Ok(())
    }

    /// CMD ended: `Some(code)` when `run` should exit with it, `None` to keep supervising.
    fn on_exit(&mut self, status: io::Result<ExitStatus>) -> Result<Option<u8>, PodsideError> {
        let stopped = self.child.take().is_some_and(|child| child.stopping());
        let status = status.map_err(PodsideError::WaitChild)?;
        let code = shell_exit_code(status);
        tracing::info!("lock {}: the command exited ({status})", self.lock);
        match self.shutdown.take() {
            Some(Shutdown::Signal(_)) => Ok(Some(code)),
            Some(Shutdown::Failed(e)) => Err(e),
            None if stopped => Ok(None),
            None => {
                tracing::info!("lock {}: the command ended by itself while leader, exiting with {code}", self.lock);
                Ok(Some(code))
            }
        }
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            tracing::warn!("lock {}: the command did not exit within {:?} of SIGTERM, sending SIGKILL", self.lock, self.grace);
            child.signal(Signal::SIGKILL);
            child.killed = true;
        }
    }

    /// Stops CMD (forwarding the signal received, or SIGTERM on failure), then exits once it is gone.
    fn begin_shutdown(&mut self, shutdown: Shutdown) {
        let sig = match &shutdown {
            Shutdown::Signal(sig) => {
                tracing::info!("lock {}: received {sig}, forwarding it to the command", self.lock);
                *sig
            }
            Shutdown::Failed(e) => {
                tracing::error!("lock {}: {e}; stopping the command before exiting", self.lock);
                Signal::SIGTERM
            }
        };
        if let Some(child) = self.child.as_mut() {
            child.stop(sig, self.grace);
        }
        self.shutdown = Some(shutdown);
    }
}

async fn wait_child(child: &mut Option<Child>) -> io::Result<ExitStatus> {
    match child {
        Some(child) => child.process.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Copies the running binary to `dest` with mode 0755 (see `leaderlock copy-self`).
pub fn copy_self(dest: &Path) -> Result<(), std::io::Error> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    std::fs::copy(&me, dest)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot copy {} to {}: {e}", me.display(), dest.display())))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn go_unquote_handles_every_go_escape() {
        assert_eq!(go_unquote(r#""""#).unwrap(), "");
        assert_eq!(go_unquote(r#""\a\b\f\n\r\t\v\\\"""#).unwrap(), "\x07\x08\x0c\n\r\t\x0b\\\"");
        assert_eq!(go_unquote(r#""\x41\101\u00e9\U0001F600""#).unwrap(), "AAé😀");
        assert_eq!(go_unquote("\"raw é 😀 = \"").unwrap(), "raw é 😀 = ");
    }

    #[test]
    fn go_unquote_rejects_what_go_rejects() {
        for bad in [r#"x"#, r#"""#, r#""a"#, r#"a""#, r#""a"b""#, r#""\""#, r#""\q""#, r#""\x4""#, r#""\400""#, r#""\uD800""#, r#""\'""#] {
            assert!(go_unquote(bad).is_err(), "{bad} should be rejected");
        }
    }

    /// Go's `strconv.Quote`, varying between raw and escaped forms to cover both.
    fn go_quote(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_ascii() => out.push(c),
                c if (c as u32).is_multiple_of(2) => out.push(c),
                c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push_str(&format!("\\U{:08x}", c as u32)),
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #[test]
        fn any_quoted_value_unquotes_to_itself(value in any::<String>()) {
            prop_assert_eq!(go_unquote(&go_quote(&value)), Ok(value));
        }

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

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "s", "-1s", "10x", "1.2.3s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn lock_names_are_dns_labels() {
        assert!(parse_lock_name("ledger-writer").is_ok());
        assert!(parse_lock_name("a").is_ok());
        for bad in ["", "-a", "a-", "Ledger", "a.b", "a/b", &"a".repeat(51)] {
            assert!(parse_lock_name(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn exit_codes_follow_shell_conventions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(shell_exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn only_writes_and_directory_changes_wake_the_watch() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let event = |kind| Ok(notify::Event::new(kind));
        assert!(is_relevant(&event(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::Folder))));
        assert!(is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!is_relevant(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
    }
}
