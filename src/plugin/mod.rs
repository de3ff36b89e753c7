//! The kubectl plugin `kubectl leaderlock` (docs/contract.md §5.8): read every lock's holder,
//! move leadership on purpose through a `Handover` request, pause and resume a LeaderLock.
//!
//! The plugin only reads LeaderLocks and creates Handovers or patches `spec.paused`; the
//! controller judges and carries out every move, so the plugin needs no etcd access and its
//! users only the RBAC of the chart's optional handover role (§5.6).

/// Loading the kubeconfig (`--kubeconfig`, `KUBECONFIG`, `--context`) or the in-cluster config.
pub mod connect;
/// The one error type of the plugin and the exit status each error maps to.
pub mod error;
/// `pause` and `resume`: merge-patch `spec.paused`, optionally wait for the `Paused` condition.
pub mod pause;
/// `handover` and `step-down`: create a Handover, optionally wait for its final phase.
pub mod request;
/// `status`: every lock's holder, token, candidates and queue, as a table, JSON or YAML.
pub mod status;

pub use error::PluginError;

/// Writes a result line at once (flushed): `--wait` prints the request's name before waiting.
fn print(out: &mut dyn std::io::Write, text: &str) -> Result<(), PluginError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| PluginError::Output { what: "the result".into(), detail: e.to_string() })
}

/// Exit statuses a script can rely on (docs/contract.md §5.8).
pub mod exit {
    /// Success; for `--wait`, the request is `Done`.
    pub const OK: u8 = 0;
    /// The controller refused or superseded the request; stderr has `<phase>: <Reason>: <message>`.
    pub const REFUSED: u8 = 1;
    /// A usage error, or the LeaderLock (or its lock) does not exist.
    pub const USAGE: u8 = 2;
    /// `--timeout` passed before the controller reached a final phase or condition.
    pub const TIMED_OUT: u8 = 3;
    /// The kubeconfig could not be loaded or the apiserver refused or failed a call.
    pub const API: u8 = 4;
}
