//! etcd access, shaped like etcd's own `client/v3/concurrency` package:
//!
//! * [`session`] — the lease owner: one controller-owned lease per TTL, kept alive, adopted by
//!   the next instance, and a signal when a lease is lost;
//! * [`mirror`] — one watch stream over the root prefix (and allowed external prefixes) keeping
//!   an in-memory copy of every lock key at a known revision: waiters wait on it, never on a timer;
//! * [`engine`] — applies the pure [`crate::lock`] decision: a one-transaction guarded create,
//!   a one-delete leave.
//!
//! Every call is bounded by a timeout; transient failures are retried with backoff.

pub mod election;
pub mod engine;
pub mod mirror;
pub mod session;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

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
    #[error(
        "etcdKey {key} is not allowed: use a key under {own} or under an --allowed-key-prefix (now: [{allowed}]); ask the operator to allow its prefix"
    )]
    KeyNotAllowed { key: String, own: String, allowed: String },
    #[error("lease {lease} expired: the keys attached to it are gone")]
    LeaseLost { lease: i64 },
    #[error("the etcd watch ended: {0}")]
    WatchEnded(String),
}

impl Error {
    /// Whether retrying the same call may succeed (etcd unreachable, leader election, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Connect { .. } | Error::WatchEnded(_) => true,
            Error::Call { source, .. } => is_transient(source),
            _ => false,
        }
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
fn is_denied(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
            || s.message().contains("authentication failed"))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach etcd. Mirrors the controller's `--etcd-*` flags.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Upper bound for every single etcd call.
    pub call_timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            call_timeout: Duration::from_secs(5),
        }
    }
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::TlsFile { what, path: path.clone(), source })
}

/// Connects with TLS and user/password auth as configured. The underlying channel reconnects
/// by itself after etcd restarts; callers retry individual calls with [`retry`].
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.call_timeout)
        .with_timeout(cfg.call_timeout)
        .with_keep_alive(Duration::from_secs(10), cfg.call_timeout)
        .with_keep_alive_while_idle(true);
    if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("etcd CA file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(read("etcd client certificate", cert)?, read("etcd client key", key)?));
        }
        opts = opts.with_tls(tls);
    }
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(user.clone(), password.clone());
    }
    let endpoints = cfg.endpoints.join(",");
    let client = tokio::time::timeout(cfg.call_timeout, Client::connect(&cfg.endpoints, Some(opts)))
        .await
        .map_err(|_| Error::Timeout { op: "connect", timeout: cfg.call_timeout })?
        .map_err(|source| match is_denied(&source) {
            true => Error::Denied { op: "authenticate", source },
            false => Error::Connect { endpoints: endpoints.clone(), source },
        })?;
    // The channel connects lazily; one cheap read proves the endpoints and credentials work.
    let mut probe = client.clone();
    match call("status", cfg.call_timeout, probe.status()).await {
        Err(Error::Call { source, .. }) => Err(Error::Connect { endpoints, source }),
        other => other.map(|_| client),
    }
}

/// Runs one etcd call bounded by `timeout`, classifying its error.
pub async fn call<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(Error::Timeout { op, timeout }),
        Ok(Err(source)) if is_denied(&source) => Err(Error::Denied { op, source }),
        Ok(Err(source)) => Err(Error::Call { op, source }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Exponential backoff from 50 ms to 5 s, for transient failures only.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Duration::from_millis(50) }
    }
}

impl Backoff {
    /// The delay before the next attempt; doubles each time up to 5 s.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }
}

/// Retries `f` on transient errors with [`Backoff`] for at most `attempts` attempts.
pub async fn retry<T, F, Fut>(attempts: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::default();
    let mut tried = 0;
    loop {
        tried += 1;
        match f().await {
            Err(e) if e.is_transient() && tried < attempts => {
                tracing::debug!(error = %e, "transient etcd failure, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}
