//! Reaching etcd: connecting with TLS and user/password auth, and single calls bounded by a
//! timeout whose errors are classified (transient, denied), retried with backoff where that can
//! help.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::{Error, Result, is_denied};

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

/// Exponential backoff from 50 ms to 5 s, for transient failures only (backon's, no jitter:
/// one controller per cluster talks to etcd, there is no herd to spread).
#[derive(Debug)]
pub struct Backoff(backon::ExponentialBackoff);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn builder() -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::new().with_min_delay(Self::FIRST).with_max_delay(Self::MAX).without_max_times()
    }

    /// The delay before the next attempt; doubles each time up to 5 s.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(Self::MAX)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff(backon::BackoffBuilder::build(Self::builder()))
    }
}

/// Retries `f` on transient errors with [`Backoff`]'s delays for at most `attempts` attempts.
pub async fn retry<T, F, Fut>(attempts: u32, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use backon::Retryable;
    let times = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    f.retry(Backoff::builder().with_max_times(times))
        .when(Error::is_transient)
        .notify(|e, _| tracing::debug!(error = %e, "transient etcd failure, retrying"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_backoff_doubles_from_50_ms_to_5_s() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| (b.next_delay().as_secs_f64() * 1000.0).round() as u64).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[tokio::test]
    async fn retry_gives_up_after_its_attempts_and_never_retries_what_is_not_transient() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let transient = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(Error::Timeout { op: "get", timeout: Duration::from_secs(1) })
        };
        assert!(retry(3, transient).await.is_err());
        assert_eq!(calls.swap(0, std::sync::atomic::Ordering::SeqCst), 3);
        let fatal = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(Error::LeaseLost { lease: 7 })
        };
        assert!(retry(3, fatal).await.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
