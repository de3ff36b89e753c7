//! `leaderlock run`: a supervisor that runs CMD only while the pod is leader, stops it with
//! SIGTERM then SIGKILL on demotion, and forwards the signals `run` receives. A `leader` role
//! found at the first read is inherited ([`super::inherited`]): CMD waits for a change of the
//! file to confirm it, or for `--inherited-role-wait` to pass. A `leader` role whose renewal
//! lapsed ([`super::renewal`]) is acted on as `standby` until a new mark arrives.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::inherited::{Ending, Inherited, token_text};
use super::renewal::{Deadline, lapsed_message, renewed_message};
use super::rolefile::Role;
use super::shardset::Shard;
use super::watch::RoleWatch;
use super::{PodsideError, describe, fail, runtime};

/// Environment variable through which `run` hands the fencing token to CMD (when known).
pub const TOKEN_ENV: &str = "LEADERLOCK_FENCING_TOKEN";

/// `leaderlock run`: runs CMD only while leader. Exits with CMD's status when CMD ends on its own
/// while leader or after a forwarded SIGTERM/SIGINT (128 + signal if nothing was running), and
/// 2 when the helper fails (CMD is stopped first). A `leader` role found at the first read is
/// acted on once a change of the file confirms it or `inherited_wait` passes (0: at once).
pub fn run_main(path: &Path, lock: &str, grace: Duration, inherited_wait: Duration, command: Vec<OsString>) -> u8 {
    let result = runtime().and_then(|rt| rt.block_on(Supervisor::new(lock, grace, inherited_wait, command).run(path)));
    match result {
        Ok(code) => code,
        Err(e) => fail("run", &e),
    }
}

/// Why `run` (or `shards`) is winding down: once CMD is gone it exits.
pub(super) enum Shutdown {
    /// SIGTERM or SIGINT received and forwarded.
    Signal(Signal),
    /// The role file turned unreadable: CMD cannot be known to be leader any more.
    Failed(PodsideError),
}

/// The running CMD.
pub(super) struct Child {
    pub(super) process: tokio::process::Child,
    token: Option<i64>,
    /// When SIGKILL is due, once a stop has begun.
    kill_at: Option<Instant>,
    killed: bool,
}

impl Child {
    pub(super) fn new(process: tokio::process::Child) -> Self {
        Self { process, token: None, kill_at: None, killed: false }
    }

    /// Signals CMD's whole process group (CMD runs in its own), so `sh -c` pipelines stop too.
    /// The pid is only used while CMD is not reaped, so it cannot have been reused.
    pub(super) fn signal(&self, sig: Signal) {
        let Some(pid) = self.process.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw) else {
            return;
        };
        if killpg(pid, sig).is_err() {
            let _ = kill(pid, sig);
        }
    }

    /// SIGTERM (or a forwarded signal) now, SIGKILL after the grace period unless already due.
    pub(super) fn stop(&mut self, sig: Signal, grace: Duration) {
        self.signal(sig);
        self.kill_at.get_or_insert_with(|| Instant::now() + grace);
    }

    /// Signals CMD alone (not its group): a notice for CMD to act on, not a stop.
    pub(super) fn notify(&self, sig: Signal) {
        if let Some(pid) = self.process.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw) {
            let _ = kill(pid, sig);
        }
    }

    /// SIGKILL to the group, once the grace period is over.
    pub(super) fn force_kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.killed = true;
    }

    pub(super) fn stopping(&self) -> bool {
        self.kill_at.is_some()
    }

    pub(super) fn kill_due(&self) -> Option<Instant> {
        self.kill_at.filter(|_| !self.killed)
    }
}

struct Supervisor {
    lock: String,
    grace: Duration,
    inherited_wait: Duration,
    command: Vec<OsString>,
    child: Option<Child>,
    shutdown: Option<Shutdown>,
    /// The renewal deadline of the `leader` role.
    renewal: Deadline,
    /// Whether the `leader` role is being acted on as `standby` for want of a renewal.
    lapsed: bool,
}

impl Supervisor {
    fn new(lock: &str, grace: Duration, inherited_wait: Duration, command: Vec<OsString>) -> Self {
        let lock = lock.to_string();
        Self { lock, grace, inherited_wait, command, child: None, shutdown: None, renewal: Deadline::default(), lapsed: false }
    }

    async fn run(mut self, path: &Path) -> Result<u8, PodsideError> {
        if self.command.is_empty() {
            return Err(PodsideError::NoCommand);
        }
        // Handlers first: a signal that arrives once CMD exists must be forwarded, not fatal.
        let mut sigterm = signal(SignalKind::terminate()).map_err(PodsideError::Runtime)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(PodsideError::Runtime)?;
        let mut watch = RoleWatch::start(path, &self.lock)?;
        let (first, mut seen) = watch.read_snapshot()?;
        let mut role = first.role;
        self.log_role(role.as_ref());
        // A restarted helper counts the deadline from its first read: it cannot know how old the mark is.
        self.renewal.read(first.renewal, Instant::now());
        let mut inherited = Inherited::at_first_read(&self.leading(role), !self.inherited_wait.is_zero());
        let mut inherited_until = None;
        if let Some(held) = inherited.held().first() {
            tracing::info!(
                "lock {}: leader role inherited from before this process started ({}); waiting up to {:?} for the controller to confirm or revoke it",
                self.lock,
                token_text(held.token),
                self.inherited_wait
            );
            inherited_until = Some(Instant::now() + self.inherited_wait);
        }
        loop {
            let lapsed = self.follow_renewal(role);
            if self.shutdown.is_none() {
                // While inherited leadership is held back, CMD (not yet started) stays stopped;
                // while the renewal has lapsed, the leader role counts as standby.
                self.reconcile(role.filter(|_| !inherited.is_waiting() && !lapsed))?;
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
            // Only a leader role that has not lapsed yet has a deadline to wake up for.
            let renewal_due = self.renewal.due().filter(|_| role.is_some_and(|r| r.is_leader()) && !lapsed);
            tokio::select! {
                status = wait_child(&mut self.child) => {
                    if let Some(code) = self.on_exit(status)? {
                        return Ok(code);
                    }
                }
                () = sleep_until(kill_due) => self.kill(),
                // Wakes the loop, which finds the renewal lapsed.
                () = sleep_until(renewal_due) => {}
                () = sleep_until(inherited_until) => {
                    inherited_until = None;
                    self.log_inherited(inherited.elapsed());
                }
                () = watch.changed(), if self.shutdown.is_none() => match watch.read_snapshot() {
                    Ok((reading, snapshot)) => {
                        let new = reading.role;
                        if new != role {
                            self.log_role(new.as_ref());
                        }
                        self.renewal.read(reading.renewal, Instant::now());
                        // Only a new update of the file settles an inherited role, not a re-read.
                        if snapshot != seen {
                            seen = snapshot;
                            if inherited.is_waiting() {
                                inherited_until = None;
                                self.log_inherited(inherited.changed(&self.leading(new)));
                            }
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

    /// Whether the `leader` role is to be acted on as `standby` now, its renewal having lapsed;
    /// logs when that starts and when a new mark ends it.
    fn follow_renewal(&mut self, role: Option<Role>) -> bool {
        let leader = role.is_some_and(|r| r.is_leader());
        let lapsed = leader && self.renewal.lapsed(Instant::now());
        if lapsed && !self.lapsed {
            tracing::warn!("lock {}: {}", self.lock, lapsed_message(self.renewal.deadline()));
        } else if !lapsed && self.lapsed && leader {
            tracing::info!("lock {}: {}; acting on the leader role again", self.lock, renewed_message(&self.renewal));
        }
        self.lapsed = lapsed;
        lapsed
    }

    fn log_role(&self, role: Option<&Role>) {
        tracing::info!("lock {}: {}", self.lock, describe(role));
    }

    /// The lock as a leadership, when `role` is leader.
    fn leading(&self, role: Option<Role>) -> Vec<Shard> {
        match role {
            Some(Role::Leader { token }) => vec![Shard { lock: self.lock.clone(), token }],
            _ => Vec::new(),
        }
    }

    fn log_inherited(&self, endings: Vec<(Shard, Ending)>) {
        for (held, ending) in endings {
            tracing::info!("lock {}: inherited leader role ({}) {ending}", self.lock, token_text(held.token));
        }
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
        self.child = Some(Child { token, ..Child::new(process) });
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
            child.force_kill();
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

pub(super) async fn wait_child(child: &mut Option<Child>) -> io::Result<ExitStatus> {
    match child {
        Some(child) => child.process.wait().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(shell_exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(shell_exit_code(ExitStatus::from_raw(9)), 137);
    }
}
