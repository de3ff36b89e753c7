//! `leaderlock shards`: one command told every change of the set of shards its pod leads
//! (docs/contract.md §3.6).

use super::*;

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
