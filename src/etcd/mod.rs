//! etcd access, shaped like etcd's own `client/v3/concurrency` package:
//!
//! * [`client`] — connecting (TLS, auth) and single calls bounded by a timeout, with retries;
//! * [`session`] — one lease kept alive by a renewal policy, with one signal when it is lost
//!   and one while it is at risk of expiring;
//! * [`election`] — which controller replica is active: etcd's election recipe on a session;
//! * [`lease_pool`] — the candidate keys' leases: one session per TTL value, recorded in etcd
//!   and adopted by the next controller;
//! * [`mutex`] — etcd's mutex recipe as transactions: a guarded create, a guarded delete;
//! * [`mirror`] — one watch stream over the root prefix (and allowed external prefixes) keeping
//!   an in-memory copy of every lock key at a known revision: waiters wait on it, never on a timer;
//! * [`engine`] — applies the pure [`crate::lock`] decision through [`mutex`], reads holders from
//!   the [`mirror`];
//! * [`ownership`] — whose key is it when several clusters share one etcd (pure);
//! * [`registration`] — the root registered to one cluster with one guarded create.
//!
//! Which keys exist and which the controller may touch is pure: [`crate::keyspace`].
//! Every call is bounded by a timeout; transient failures are retried with backoff.

pub mod client;
pub mod election;
pub mod engine;
pub mod lease_pool;
pub mod mirror;
pub mod mutex;
pub mod ownership;
pub mod registration;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{Backoff, EtcdConfig, call, connect, retry};

/// Failures at the etcd boundary. Messages say what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach etcd at {endpoints}: {source}; check --etcd-endpoints and that etcd is running")]
    Connect { endpoints: String, source: etcd_client::Error },
    #[error("etcd {op} failed: {source}")]
    Call { op: &'static str, source: etcd_client::Error },
    #[error("etcd {op} timed out after {timeout:?}; etcd may be overloaded or unreachable")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("etcd refused {op}: {source}; check --etcd-username/--etcd-password and the user's permissions on the LeaderLock prefixes")]
    Denied { op: &'static str, source: etcd_client::Error },
    #[error("cannot read {what} {path}: {source}")]
    TlsFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    KeyNotAllowed(#[from] crate::keyspace::KeyNotAllowed),
    #[error("lease {lease} expired: the keys attached to it are gone")]
    LeaseLost { lease: i64 },
    /// A stream etcd keeps open ended: the mirror's watch, a lease's keep-alive, the election's
    /// watch or campaign; each is re-established by its owner.
    #[error("the etcd {stream} stream ended: {detail}")]
    StreamEnded { stream: &'static str, detail: String },
    #[error("etcd {op} found the lock's keys changed since they were read; it is retried from the new keys")]
    Raced { op: &'static str },
}

impl Error {
    /// Whether retrying the same call may succeed (etcd unreachable, leader election, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Connect { .. } | Error::StreamEnded { .. } | Error::Raced { .. } => true,
            Error::Call { source, .. } => is_transient(source),
            _ => false,
        }
    }

    /// etcd no longer knows the lease a write named: it expired or was revoked, and every key on
    /// it is gone — the owner must start over on a new lease.
    pub fn is_lease_not_found(&self) -> bool {
        matches!(self, Error::Call { source: etcd_client::Error::GRpcStatus(s), .. }
            if s.code() == tonic::Code::NotFound && s.message().contains("lease not found"))
    }
}

fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown | Code::Internal | Code::ResourceExhausted
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// Wrong credentials or missing permissions: retrying cannot help, the operator must act.
/// (etcd reports a bad password as InvalidArgument "authentication failed".)
pub(crate) fn is_denied(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
            || s.message().contains("authentication failed"))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Error;

    fn status(code: tonic::Code, message: &str) -> Error {
        Error::Call { op: "txn", source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, message)) }
    }

    #[test]
    fn a_write_on_a_lease_etcd_no_longer_knows_means_start_over_not_retry() {
        let gone = status(tonic::Code::NotFound, "etcdserver: requested lease not found");
        assert!(gone.is_lease_not_found() && !gone.is_transient());
        assert!(!status(tonic::Code::NotFound, "etcdserver: key not found").is_lease_not_found());
    }

    #[test]
    fn unavailable_etcd_is_transient_and_denied_is_not() {
        assert!(status(tonic::Code::Unavailable, "etcdserver: no leader").is_transient());
        assert!(!status(tonic::Code::PermissionDenied, "etcdserver: permission denied").is_transient());
    }
}
