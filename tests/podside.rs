//! The pod-side helper (`leaderlock role|wait|run`, docs/contract.md §3) run as the real binary against a
//! directory that kubelet's downward-API AtomicWriter would maintain: a timestamped dir, the
//! `..data` symlink swapped by renaming `..data_tmp` over it, the old dir removed, and the
//! visible files as symlinks through `..data`. No Kubernetes, no etcd.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition (a marker line the command
//! writes, a log line, a process exit) against a deadline. Where a test shows that something does
//! NOT happen, it checks that throughout a stated window.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

#[path = "podside/run.rs"]
mod run;
#[path = "podside/shards.rs"]
mod shards;

const BIN: &str = env!("CARGO_BIN_EXE_leaderlock");
const LOCK: &str = "ledger-writer";
/// Generous bound for anything to happen at all (the machine may be busy compiling).
const DEADLINE: Duration = Duration::from_secs(15);
/// How fast a role change must be noticed: far below the helper's 60 s safety re-read.
const REACTION: Duration = Duration::from_secs(1);

// ───────────────────────────── kubelet's projection ─────────────────────────────

/// What the controller has annotated on the pod for `LOCK`.
#[derive(Clone, Copy)]
enum State {
    Absent,
    Standby,
    Leader(i64),
}

/// Go's `strconv.Quote` for the characters these tests use.
fn go_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// kubelet's `fieldpath.FormatMap`: sorted `key="value"` lines, no trailing newline. Other
/// annotations a real pod carries come along, with quotes, `=` and newlines in their values.
fn all_annotations(state: State) -> String {
    all_annotations_with(state, "line one\n\tleaderlock.dev/ledger-writer=\"leader\"")
}

/// [`all_annotations`] with another value of an unrelated annotation (some other writer's edit).
fn all_annotations_with(state: State, notes: &str) -> String {
    let mut annotations = BTreeMap::from([
        (
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            "{\"metadata\":{\"annotations\":{\"x\":\"a=\\\"b\\\"\"}}}\n".to_string(),
        ),
        ("leaderlock.dev/nightly-report".to_string(), "leader".to_string()),
        ("leaderlock.dev/nightly-report.token".to_string(), "99".to_string()),
        ("zz.example.com/notes".to_string(), notes.to_string()),
    ]);
    match state {
        State::Absent => {}
        State::Standby => {
            annotations.insert(format!("leaderlock.dev/{LOCK}"), "standby".into());
        }
        State::Leader(token) => {
            annotations.insert(format!("leaderlock.dev/{LOCK}"), "leader".into());
            annotations.insert(format!("leaderlock.dev/{LOCK}.token"), token.to_string());
        }
    }
    annotations.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// `content` (the all-annotations form) with the controller's renewal key set to `renewed`,
/// kept in kubelet's key order.
fn with_renewal(content: &str, renewed: &str) -> String {
    let mut lines: Vec<String> = content.lines().map(str::to_string).collect();
    lines.push(format!("leaderlock.dev/roles.renewed={}", go_quote(renewed)));
    lines.sort();
    lines.join("\n")
}

/// `metadata.annotations['leaderlock.dev/<lock>']`: the bare value, empty when absent.
fn single_value(state: State) -> String {
    match state {
        State::Absent => String::new(),
        State::Standby => "standby".into(),
        State::Leader(_) => "leader".into(),
    }
}

/// A downward-API volume with both projections of `examples/pods.yaml`: `annotations` (all of
/// them) and `ledger-writer` (the one value).
struct Volume {
    dir: TempDir,
    generation: u32,
}

impl Volume {
    fn new(state: State) -> Self {
        let mut volume = Volume { dir: tempfile::tempdir().unwrap(), generation: 0 };
        volume.project(&[("annotations", all_annotations(state)), (LOCK, single_value(state))]);
        volume
    }

    fn annotations(&self) -> PathBuf {
        self.dir.path().join("annotations")
    }

    fn single(&self) -> PathBuf {
        self.dir.path().join(LOCK)
    }

    /// The controller changed the annotations and kubelet refreshed the volume.
    fn set(&mut self, state: State) {
        self.project(&[("annotations", all_annotations(state)), (LOCK, single_value(state))]);
    }

    /// Replaces both files with arbitrary content (for garbage).
    fn set_raw(&mut self, annotations: &str, single: &str) {
        self.project(&[("annotations", annotations.to_string()), (LOCK, single.to_string())]);
    }

    /// kubelet's AtomicWriter.Write, step by step.
    fn project(&mut self, files: &[(&str, String)]) {
        let dir = self.dir.path();
        let data = dir.join("..data");
        let old = fs::read_link(&data).ok();
        self.generation += 1;
        let ts_name = format!("..2026_11_24_10_00_00.{:09}", 100_000_000 + self.generation);
        let ts_dir = dir.join(&ts_name);
        fs::create_dir(&ts_dir).unwrap();
        for (name, content) in files {
            fs::write(ts_dir.join(name), content).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        symlink(&ts_name, &tmp).unwrap();
        fs::rename(&tmp, &data).unwrap();
        for (name, _) in files {
            let visible = dir.join(name);
            if fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(name), &visible).unwrap();
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }
}

#[test]
fn the_simulated_volume_has_kubelets_layout() {
    let mut volume = Volume::new(State::Standby);
    volume.set(State::Leader(5));
    let dir = volume.dir.path();
    assert_eq!(fs::read_link(dir.join("annotations")).unwrap(), Path::new("..data/annotations"));
    assert_eq!(fs::read_link(dir.join("..data")).unwrap(), Path::new("..2026_11_24_10_00_00.100000002"));
    assert!(!dir.join("..2026_11_24_10_00_00.100000001").exists(), "the old timestamped dir is removed");
    assert!(!dir.join("..data_tmp").exists());
    assert_eq!(fs::read_to_string(volume.single()).unwrap(), "leader");
    assert!(fs::read_to_string(volume.annotations()).unwrap().contains("leaderlock.dev/ledger-writer.token=\"5\""));
}

// ───────────────────────────── running the binary ─────────────────────────────

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for var in [
        "RUST_LOG",
        "LEADERLOCK_LOCK",
        "LEADERLOCK_ROLE_FILE",
        "LEADERLOCK_GRACE_PERIOD",
        "LEADERLOCK_WAIT_TIMEOUT",
        "LEADERLOCK_INHERITED_ROLE_WAIT",
    ] {
        command.env_remove(var);
    }
    command.env("LEADERLOCK_LOG_LEVEL", "info");
    command
}

fn role(file: &Path) -> Output {
    command(&["role", "--lock", LOCK, "--file", file.to_str().unwrap()]).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A running `leaderlock wait|run` whose output is collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Running { child, stdout, stderr }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn wait_stderr(&self, needle: &str) {
        until(&format!("stderr to contain {needle:?}"), || self.stderr().contains(needle), || self.stderr());
    }

    /// The exit status, waiting at most `limit`.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn exit(&mut self) -> ExitStatus {
        match self.exit_within(DEADLINE) {
            Some(status) => status,
            None => panic!("the helper did not exit within {DEADLINE:?}; stderr:\n{}", self.stderr()),
        }
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    text
}

/// Polls `condition` until it holds; panics after `DEADLINE` with `what` and some context.
fn until(what: &str, mut condition: impl FnMut() -> bool, context: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}; context:\n{}", context());
        thread::sleep(Duration::from_millis(5));
    }
}

/// Checks that `invariant` holds throughout `window` (to see that something does NOT happen).
fn throughout(window: Duration, what: &str, invariant: impl Fn() -> bool, context: impl Fn() -> String) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(invariant(), "{what} broke; context:\n{}", context());
        thread::sleep(Duration::from_millis(5));
    }
}

fn lines(marker: &Path) -> Vec<String> {
    fs::read_to_string(marker).unwrap_or_default().lines().map(str::to_string).collect()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// ───────────────────────────── role ─────────────────────────────

#[test]
fn role_prints_leader_and_token_and_exits_0_from_all_annotations() {
    let volume = Volume::new(State::Leader(18233));
    let output = role(&volume.annotations());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "leader 18233\n");
}

#[test]
fn role_prints_leader_without_token_and_exits_0_from_the_single_value() {
    let volume = Volume::new(State::Leader(18233));
    let output = role(&volume.single());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "leader\n");
}

#[test]
fn role_prints_standby_and_exits_1_from_both_forms() {
    let volume = Volume::new(State::Standby);
    for file in [volume.annotations(), volume.single()] {
        let output = role(&file);
        assert_eq!(output.status.code(), Some(1), "{file:?}: {}", stderr(&output));
        assert_eq!(stdout(&output), "standby\n");
    }
}

#[test]
fn role_reads_the_file_named_by_the_environment() {
    let volume = Volume::new(State::Leader(7));
    let output = command(&["role"]).env("LEADERLOCK_LOCK", LOCK).env("LEADERLOCK_ROLE_FILE", volume.annotations()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "leader 7\n");
}

#[test]
fn role_exits_2_with_a_message_when_the_file_is_missing() {
    let volume = Volume::new(State::Leader(1));
    let missing = volume.dir.path().join("nope");
    let output = role(&missing);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(message.contains("cannot read the role file") && message.contains("nope"), "{message}");
    assert!(message.contains("--file"), "the message says what to do: {message}");
}

#[test]
fn role_exits_2_when_the_annotation_is_missing_in_either_form() {
    let volume = Volume::new(State::Absent);
    for file in [volume.annotations(), volume.single()] {
        let output = role(&file);
        assert_eq!(output.status.code(), Some(2), "{file:?}");
        assert_eq!(stdout(&output), "");
        assert!(stderr(&output).contains("no annotation leaderlock.dev/ledger-writer"), "{}", stderr(&output));
    }
}

#[test]
fn role_exits_2_on_garbage() {
    let mut volume = Volume::new(State::Standby);
    let cases = [
        ("leaderlock.dev/ledger-writer=\"leader\nbroken=\"unterminated", "maybe"),
        ("leaderlock.dev/ledger-writer=\"Leader\"", "leader standby"),
        ("leaderlock.dev/ledger-writer=\"leader\"\nleaderlock.dev/ledger-writer.token=\"soon\"", "LEADER"),
    ];
    for (annotations, single) in cases {
        volume.set_raw(annotations, single);
        for file in [volume.annotations(), volume.single()] {
            let output = role(&file);
            assert_eq!(output.status.code(), Some(2), "{file:?} with {annotations:?} / {single:?}");
            assert!(stderr(&output).contains("is not a downward-API projection"), "{}", stderr(&output));
        }
    }
}

/// `mkfifo` in `dir`, reached like kubelet's files: through a symlink.
fn fifo_behind_a_symlink(dir: &Path) -> PathBuf {
    let fifo = dir.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let link = dir.join("annotations-pipe");
    symlink(&fifo, &link).unwrap();
    link
}

#[test]
fn role_wait_and_run_exit_2_at_once_on_a_fifo_instead_of_blocking() {
    let volume = Volume::new(State::Leader(1));
    let fifo = fifo_behind_a_symlink(volume.dir.path());
    let file = fifo.to_str().unwrap();
    for args in [
        vec!["role", "--lock", LOCK, "--file", file],
        vec!["wait", "--lock", LOCK, "--file", file],
        vec!["run", "--lock", LOCK, "--file", file, "--", "true"],
    ] {
        let mut helper = Running::start(command(&args));
        let status = helper.exit_within(DEADLINE);
        assert!(status.is_some(), "`leaderlock {}` blocked on a FIFO; stderr:\n{}", args[0], helper.stderr());
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", helper.stderr());
        until("the error message", || helper.stderr().contains("error:"), || helper.stderr());
        let message = helper.stderr();
        assert!(message.contains("is a FIFO") && message.contains("regular file"), "{}: {message}", args[0]);
        assert!(helper.stdout().is_empty(), "{}", helper.stdout());
    }
}

#[test]
fn role_exits_2_naming_what_the_file_is_when_it_is_a_directory_or_a_device() {
    let volume = Volume::new(State::Leader(1));
    for (file, kind) in [(volume.dir.path().to_path_buf(), "is a directory"), (PathBuf::from("/dev/null"), "is a character device")] {
        let output = role(&file);
        assert_eq!(output.status.code(), Some(2), "{file:?}");
        let message = stderr(&output);
        assert!(message.contains(kind) && message.contains("regular file"), "{file:?}: {message}");
    }
}

#[test]
fn a_lock_name_that_cannot_exist_is_refused() {
    let volume = Volume::new(State::Leader(1));
    let output = command(&["role", "--lock", "Ledger_Writer", "--file", volume.annotations().to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not a lock name"), "{}", stderr(&output));
}

#[test]
fn help_documents_every_subcommand_and_flag() {
    let top = command(&["--help"]).output().unwrap();
    for word in ["role", "wait", "run"] {
        assert!(stdout(&top).contains(word), "{}", stdout(&top));
    }
    let run = command(&["run", "--help"]).output().unwrap();
    for word in [
        "--lock",
        "--file",
        "--grace-period",
        "LEADERLOCK_ROLE_FILE",
        "/etc/leaderlock/annotations",
        "SIGKILL",
        "[default: 10s]",
        "--inherited-role-wait",
        "LEADERLOCK_INHERITED_ROLE_WAIT",
        "[default: 5s]",
        "leaderlock.dev/roles.renewed",
    ] {
        assert!(stdout(&run).contains(word), "run --help lacks {word}: {}", stdout(&run));
    }
    let shards = command(&["shards", "--help"]).output().unwrap();
    for word in ["--inherited-role-wait", "LEADERLOCK_INHERITED_ROLE_WAIT", "[default: 5s]", "inherited", "leaderlock.dev/roles.renewed"] {
        assert!(stdout(&shards).contains(word), "shards --help lacks {word}: {}", stdout(&shards));
    }
    let wait = command(&["wait", "--help"]).output().unwrap();
    assert!(stdout(&wait).contains("--timeout"), "{}", stdout(&wait));
}

// ───────────────────────────── wait ─────────────────────────────

fn wait_on(file: &Path, extra: &[&str]) -> Running {
    let mut args = vec!["wait", "--lock", LOCK, "--file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Running::start(command(&args))
}

/// `wait` started while standby (or not yet a candidate) returns promptly once kubelet projects `leader`.
fn wait_unblocks_on_promotion(single_value_form: bool) {
    let mut volume = Volume::new(State::Absent);
    let file = if single_value_form { volume.single() } else { volume.annotations() };
    let mut wait = wait_on(&file, &[]);
    wait.wait_stderr("lock ledger-writer: no annotation");
    volume.set(State::Standby);
    wait.wait_stderr("lock ledger-writer: standby, waiting");
    assert!(wait.child.try_wait().unwrap().is_none(), "standby must keep waiting: {}", wait.stderr());

    let promoted = Instant::now();
    volume.set(State::Leader(42));
    let status = wait.exit();
    let reaction = promoted.elapsed();
    assert_eq!(status.code(), Some(0), "{}", wait.stderr());
    assert!(reaction < REACTION, "wait took {reaction:?} to notice the promotion");
    until("the role line on stdout", || wait.stdout().starts_with("leader"), || wait.stderr());
    let expected = if single_value_form { "leader\n" } else { "leader 42\n" };
    assert_eq!(wait.stdout(), expected);
}

#[test]
fn wait_returns_within_a_second_of_the_promotion_all_annotations() {
    wait_unblocks_on_promotion(false);
}

#[test]
fn wait_returns_within_a_second_of_the_promotion_single_value() {
    wait_unblocks_on_promotion(true);
}

#[test]
fn wait_returns_at_once_when_already_leader() {
    let volume = Volume::new(State::Leader(3));
    let mut wait = wait_on(&volume.annotations(), &[]);
    assert_eq!(wait.exit().code(), Some(0));
    until("stdout", || !wait.stdout().is_empty(), || wait.stderr());
    assert_eq!(wait.stdout(), "leader 3\n");
}

#[test]
fn wait_exits_2_on_timeout() {
    let volume = Volume::new(State::Standby);
    let started = Instant::now();
    let mut wait = wait_on(&volume.annotations(), &["--timeout", "300ms"]);
    assert_eq!(wait.exit().code(), Some(2));
    assert!(started.elapsed() >= Duration::from_millis(300));
    until("the timeout message", || wait.stderr().contains("timed out after 300ms"), || wait.stderr());
}

#[test]
fn wait_exits_2_when_the_file_or_its_directory_is_missing() {
    let volume = Volume::new(State::Standby);
    for missing in [volume.dir.path().join("nope"), volume.dir.path().join("no-dir/annotations")] {
        let mut wait = wait_on(&missing, &[]);
        assert_eq!(wait.exit().code(), Some(2), "{missing:?}");
        until("an error message", || wait.stderr().contains("error:"), || wait.stderr());
    }
}

#[test]
fn wait_exits_2_when_the_file_turns_to_garbage() {
    let mut volume = Volume::new(State::Standby);
    let mut wait = wait_on(&volume.annotations(), &[]);
    wait.wait_stderr("standby, waiting");
    volume.set_raw("leaderlock.dev/ledger-writer=\"leader", "");
    assert_eq!(wait.exit().code(), Some(2));
    until("an error message", || wait.stderr().contains("is not a downward-API projection"), || wait.stderr());
}

/// The pid in a marker line `start <pid> ...` or `stop <pid>`.
fn pid_of(line: &str) -> i32 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Long enough that no test mistakes an inherited role's wait elapsing for a change settling it.
const LONG_WAIT: &str = "30s";

/// The renewal deadline of these tests: short, so that a lapse comes quickly.
const RENEWAL: Duration = Duration::from_secs(1);
