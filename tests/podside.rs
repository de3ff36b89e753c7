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

// ───────────────────────────── run ─────────────────────────────

/// Appends `start <pid> <token>` to $MARKER, and `stop <pid>` on SIGTERM before exiting 0.
const OBEDIENT: &str = r#"trap 'echo "stop $$" >> "$MARKER"; exit 0' TERM
echo "start $$ ${LEADERLOCK_FENCING_TOKEN:-none}" >> "$MARKER"
sleep 1000 & wait"#;

struct RunFixture {
    volume: Volume,
    marker: PathBuf,
    run: Running,
}

/// `run` of `script` on the all-annotations file of a volume in `state`. `inherited_wait`:
/// `--inherited-role-wait`, or `None` for the default; tests of what CMD does once it runs that
/// start on `leader` pass `Some("0")` so that it runs at once.
fn run_with(state: State, grace: &str, inherited_wait: Option<&str>, script: &str) -> RunFixture {
    run_on(Volume::new(state), Volume::annotations, grace, inherited_wait, script)
}

fn run_on(volume: Volume, file: fn(&Volume) -> PathBuf, grace: &str, inherited_wait: Option<&str>, script: &str) -> RunFixture {
    let marker = volume.dir.path().join("marker.log");
    let file = file(&volume);
    let mut args = vec!["run", "--lock", LOCK, "--file", file.to_str().unwrap(), "--grace-period", grace];
    if let Some(wait) = inherited_wait {
        args.extend_from_slice(&["--inherited-role-wait", wait]);
    }
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut command = command(&args);
    command.env("MARKER", &marker);
    RunFixture { run: Running::start(command), volume, marker }
}

impl RunFixture {
    fn wait_lines(&self, count: usize) -> Vec<String> {
        until(
            &format!("{count} marker lines"),
            || lines(&self.marker).len() >= count,
            || format!("marker: {:?}\nstderr:\n{}", lines(&self.marker), self.run.stderr()),
        );
        lines(&self.marker)
    }

    fn wait_gone(&self, pid: i32) {
        until(&format!("pid {pid} to be gone"), || !alive(pid), || self.run.stderr());
    }
}

/// The pid in a marker line `start <pid> ...` or `stop <pid>`.
fn pid_of(line: &str) -> i32 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn run_starts_the_command_when_leader_stops_it_on_demotion_and_restarts_it_on_reelection() {
    let mut fx = run_with(State::Standby, "5s", None, OBEDIENT);
    fx.run.wait_stderr("lock ledger-writer: standby");
    assert!(lines(&fx.marker).is_empty(), "nothing runs while standby");

    fx.volume.set(State::Leader(5));
    let first = fx.wait_lines(1);
    assert!(first[0].starts_with("start ") && first[0].ends_with(" 5"), "{first:?}");
    let pid1 = pid_of(&first[0]);

    let demoted = Instant::now();
    fx.volume.set(State::Standby);
    let after_demotion = fx.wait_lines(2);
    assert_eq!(after_demotion[1], format!("stop {pid1}"), "SIGTERM on demotion");
    assert!(demoted.elapsed() < REACTION, "demotion took {:?} to stop the command", demoted.elapsed());
    fx.wait_gone(pid1);

    fx.volume.set(State::Leader(9));
    let restarted = fx.wait_lines(3);
    assert!(restarted[2].starts_with("start ") && restarted[2].ends_with(" 9"), "{restarted:?}");
    let pid2 = pid_of(&restarted[2]);
    assert_ne!(pid1, pid2);

    // The annotation disappearing (the pod stopped being a candidate) is a demotion too.
    fx.volume.set(State::Absent);
    assert_eq!(fx.wait_lines(4)[3], format!("stop {pid2}"));
    fx.wait_gone(pid2);
    fx.volume.set(State::Leader(12));
    let pid3 = pid_of(&fx.wait_lines(5)[4]);

    // A new token while leader means another holder may have come and gone: restart.
    fx.volume.set(State::Leader(15));
    let after_token_change = fx.wait_lines(7);
    assert_eq!(after_token_change[5], format!("stop {pid3}"));
    assert!(after_token_change[6].ends_with(" 15"), "{after_token_change:?}");
    let pid4 = pid_of(&after_token_change[6]);
    assert!(!alive(pid3), "the old command is reaped before the new one starts");

    // SIGTERM to `run` reaches the command, and `run` exits with its status (0 here).
    fx.run.signal(Signal::SIGTERM);
    let status = fx.run.exit();
    assert_eq!(status.code(), Some(0), "{}", fx.run.stderr());
    assert_eq!(lines(&fx.marker)[7], format!("stop {pid4}"));
    assert!(!alive(pid4));
}

#[test]
fn run_sigkills_a_command_that_ignores_sigterm_after_the_grace_period() {
    let stubborn = r#"trap '' TERM; echo "start $$" >> "$MARKER"; exec sleep 1000"#;
    let mut fx = run_with(State::Leader(1), "700ms", Some("0"), stubborn);
    let pid = pid_of(&fx.wait_lines(1)[0]);

    let demoted = Instant::now();
    fx.volume.set(State::Standby);
    fx.run.wait_stderr("no longer leader, sending SIGTERM");
    if demoted.elapsed() < Duration::from_millis(500) {
        assert!(alive(pid), "SIGTERM is ignored, so the command is still there");
    }
    fx.wait_gone(pid);
    let took = demoted.elapsed();
    assert!(took >= Duration::from_millis(700), "killed after {took:?}, before the grace period");
    assert!(took < Duration::from_millis(700) + REACTION * 2, "killed only after {took:?}");
    fx.run.wait_stderr("sending SIGKILL");

    // Re-election starts a fresh one.
    fx.volume.set(State::Leader(2));
    let again = fx.wait_lines(2);
    assert_ne!(pid_of(&again[1]), pid);
    assert!(fx.run.child.try_wait().unwrap().is_none(), "run keeps supervising: {}", fx.run.stderr());
}

#[test]
fn run_exits_with_the_status_of_a_command_that_ends_by_itself_while_leader() {
    for (script, code) in [(r#"echo "start $$" >> "$MARKER"; exit 7"#, 7), (r#"echo "start $$" >> "$MARKER"; kill -KILL $$"#, 128 + 9)] {
        let mut fx = run_with(State::Leader(1), "5s", Some("0"), script);
        let status = fx.run.exit();
        assert_eq!(status.code(), Some(code), "{script}: {}", fx.run.stderr());
        assert_eq!(lines(&fx.marker).len(), 1, "not restarted");
    }
}

#[test]
fn run_forwards_sigterm_and_sigint_to_the_command_and_exits_with_its_status() {
    let traps = r#"trap 'echo "got TERM" >> "$MARKER"; exit 3' TERM; echo "start $$" >> "$MARKER"; sleep 1000 & wait"#;
    let mut fx = run_with(State::Leader(1), "5s", Some("0"), traps);
    fx.wait_lines(1);
    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(3), "{}", fx.run.stderr());
    assert_eq!(lines(&fx.marker)[1], "got TERM");

    let default_action = r#"echo "start $$" >> "$MARKER"; exec sleep 1000"#;
    let mut fx = run_with(State::Leader(1), "5s", Some("0"), default_action);
    let pid = pid_of(&fx.wait_lines(1)[0]);
    fx.run.signal(Signal::SIGINT);
    assert_eq!(fx.run.exit().code(), Some(128 + 2), "killed by the forwarded SIGINT: {}", fx.run.stderr());
    assert!(!alive(pid));
}

#[test]
fn run_exits_128_plus_the_signal_when_nothing_runs() {
    let mut fx = run_with(State::Standby, "5s", None, OBEDIENT);
    fx.run.wait_stderr("lock ledger-writer: standby");
    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(128 + 15));
    assert!(lines(&fx.marker).is_empty());
}

#[test]
fn run_stops_the_command_and_exits_2_when_the_file_turns_to_garbage() {
    let mut fx = run_with(State::Leader(1), "5s", Some("0"), OBEDIENT);
    let pid = pid_of(&fx.wait_lines(1)[0]);
    fx.volume.set_raw("leaderlock.dev/ledger-writer=\"leader", "");
    assert_eq!(fx.run.exit().code(), Some(2));
    assert_eq!(lines(&fx.marker)[1], format!("stop {pid}"));
    assert!(fx.run.stderr().contains("is not a downward-API projection"), "{}", fx.run.stderr());
}

#[test]
fn run_exits_2_without_starting_anything_when_the_file_is_missing_or_the_command_cannot_start() {
    let volume = Volume::new(State::Leader(1));
    let missing = volume.dir.path().join("nope");
    let output = command(&["run", "--lock", LOCK, "--file", missing.to_str().unwrap(), "--", "true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read the role file"), "{}", stderr(&output));

    let file = volume.annotations();
    let output = command(&["run", "--lock", LOCK, "--file", file.to_str().unwrap(), "--", "/nonexistent/cmd"])
        .env("LEADERLOCK_INHERITED_ROLE_WAIT", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot start the command"), "{}", stderr(&output));
}

// ───────────────────────────── run: an inherited role ─────────────────────────────

/// Long enough that no test mistakes the wait elapsing for a change settling it.
const LONG_WAIT: &str = "30s";

impl RunFixture {
    /// `run` read `leader` at start and is holding CMD back.
    fn wait_inherited(&self, token: i64, wait: &str) {
        self.run.wait_stderr(&format!(
            "lock ledger-writer: leader role inherited from before this process started (token {token}); waiting up to {wait} for the controller to confirm or revoke it"
        ));
        assert!(lines(&self.marker).is_empty(), "the command started on an inherited role: {:?}", lines(&self.marker));
    }
}

#[test]
fn run_starts_on_an_inherited_leader_role_once_a_change_of_the_file_confirms_it() {
    let mut fx = run_with(State::Leader(5), "5s", Some(LONG_WAIT), OBEDIENT);
    fx.wait_inherited(5, LONG_WAIT);

    // Another annotation changes, the role stays: the controller has written the pod since, and
    // still says leader with the same token.
    let confirmed = Instant::now();
    fx.volume.set_raw(&all_annotations_with(State::Leader(5), "edited"), "leader");
    let started = fx.wait_lines(1);
    assert!(started[0].starts_with("start ") && started[0].ends_with(" 5"), "{started:?}");
    assert!(confirmed.elapsed() < REACTION, "started {:?} after the confirming change", confirmed.elapsed());
    fx.run.wait_stderr("lock ledger-writer: inherited leader role (token 5) confirmed by a change of the file");

    // From then on, changes are ordinary ones.
    fx.volume.set(State::Standby);
    assert_eq!(fx.wait_lines(2)[1], format!("stop {}", pid_of(&started[0])));
}

#[test]
fn run_starts_on_an_inherited_leader_role_of_the_single_value_file_once_the_volume_is_updated() {
    // The single value stays `leader`; the update of the volume (another item changed) is what
    // tells that the kubelet has projected the pod since this process started.
    let mut fx = run_on(Volume::new(State::Leader(5)), Volume::single, "5s", Some(LONG_WAIT), OBEDIENT);
    fx.run.wait_stderr("leader role inherited from before this process started (no token)");
    assert!(lines(&fx.marker).is_empty());
    fx.volume.set_raw(&all_annotations_with(State::Leader(5), "edited"), "leader");
    assert_eq!(fx.wait_lines(1)[0].split_whitespace().nth(2), Some("none"), "no token in the single-value form");
    fx.run.wait_stderr("inherited leader role (no token) confirmed by a change of the file");
}

#[test]
fn run_never_starts_on_an_inherited_leader_role_that_a_change_revokes() {
    let wait = Duration::from_secs(3);
    let mut fx = run_with(State::Leader(5), "5s", Some("3s"), OBEDIENT);
    fx.wait_inherited(5, "3s");
    let revoked = Instant::now();
    fx.volume.set(State::Standby);
    fx.run.wait_stderr("lock ledger-writer: inherited leader role (token 5) revoked by a change of the file");
    assert!(revoked.elapsed() < wait, "the revocation was only seen after the wait had elapsed");
    // Past the end of the wait, nothing starts.
    throughout(
        wait - revoked.elapsed() + REACTION,
        "nothing runs after the inherited role was revoked",
        || lines(&fx.marker).is_empty(),
        || fx.run.stderr(),
    );
    assert!(!fx.run.stderr().contains("wait elapsed"), "{}", fx.run.stderr());

    // A later promotion is fresh: at once, with its own token.
    let promoted = Instant::now();
    fx.volume.set(State::Leader(9));
    assert!(fx.wait_lines(1)[0].ends_with(" 9"));
    assert!(promoted.elapsed() < REACTION, "started {:?} after the promotion", promoted.elapsed());
    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(0), "{}", fx.run.stderr());
}

#[test]
fn run_starts_on_an_inherited_leader_role_when_the_wait_elapses_with_no_change() {
    let began = Instant::now();
    let fx = run_with(State::Leader(5), "5s", Some("700ms"), OBEDIENT);
    fx.wait_inherited(5, "700ms");
    let started = fx.wait_lines(1);
    let took = began.elapsed();
    assert!(started[0].ends_with(" 5"), "{started:?}");
    assert!(took >= Duration::from_millis(700), "started after {took:?}, before the wait elapsed");
    fx.run.wait_stderr("lock ledger-writer: inherited leader role (token 5) unchanged when the wait elapsed: acting on it");
}

#[test]
fn run_with_an_inherited_role_wait_of_0_starts_at_once_on_a_leader_role_found_at_start() {
    let began = Instant::now();
    let fx = run_with(State::Leader(5), "5s", Some("0"), OBEDIENT);
    assert!(fx.wait_lines(1)[0].ends_with(" 5"));
    assert!(began.elapsed() < REACTION, "started {:?} after the helper", began.elapsed());
    assert!(!fx.run.stderr().contains("inherited"), "{}", fx.run.stderr());
}

#[test]
fn run_starts_at_once_on_a_leader_role_that_comes_after_the_start() {
    let mut fx = run_with(State::Standby, "5s", Some(LONG_WAIT), OBEDIENT);
    fx.run.wait_stderr("lock ledger-writer: standby");
    let promoted = Instant::now();
    fx.volume.set(State::Leader(5));
    assert!(fx.wait_lines(1)[0].ends_with(" 5"));
    assert!(promoted.elapsed() < REACTION, "a fresh leader role started the command after {:?}", promoted.elapsed());
    assert!(!fx.run.stderr().contains("inherited"), "{}", fx.run.stderr());
}

// ───────────────────────────── run: the controller's renewal ─────────────────────────────

/// The renewal deadline of these tests: short, so that a lapse comes quickly.
const RENEWAL: Duration = Duration::from_secs(1);

impl RunFixture {
    /// The controller renews the pod: a new mark, the role unchanged. Returns when the update
    /// began: the helper may read the new file before the update is done.
    fn renew(&mut self, state: State, mark: u64) -> Instant {
        let began = Instant::now();
        self.volume.set_raw(&with_renewal(&all_annotations(state), &format!("1s {mark}")), &single_value(state));
        began
    }
}

#[test]
fn run_stops_the_command_when_no_new_mark_comes_for_the_deadline_and_starts_it_again_on_a_new_mark() {
    let mut volume = Volume::new(State::Absent);
    volume.set_raw(&with_renewal(&all_annotations(State::Leader(5)), "1s 100"), "leader");
    let mut fx = run_on(volume, Volume::annotations, "5s", Some("0"), OBEDIENT);
    let first = fx.wait_lines(1);
    let pid1 = pid_of(&first[0]);
    assert!(first[0].ends_with(" 5"), "{first:?}");
    let started = Instant::now();

    // Renewals every 400 ms keep it running well past the deadline counted from the first read.
    let mut renewed = Instant::now();
    for mark in 101..=104 {
        throughout(Duration::from_millis(400), "the command runs while renewed", || alive(pid1), || fx.run.stderr());
        renewed = fx.renew(State::Leader(5), mark);
    }
    assert!(started.elapsed() > RENEWAL, "the renewals did not outlast the deadline");

    // Then the controller stops renewing (say it lost the apiserver): one deadline after the
    // last mark was read, the command is stopped as on a demotion.
    let stopped = fx.wait_lines(2);
    let lapse = renewed.elapsed();
    assert_eq!(stopped[1], format!("stop {pid1}"));
    assert!(lapse >= RENEWAL, "stopped {lapse:?} after the last new mark, before the deadline");
    assert!(lapse < RENEWAL + REACTION, "stopped only {lapse:?} after the last new mark");
    fx.run.wait_stderr("lock ledger-writer: no renewal for 1s: the controller cannot reach this pod; acting as standby");
    fx.wait_gone(pid1);

    // An update of the file with the same mark (another annotation changed) is no renewal.
    fx.volume.set_raw(&with_renewal(&all_annotations_with(State::Leader(5), "edited"), "1s 104"), "leader");
    throughout(REACTION, "nothing starts on an old mark", || lines(&fx.marker).len() == 2, || fx.run.stderr());

    // A new mark while still leader starts it again, with the same token.
    let renewed = fx.renew(State::Leader(5), 105);
    let again = fx.wait_lines(3);
    assert!(again[2].starts_with("start ") && again[2].ends_with(" 5"), "{again:?}");
    assert!(renewed.elapsed() < REACTION, "started {:?} after the new mark", renewed.elapsed());
    fx.run.wait_stderr("lock ledger-writer: renewed again: the controller reaches this pod; acting on the leader role again");

    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(0), "{}", fx.run.stderr());
}

#[test]
fn run_counts_the_deadline_of_a_mark_found_at_start_from_its_first_read_and_a_file_without_the_key_has_none() {
    // A restarted helper finds an old mark: it cannot know its age, so it counts from now.
    let began = Instant::now();
    let mut volume = Volume::new(State::Absent);
    volume.set_raw(&with_renewal(&all_annotations(State::Leader(5)), "1s 100"), "leader");
    let mut fx = run_on(volume, Volume::annotations, "5s", Some("0"), OBEDIENT);
    let pid1 = pid_of(&fx.wait_lines(1)[0]);
    assert_eq!(fx.wait_lines(2)[1], format!("stop {pid1}"));
    assert!(began.elapsed() >= RENEWAL, "stopped {:?} after the helper started, before the deadline", began.elapsed());
    fx.wait_gone(pid1);

    // The controller turns renewal off: the key goes, and the leader role stands with no deadline.
    fx.volume.set(State::Leader(5));
    let pid2 = pid_of(&fx.wait_lines(3)[2]);
    fx.run.wait_stderr("lock ledger-writer: the renewal key is gone: no deadline; acting on the leader role again");
    throughout(RENEWAL + REACTION, "the command runs with no deadline", || alive(pid2) && lines(&fx.marker).len() == 3, || fx.run.stderr());
}

#[test]
fn run_stops_the_command_and_exits_2_on_a_renewal_the_controller_would_not_write() {
    let mut fx = run_with(State::Leader(1), "5s", Some("0"), OBEDIENT);
    let pid = pid_of(&fx.wait_lines(1)[0]);
    fx.volume.set_raw(&with_renewal(&all_annotations(State::Leader(1)), "soon"), "leader");
    assert_eq!(fx.run.exit().code(), Some(2));
    assert_eq!(lines(&fx.marker)[1], format!("stop {pid}"));
    assert!(fx.run.stderr().contains("renewal \"soon\" (leaderlock.dev/roles.renewed) is not"), "{}", fx.run.stderr());
}

#[test]
fn role_reports_a_renewed_leader_as_leader_and_refuses_a_bad_renewal() {
    let mut volume = Volume::new(State::Absent);
    volume.set_raw(&with_renewal(&all_annotations(State::Leader(5)), "1s 100"), "leader");
    let output = role(&volume.annotations());
    assert_eq!((output.status.code(), stdout(&output).trim()), (Some(0), "leader 5"), "{}", stderr(&output));
    volume.set_raw(&with_renewal(&all_annotations(State::Leader(5)), "1s"), "leader");
    let output = role(&volume.annotations());
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("only the controller writes it"), "{}", stderr(&output));
}

// ───────────────────────────── shards ─────────────────────────────

/// The all-annotations projection of a pod leading `leading` (lock, token) and standby for
/// `standby`, with the other annotations a real pod carries.
fn shard_annotations(leading: &[(&str, i64)], standby: &[&str], notes: &str) -> String {
    let mut annotations = BTreeMap::from([("zz.example.com/notes".to_string(), notes.to_string())]);
    for (lock, token) in leading {
        annotations.insert(format!("leaderlock.dev/{lock}"), "leader".into());
        annotations.insert(format!("leaderlock.dev/{lock}.token"), token.to_string());
    }
    for lock in standby {
        annotations.insert(format!("leaderlock.dev/{lock}"), "standby".into());
    }
    annotations.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// Appends `start <pid> [$LEADERLOCK_SHARDS] <shards file>` to $MARKER, `<signal> <shards file>`
/// on each notice and `stop <pid>` on SIGTERM (then exits 0). The handlers come first.
const SHARDED: &str = r#"trap 'echo "hup $(tr "\n" " " < "$LEADERLOCK_SHARDS_FILE")" >> "$MARKER"' HUP
trap 'echo "usr1 $(tr "\n" " " < "$LEADERLOCK_SHARDS_FILE")" >> "$MARKER"' USR1
trap 'echo "stop $$" >> "$MARKER"; exit 0' TERM
echo "start $$ [$LEADERLOCK_SHARDS] $(tr "\n" " " < "$LEADERLOCK_SHARDS_FILE")" >> "$MARKER"
sleep 1000 & pid=$!
while kill -0 $pid 2>/dev/null; do wait $pid; done"#;

struct ShardsFixture {
    volume: Volume,
    marker: PathBuf,
    shards_file: PathBuf,
    run: Running,
}

fn shards_with(annotations: &str, extra: &[&str], script: &str) -> ShardsFixture {
    let mut volume = Volume::new(State::Absent);
    volume.set_raw(annotations, "");
    let work = volume.dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let marker = work.join("marker.log");
    let shards_file = work.join("shards");
    let file = volume.annotations();
    let mut args = vec!["shards", "--file", file.to_str().unwrap(), "--shards-file", shards_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--grace-period", "5s", "--", "sh", "-c", script]);
    let mut command = command(&args);
    for var in ["LEADERLOCK_LOCK_PREFIX", "LEADERLOCK_SHARDS_FILE", "LEADERLOCK_SHARDS_SIGNAL", "LEADERLOCK_SHARDS"] {
        command.env_remove(var);
    }
    command.env("LEADERLOCK_LOG_LEVEL", "leaderlock=debug").env("MARKER", &marker);
    ShardsFixture { run: Running::start(command), volume, marker, shards_file }
}

impl ShardsFixture {
    fn wait_lines(&self, count: usize) -> Vec<String> {
        until(
            &format!("{count} marker lines"),
            || lines(&self.marker).len() >= count,
            || format!("marker: {:?}\nstderr:\n{}", lines(&self.marker), self.run.stderr()),
        );
        lines(&self.marker).iter().map(|l| l.trim_end().to_string()).collect()
    }

    fn set(&mut self, annotations: &str) {
        self.volume.set_raw(annotations, "");
    }
}

#[test]
fn shards_runs_one_command_at_once_and_tells_it_every_change_of_the_set() {
    let initial = shard_annotations(&[("shard-0", 41), ("shard-2", 43), ("shard-10", 44), ("ledger-writer", 3)], &["shard-1"], "");
    let mut fx = shards_with(&initial, &["--lock-prefix", "shard-", "--inherited-role-wait", "0"], SHARDED);
    let start = fx.wait_lines(1);
    let pid = pid_of(&start[0]);
    assert_eq!(
        start[0],
        format!("start {pid} [shard-0,shard-2,shard-10] shard-0 41 shard-2 43 shard-10 44"),
        "env and file agree, numbers sort as numbers, other locks are filtered out"
    );

    // shard-1 gained, shard-0 lost: the file first, then SIGHUP to the same process.
    let changed = Instant::now();
    fx.set(&shard_annotations(&[("shard-1", 50), ("shard-2", 43), ("shard-10", 44), ("ledger-writer", 3)], &["shard-0"], ""));
    assert_eq!(fx.wait_lines(2)[1], "hup shard-1 50 shard-2 43 shard-10 44");
    assert!(changed.elapsed() < REACTION, "the command heard of the change after {:?}", changed.elapsed());
    fx.run.wait_stderr("+shard-1 -shard-0");
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&fx.shards_file).unwrap());

    // Changes that leave the set alone (another lock, another annotation) cost the command nothing.
    fx.set(&shard_annotations(&[("shard-1", 50), ("shard-2", 43), ("shard-10", 44)], &["shard-0", "ledger-writer"], "edited"));
    fx.run.wait_stderr("the set is unchanged");
    assert_eq!(fx.run.stderr().matches("sent SIGHUP").count(), 1, "{}", fx.run.stderr());
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&fx.shards_file).unwrap()), inode, "the file was not rewritten");

    // A new token for a shard it keeps is a change too: another holder may have come and gone.
    fx.set(&shard_annotations(&[("shard-1", 50), ("shard-2", 60), ("shard-10", 44)], &["shard-0", "ledger-writer"], "edited"));
    let after = fx.wait_lines(3);
    assert_eq!(after[2], "hup shard-1 50 shard-2 60 shard-10 44");
    fx.run.wait_stderr("shard-2 token 43->60");
    assert!(alive(pid), "the command is never restarted for a change");

    // Losing every shard leaves it running with an empty file.
    fx.set(&shard_annotations(&[], &["shard-0", "shard-1", "shard-2", "shard-10"], ""));
    assert_eq!(fx.wait_lines(4)[3], "hup");
    assert_eq!(fs::read_to_string(&fx.shards_file).unwrap(), "");
    assert!(fs::read_dir(fx.shards_file.parent().unwrap()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(0), "{}", fx.run.stderr());
    assert_eq!(fx.wait_lines(5)[4], format!("stop {pid}"));
}

#[test]
fn shards_starts_with_the_empty_set_before_any_annotation_and_sends_the_chosen_signal() {
    let mut fx = shards_with("", &["--signal", "usr1"], SHARDED);
    let start = fx.wait_lines(1);
    assert_eq!(start[0], format!("start {} []", pid_of(&start[0])));
    let gained = Instant::now();
    fx.set(&shard_annotations(&[("shard-3", 7)], &["other"], ""));
    assert_eq!(fx.wait_lines(2)[1], "usr1 shard-3 7", "without --lock-prefix every lock led counts");
    assert!(gained.elapsed() < REACTION, "a shard gained after the start is fresh: added at once, not after {:?}", gained.elapsed());
    fx.run.wait_stderr("sent SIGUSR1");
}

#[test]
fn shards_exits_with_the_status_of_a_command_that_ends_and_forwards_sigint() {
    let mut fx = shards_with("", &[], r#"echo "start $$" >> "$MARKER"; exit 7"#);
    assert_eq!(fx.run.exit().code(), Some(7), "{}", fx.run.stderr());
    assert_eq!(fx.wait_lines(1).len(), 1, "not restarted");

    let mut fx = shards_with("", &[], r#"echo "start $$" >> "$MARKER"; exec sleep 1000"#);
    let pid = pid_of(&fx.wait_lines(1)[0]);
    fx.run.signal(Signal::SIGINT);
    assert_eq!(fx.run.exit().code(), Some(128 + 2), "{}", fx.run.stderr());
    assert!(!alive(pid));
}

#[test]
fn shards_stops_the_command_and_exits_2_when_the_file_turns_to_garbage() {
    let mut fx = shards_with(&shard_annotations(&[("shard-0", 1)], &[], ""), &[], SHARDED);
    let pid = pid_of(&fx.wait_lines(1)[0]);
    fx.set("leaderlock.dev/shard-0=\"leader");
    assert_eq!(fx.run.exit().code(), Some(2));
    assert_eq!(fx.wait_lines(2)[1], format!("stop {pid}"));
    assert!(fx.run.stderr().contains("is not a downward-API projection of metadata.annotations"), "{}", fx.run.stderr());
}

#[test]
fn shards_exits_2_without_starting_anything_on_a_single_value_file_or_an_unwritable_shards_file() {
    let volume = Volume::new(State::Leader(1));
    let marker = volume.dir.path().join("marker.log");
    let shards_file = volume.dir.path().join("shards");
    for (file, shards_file, expected) in [
        (volume.single(), shards_file.clone(), "holds a single value"),
        (volume.annotations(), volume.dir.path().join("no-dir/shards"), "cannot write the shards file"),
        (volume.dir.path().join("nope"), shards_file, "cannot read the role file"),
    ] {
        let output = command(&["shards", "--file", file.to_str().unwrap(), "--shards-file", shards_file.to_str().unwrap(), "--"])
            .args(["sh", "-c", r#"echo started >> "$MARKER""#])
            .env("MARKER", &marker)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{expected}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert!(lines(&marker).is_empty(), "nothing started");
    }
}

#[test]
fn shards_refuses_a_signal_that_stops_a_bad_prefix_and_a_missing_shards_file() {
    let volume = Volume::new(State::Leader(1));
    let file = volume.annotations();
    let base = ["shards", "--file", file.to_str().unwrap(), "--shards-file", "/tmp/unused"];
    for (extra, expected) in [
        (&["--signal", "KILL"][..], "not a signal the command can act on"),
        (&["--signal", "TERM"][..], "not a signal the command can act on"),
        (&["--lock-prefix", "Shard-"][..], "not the start of a lock name"),
    ] {
        let output = command(&[&base[..], extra, &["--", "true"]].concat()).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&output).contains(expected), "{extra:?}: {}", stderr(&output));
    }
    let output =
        command(&["shards", "--file", file.to_str().unwrap(), "--", "true"]).env_remove("LEADERLOCK_SHARDS_FILE").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--shards-file"), "{}", stderr(&output));
}

// ───────────────────────────── shards: inherited shards ─────────────────────────────

/// `shards` of `SHARDED` on `shard-` locks starting from `annotations`, with `--inherited-role-wait wait`.
fn shards_inheriting(annotations: &str, wait: &str) -> ShardsFixture {
    shards_with(annotations, &["--lock-prefix", "shard-", "--inherited-role-wait", wait], SHARDED)
}

#[test]
fn shards_leaves_inherited_shards_out_until_a_change_confirms_them() {
    let mut fx = shards_inheriting(&shard_annotations(&[("shard-0", 41)], &["shard-1"], ""), LONG_WAIT);
    let start = fx.wait_lines(1);
    let pid = pid_of(&start[0]);
    assert_eq!(start[0], format!("start {pid} []"), "the command starts at once, without the inherited shard");
    assert_eq!(fs::read_to_string(&fx.shards_file).unwrap(), "");
    fx.run.wait_stderr(
        "shards: leadership of shard-0 (token 41) inherited from before this process started; leaving it out of the set, waiting up to 30s",
    );

    let confirmed = Instant::now();
    fx.set(&shard_annotations(&[("shard-0", 41)], &["shard-1"], "edited"));
    assert_eq!(fx.wait_lines(2)[1], "hup shard-0 41", "added as any change is: the file, then the signal");
    assert!(confirmed.elapsed() < REACTION, "added {:?} after the confirming change", confirmed.elapsed());
    fx.run.wait_stderr("shards: inherited leadership of shard-0 (token 41) confirmed by a change of the file");

    // Shards gained later are fresh.
    fx.set(&shard_annotations(&[("shard-0", 41), ("shard-1", 50)], &[], "edited"));
    assert_eq!(fx.wait_lines(3)[2], "hup shard-0 41 shard-1 50");
    assert!(alive(pid), "the command is never restarted");
}

#[test]
fn shards_never_adds_an_inherited_shard_that_a_change_revokes() {
    let wait = Duration::from_secs(3);
    let mut fx = shards_inheriting(&shard_annotations(&[("shard-0", 41), ("shard-2", 43)], &[], ""), "3s");
    let start = fx.wait_lines(1);
    assert_eq!(start[0], format!("start {} []", pid_of(&start[0])));
    fx.run.wait_stderr("leadership of shard-0 (token 41), shard-2 (token 43) inherited");

    // One change settles both: shard-2 kept (confirmed), shard-0 demoted (revoked).
    let changed = Instant::now();
    fx.set(&shard_annotations(&[("shard-2", 43)], &["shard-0"], ""));
    assert_eq!(fx.wait_lines(2)[1], "hup shard-2 43");
    fx.run.wait_stderr("inherited leadership of shard-0 (token 41) revoked by a change of the file");
    fx.run.wait_stderr("inherited leadership of shard-2 (token 43) confirmed by a change of the file");
    assert!(changed.elapsed() < wait, "the change was only seen after the wait had elapsed");
    throughout(
        wait - changed.elapsed() + REACTION,
        "nothing more is told after the inherited shards were settled",
        || lines(&fx.marker).len() == 2,
        || format!("marker: {:?}\nstderr:\n{}", lines(&fx.marker), fx.run.stderr()),
    );
    assert_eq!(fs::read_to_string(&fx.shards_file).unwrap(), "shard-2 43\n");
}

#[test]
fn shards_adds_inherited_shards_when_the_wait_elapses_with_no_change() {
    let began = Instant::now();
    let fx = shards_inheriting(&shard_annotations(&[("shard-0", 41), ("shard-10", 44)], &["shard-1"], ""), "700ms");
    let start = fx.wait_lines(1);
    assert_eq!(start[0], format!("start {} []", pid_of(&start[0])));
    assert_eq!(fx.wait_lines(2)[1], "hup shard-0 41 shard-10 44");
    assert!(began.elapsed() >= Duration::from_millis(700), "added after {:?}, before the wait elapsed", began.elapsed());
    fx.run.wait_stderr("shards: inherited leadership of shard-10 (token 44) unchanged when the wait elapsed: acting on it");
    fx.run.wait_stderr("now leading 2 shards: shard-0,shard-10 (+shard-0 +shard-10); sent SIGHUP");
}

#[test]
fn shards_leaves_every_shard_out_when_the_renewal_lapses_and_serves_them_again_on_a_new_mark() {
    let annotations =
        |mark: u64| with_renewal(&shard_annotations(&[("shard-0", 41), ("shard-2", 43)], &["shard-1"], ""), &format!("1s {mark}"));
    let began = Instant::now();
    let mut fx = shards_inheriting(&annotations(100), "0");
    let start = fx.wait_lines(1);
    let pid = pid_of(&start[0]);
    assert_eq!(start[0], format!("start {pid} [shard-0,shard-2] shard-0 41 shard-2 43"));

    // No new mark for the deadline: the set empties, the command keeps running.
    assert_eq!(fx.wait_lines(2)[1], "hup");
    assert!(began.elapsed() >= RENEWAL, "emptied {:?} after the start, before the deadline", began.elapsed());
    assert_eq!(fs::read_to_string(&fx.shards_file).unwrap(), "");
    fx.run.wait_stderr(
        "shards: no renewal for 1s: the controller cannot reach this pod; acting as standby: leaving every shard out of the set",
    );
    assert!(alive(pid));

    let renewed = Instant::now();
    fx.set(&annotations(101));
    assert_eq!(fx.wait_lines(3)[2], "hup shard-0 41 shard-2 43");
    assert!(renewed.elapsed() < REACTION, "served again {:?} after the new mark", renewed.elapsed());
    fx.run.wait_stderr("shards: renewed again: the controller reaches this pod; serving the shards led again");
    fx.run.signal(Signal::SIGTERM);
    assert_eq!(fx.run.exit().code(), Some(0), "{}", fx.run.stderr());
}

#[test]
fn shards_with_an_inherited_role_wait_of_0_starts_with_every_shard_led() {
    let fx = shards_inheriting(&shard_annotations(&[("shard-0", 41)], &[], ""), "0");
    let start = fx.wait_lines(1);
    assert_eq!(start[0], format!("start {} [shard-0] shard-0 41", pid_of(&start[0])));
    assert!(!fx.run.stderr().contains("inherited"), "{}", fx.run.stderr());
}
