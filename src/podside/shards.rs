//! `leaderlock shards`: runs ONE long-lived program and tells it which locks (shards) this pod
//! leads, from the same all-annotations file, whenever that set changes (docs/contract.md §3.6).
//!
//! One process for every shard rather than one per shard: a sharded program (a controller
//! splitting its keys into buckets, a consumer of partitions) shares its caches, watches and
//! connections among its shards and only starts or stops the work of the shards that moved; a
//! process per shard would multiply all of that by the shard count and need a pod spec that
//! knows the count. The program learns the set from `LEADERLOCK_SHARDS` at start and from the
//! shards file, rewritten atomically before every `--signal`; each line carries the shard's
//! fencing token, so the program can fence its writes per shard. (`leaderlock run --lock` per
//! container remains for a program that serves one lock and must be killed when it loses it.)
//!
//! Shards led at the first read are inherited ([`super::inherited`]): they join the set only once
//! a change of the file confirms them or `--inherited-role-wait` passes. When the controller's
//! renewal lapses ([`super::renewal`]), every shard leaves the set until a new mark arrives.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::inherited::{Ending, Inherited, token_text};
use super::read::Snapshot;
use super::renewal::{Deadline, lapsed_message, renewed_message};
use super::shardset::{Led, Shard, env_value, file_content, led_in, valid_prefix};
use super::supervisor::{Child, Shutdown, shell_exit_code, sleep_until, wait_child};
use super::watch::FileWatch;
use super::{PodsideError, fail, runtime};

/// The set at start: the shard names, comma-separated, in order.
pub const SHARDS_ENV: &str = "LEADERLOCK_SHARDS";
/// The path of the shards file, as CMD sees it.
pub const SHARDS_FILE_ENV: &str = "LEADERLOCK_SHARDS_FILE";

/// What `leaderlock shards` was asked to do.
pub struct ShardsOptions {
    /// The all-annotations downward-API file.
    pub file: PathBuf,
    /// Only locks whose name starts with this.
    pub lock_prefix: String,
    /// Where the set is written for CMD.
    pub shards_file: PathBuf,
    /// Sent to CMD (alone, not its group) after every rewrite of the shards file.
    pub signal: Signal,
    /// Between SIGTERM and SIGKILL when CMD is stopped.
    pub grace: Duration,
    /// How long shards led at the first read stay out of the set with no change of the file to
    /// confirm or revoke them; 0 admits them at once.
    pub inherited_wait: Duration,
    pub command: Vec<OsString>,
}

/// `leaderlock shards`: exits with CMD's status when it ends (128 + signal if a signal killed
/// it), 128 + signal when one arrives and CMD is gone, and 2 when the helper fails (CMD is
/// stopped first).
pub fn shards_main(options: ShardsOptions) -> u8 {
    let result = runtime().and_then(|rt| rt.block_on(Server::new(options).run()));
    match result {
        Ok(code) => code,
        Err(e) => fail("shards", &e),
    }
}

/// `--signal`: a signal name, with or without `SIG`, any case. Signals that cannot be caught or
/// that mean "stop" are refused: CMD must be able to act on it and keep running.
pub fn parse_signal(text: &str) -> Result<Signal, PodsideError> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    match Signal::from_str(&name) {
        Ok(Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGTERM | Signal::SIGINT) | Err(_) => Err(PodsideError::BadSignal(text.to_string())),
        Ok(sig) => Ok(sig),
    }
}

/// `--lock-prefix`: empty, or how lock names start (a-z, 0-9, '-').
pub fn parse_lock_prefix(text: &str) -> Result<String, PodsideError> {
    if valid_prefix(text) { Ok(text.to_string()) } else { Err(PodsideError::BadPrefix(text.to_string())) }
}

struct Server {
    options: ShardsOptions,
    child: Option<Child>,
    shutdown: Option<Shutdown>,
    /// What the shards file says now.
    published: Vec<Shard>,
    /// What the role file says the pod leads now.
    leading: Vec<Shard>,
    /// Shards led at the first read, left out of the set until settled.
    inherited: Inherited,
    /// The renewal deadline, for every shard at once.
    renewal: Deadline,
    /// Whether every shard is left out for want of a renewal.
    lapsed: bool,
}

impl Server {
    fn new(options: ShardsOptions) -> Self {
        Self {
            options,
            child: None,
            shutdown: None,
            published: Vec::new(),
            leading: Vec::new(),
            inherited: Inherited::default(),
            renewal: Deadline::default(),
            lapsed: false,
        }
    }

    async fn run(mut self) -> Result<u8, PodsideError> {
        if self.options.command.is_empty() {
            return Err(PodsideError::NoCommand);
        }
        // Handlers first: a signal that arrives once CMD exists must be forwarded, not fatal.
        let mut sigterm = signal(SignalKind::terminate()).map_err(PodsideError::Runtime)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(PodsideError::Runtime)?;
        let mut watch = FileWatch::start(&self.options.file)?;
        let (Led { shards: leading, renewal }, mut seen) = self.read(&watch)?;
        // A restarted helper counts the deadline from its first read: it cannot know how old the mark is.
        self.renewal.read(renewal, Instant::now());
        self.inherited = Inherited::at_first_read(&leading, !self.options.inherited_wait.is_zero());
        let mut inherited_until = None;
        if self.inherited.is_waiting() {
            tracing::info!(
                "shards: leadership of {} inherited from before this process started; leaving it out of the set, waiting up to {:?} for the controller to confirm or revoke it",
                describe_held(self.inherited.held()),
                self.options.inherited_wait
            );
            inherited_until = Some(tokio::time::Instant::now() + self.options.inherited_wait);
        }
        self.leading = leading;
        let shards = self.set_now();
        write_atomically(&self.options.shards_file, &file_content(&shards))?;
        self.spawn(&shards)?;
        self.published = shards;
        // CMD runs from here until it ends, and `shards` ends with it.
        loop {
            let kill_due = self.child.as_ref().and_then(Child::kill_due);
            // Only shards led under a renewal that has not lapsed yet have a deadline to wake up for.
            let renewal_due = self.renewal.due().filter(|_| !self.leading.is_empty() && !self.lapsed);
            tokio::select! {
                status = wait_child(&mut self.child) => return self.on_exit(status),
                () = sleep_until(kill_due) => self.kill(),
                () = sleep_until(renewal_due), if self.shutdown.is_none() => {
                    let shards = self.set_now();
                    if let Err(e) = self.publish(shards) {
                        self.begin_shutdown(Shutdown::Failed(e));
                    }
                }
                () = sleep_until(inherited_until), if self.shutdown.is_none() => {
                    inherited_until = None;
                    let endings = self.inherited.elapsed();
                    log_inherited(endings);
                    let shards = self.set_now();
                    if let Err(e) = self.publish(shards) {
                        self.begin_shutdown(Shutdown::Failed(e));
                    }
                }
                () = watch.changed(), if self.shutdown.is_none() => {
                    let update = self.read(&watch).and_then(|(Led { shards: leading, renewal }, snapshot)| {
                        self.renewal.read(renewal, Instant::now());
                        // Only a new update of the file settles inherited shards, not a re-read.
                        if snapshot != seen {
                            seen = snapshot;
                            if self.inherited.is_waiting() {
                                inherited_until = None;
                                log_inherited(self.inherited.changed(&leading));
                            }
                        }
                        self.leading = leading;
                        let shards = self.set_now();
                        self.publish(shards)
                    });
                    if let Err(e) = update {
                        self.begin_shutdown(Shutdown::Failed(e));
                    }
                }
                _ = sigterm.recv() => self.begin_shutdown(Shutdown::Signal(Signal::SIGTERM)),
                _ = sigint.recv() => self.begin_shutdown(Shutdown::Signal(Signal::SIGINT)),
            }
        }
    }

    /// The shards the file says the pod leads and its renewal, with the update it was read from.
    fn read(&self, watch: &FileWatch) -> Result<(Led, Snapshot), PodsideError> {
        let snapshot = watch.read()?;
        let led = led_in(&snapshot.content, &self.options.lock_prefix)
            .map_err(|source| PodsideError::NotAnnotations { path: watch.path().to_path_buf(), source })?;
        Ok((led, snapshot))
    }

    /// The set to publish now: what the pod leads less inherited shards not yet settled, or
    /// nothing while the renewal has lapsed. Logs when a lapse starts and when it ends.
    fn set_now(&mut self) -> Vec<Shard> {
        let leading = !self.leading.is_empty();
        let lapsed = leading && self.renewal.lapsed(Instant::now());
        if lapsed && !self.lapsed {
            tracing::warn!("shards: {}: leaving every shard out of the set", lapsed_message(self.renewal.deadline()));
        } else if !lapsed && self.lapsed && leading {
            tracing::info!("shards: {}; serving the shards led again", renewed_message(&self.renewal));
        }
        self.lapsed = lapsed;
        if lapsed { Vec::new() } else { self.inherited.admitted(&self.leading) }
    }

    fn spawn(&mut self, shards: &[Shard]) -> Result<(), PodsideError> {
        let (program, args) = self.options.command.split_first().ok_or(PodsideError::NoCommand)?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .process_group(0)
            .kill_on_drop(true)
            .env(SHARDS_ENV, env_value(shards))
            .env(SHARDS_FILE_ENV, &self.options.shards_file);
        let process = command.spawn().map_err(|source| PodsideError::Spawn { program: program.clone(), source })?;
        tracing::info!("shards: leading {}; started the command (pid {})", describe(shards), process.id().unwrap_or(0));
        self.child = Some(Child::new(process));
        Ok(())
    }

    /// Rewrites the shards file, then signals CMD, only when the set (or a token) changed: an
    /// unrelated annotation change costs CMD nothing.
    fn publish(&mut self, shards: Vec<Shard>) -> Result<(), PodsideError> {
        if shards == self.published {
            tracing::debug!("shards: the annotations changed, the set is unchanged: nothing to tell");
            return Ok(());
        }
        write_atomically(&self.options.shards_file, &file_content(&shards))?;
        let change = describe_change(&self.published, &shards);
        self.published = shards;
        if let Some(child) = self.child.as_ref().filter(|child| !child.stopping()) {
            child.notify(self.options.signal);
            tracing::info!("shards: now leading {} ({change}); sent {} to the command", describe(&self.published), self.options.signal);
        }
        Ok(())
    }

    /// CMD ended: `shards` ends with it.
    fn on_exit(&mut self, status: io::Result<ExitStatus>) -> Result<u8, PodsideError> {
        self.child = None;
        let code = shell_exit_code(status.map_err(PodsideError::WaitChild)?);
        match self.shutdown.take() {
            Some(Shutdown::Failed(e)) => Err(e),
            Some(Shutdown::Signal(_)) => {
                tracing::info!("shards: the command exited with {code}");
                Ok(code)
            }
            None => {
                tracing::info!("shards: the command ended by itself, exiting with {code}");
                Ok(code)
            }
        }
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            tracing::warn!("shards: the command did not exit within {:?} of SIGTERM, sending SIGKILL", self.options.grace);
            child.force_kill();
        }
    }

    /// Stops CMD (forwarding the signal received, or SIGTERM on failure), then exits once it is gone.
    fn begin_shutdown(&mut self, shutdown: Shutdown) {
        let sig = match &shutdown {
            Shutdown::Signal(sig) => {
                tracing::info!("shards: received {sig}, forwarding it to the command");
                *sig
            }
            Shutdown::Failed(e) => {
                tracing::error!("shards: {e}; stopping the command before exiting");
                Signal::SIGTERM
            }
        };
        if let Some(child) = self.child.as_mut() {
            child.stop(sig, self.options.grace);
        }
        self.shutdown = Some(shutdown);
    }
}

/// Writes `content` to a temporary file beside `path` and renames it over `path`, so a reader
/// sees the old set or the new one, never half of one.
fn write_atomically(path: &Path, content: &str) -> Result<(), PodsideError> {
    let error = |source| PodsideError::ShardsFile { path: path.to_path_buf(), source };
    let name = path.file_name().ok_or_else(|| error(io::Error::new(io::ErrorKind::InvalidInput, "the path names no file")))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, content).and_then(|()| std::fs::rename(&tmp, path)).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        error(source)
    })
}

fn log_inherited(endings: Vec<(Shard, Ending)>) {
    for (held, ending) in endings {
        tracing::info!("shards: inherited leadership of {} ({}) {ending}", held.lock, token_text(held.token));
    }
}

/// `shard-0 (token 41), shard-2 (token 43)`
fn describe_held(held: &[Shard]) -> String {
    held.iter().map(|s| format!("{} ({})", s.lock, token_text(s.token))).collect::<Vec<_>>().join(", ")
}

fn describe(shards: &[Shard]) -> String {
    match shards.len() {
        0 => "no shard".to_string(),
        n => format!("{n} shard{}: {}", if n == 1 { "" } else { "s" }, env_value(shards)),
    }
}

/// `+shard-3 -shard-1 shard-2:token 40->44`
fn describe_change(old: &[Shard], new: &[Shard]) -> String {
    let find = |set: &[Shard], lock: &str| set.iter().find(|s| s.lock == lock).map(|s| s.token);
    let mut parts = Vec::new();
    for shard in new {
        match find(old, &shard.lock) {
            None => parts.push(format!("+{}", shard.lock)),
            Some(token) if token != shard.token => {
                parts.push(format!("{} token {}->{}", shard.lock, show(token), show(shard.token)));
            }
            Some(_) => {}
        }
    }
    parts.extend(old.iter().filter(|s| find(new, &s.lock).is_none()).map(|s| format!("-{}", s.lock)));
    parts.join(" ")
}

fn show(token: Option<i64>) -> String {
    token.map_or_else(|| "none".to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(lock: &str, token: i64) -> Shard {
        Shard { lock: lock.into(), token: Some(token) }
    }

    #[test]
    fn signals_are_named_with_or_without_sig_and_stops_are_refused() {
        assert_eq!(parse_signal("SIGHUP").ok(), Some(Signal::SIGHUP));
        assert_eq!(parse_signal("usr1").ok(), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("SigUsr2").ok(), Some(Signal::SIGUSR2));
        for bad in ["KILL", "SIGSTOP", "term", "INT", "", "SIGNOPE", "1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_change_is_described_as_gained_lost_and_new_tokens() {
        let old = [shard("shard-1", 4), shard("shard-2", 5)];
        let new = [shard("shard-2", 9), shard("shard-3", 7)];
        assert_eq!(describe_change(&old, &new), "shard-2 token 5->9 +shard-3 -shard-1");
        assert_eq!(describe(&new), "2 shards: shard-2,shard-3");
        assert_eq!(describe(&[]), "no shard");
    }

    #[test]
    fn the_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards");
        write_atomically(&path, "shard-0 1\n").unwrap();
        write_atomically(&path, "shard-1 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "shard-1 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = write_atomically(&dir.path().join("no-dir/shards"), "");
        assert!(matches!(missing, Err(PodsideError::ShardsFile { .. })));
    }
}
