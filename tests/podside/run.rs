//! `leaderlock run`: the command started on promotion, stopped on demotion, an inherited role
//! confirmed before it starts, and the opt-in renewal deadline (docs/contract.md §3.5).

use super::*;

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
