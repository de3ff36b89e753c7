//! The HTTP endpoints (docs/contract.md §5.3): the probes `/healthz` (the process serves) and
//! `/readyz` (200 once connected; the body says `active` or `standby`) on one port, in plain
//! HTTP for the kubelet; `/metrics` on another, over HTTPS to callers the apiserver authenticates
//! and authorizes ([`auth`]), or in plain HTTP to anyone when the operator opts out.
//!
//! ```text
//!  --probe-addr   ──▶ /healthz, /readyz                    (HTTP, no credentials: kubelet probes)
//!  --metrics-addr ──▶ TLS (tls) ──▶ bearer token (auth) ──▶ /metrics    (--metrics-secure, the default)
//!                 └─▶ /metrics                              (HTTP, --metrics-secure=false)
//! ```
//!
//! Served by hyper, which kube and tonic already compile: it parses a request however the
//! client's packets split it. Every connection carries one request (scrapes and probes come
//! seconds apart), so one deadline bounds a connection's whole life, TLS handshake included,
//! and a client that stalls — before, during or after its request — is dropped instead of
//! holding a task.

pub mod auth;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::metrics::Metrics;

/// Failures of the HTTP endpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} for {what}: {source}; choose another {flag}")]
    Bind { addr: SocketAddr, what: &'static str, flag: &'static str, source: std::io::Error },
}

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accepting a connection to the end of the request's headers (TLS handshake included).
    pub header_read: Duration,
    /// From accepting a connection to the last byte of the response; also bounds how long
    /// [`Server::shutdown`] waits for open connections.
    pub request: Duration,
}

impl Default for Timeouts {
    /// A probe or scrape sends its request at once; Prometheus gives up on a scrape after 10 s.
    fn default() -> Self {
        Timeouts { header_read: Duration::from_secs(5), request: Duration::from_secs(10) }
    }
}

/// What one listener serves.
#[derive(Clone)]
pub enum Endpoint {
    /// `/healthz` and `/readyz` in plain HTTP, to anyone: the kubelet's probes carry no
    /// credentials, and the answers say only `ok`, `active` or `standby`.
    Probes,
    /// `/metrics` in plain HTTP to anyone who reaches the port (`--metrics-secure=false`).
    PlainMetrics,
    /// `/metrics` over HTTPS, each caller authenticated and authorized by the apiserver.
    SecureMetrics { tls: Arc<rustls::ServerConfig>, gate: Arc<auth::Gate> },
}

impl Endpoint {
    fn describe(&self) -> (&'static str, &'static str) {
        match self {
            Endpoint::Probes => ("/healthz and /readyz", "--probe-addr"),
            Endpoint::PlainMetrics | Endpoint::SecureMetrics { .. } => ("/metrics", "--metrics-addr"),
        }
    }
}

/// The running endpoint. Dropping it stops accepting connections, like [`Server::shutdown`]
/// without the wait.
pub struct Server {
    addr: SocketAddr,
    /// Cancels the server's token (a child of the caller's) when the server goes.
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves `endpoint` in the background until the server is shut down or
    /// dropped (not on the process's shutdown signal: probes and scrapes are answered until the
    /// controller has finished and resigned).
    pub async fn bind(addr: SocketAddr, endpoint: Endpoint, metrics: Arc<Metrics>, timeouts: Timeouts) -> Result<Server, Error> {
        let (what, flag) = endpoint.describe();
        let bind_error = |source| Error::Bind { addr, what, flag, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared { endpoint, metrics, timeouts });
        let task = tokio::spawn(accept_loop(listener, shared, stop.clone()));
        Ok(Server { addr: bound, stop: stop.drop_guard(), task })
    }

    /// The address actually bound (the port chosen when `addr` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets each open connection finish its request, and returns when all are
    /// closed: at most [`Timeouts::request`] later.
    pub async fn shutdown(self) {
        drop(self.stop);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the HTTP server task ended abnormally");
        }
    }
}

/// The probes and the metrics endpoint of one controller, started and stopped together.
pub struct Endpoints {
    pub probes: Server,
    pub metrics: Server,
}

impl Endpoints {
    /// Stops both, each within [`Timeouts::request`].
    pub async fn shutdown(self) {
        tokio::join!(self.probes.shutdown(), self.metrics.shutdown());
    }
}

/// What every connection of one listener needs.
struct Shared {
    endpoint: Endpoint,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
}

/// Accepts until told to stop, then waits for the open connections.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let connections = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                tokio::spawn(connection(stream, shared.clone(), connections.watcher()));
            }
            // The client gave up before we accepted: nothing is wrong with the listener.
            Err(e) if is_per_connection(&e) => tracing::debug!(error = %e, "a client left before its connection was accepted"),
            // E.g. out of file descriptors: retrying at once would spin a core.
            Err(e) => {
                let pause = backoff.next_pause();
                tracing::warn!(error = %e, retry_in = ?pause, "cannot accept HTTP connections; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionReset)
}

/// Serves one connection's single request (after the TLS handshake on the secure endpoint),
/// within the timeouts.
async fn connection(stream: TcpStream, shared: Arc<Shared>, watcher: Watcher) {
    let timeouts = shared.timeouts;
    let served = async {
        if let Endpoint::SecureMetrics { tls, .. } = &shared.endpoint {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            match tokio::time::timeout(timeouts.header_read, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(stream, shared.clone(), watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(timeout = ?timeouts.header_read, "TLS handshake not done within the timeout"),
            }
        } else {
            serve(stream, shared.clone(), watcher).await;
        }
    };
    if tokio::time::timeout(timeouts.request, served).await.is_err() {
        tracing::debug!(timeout = ?timeouts.request, "HTTP connection dropped: request not done within the timeout");
    }
}

async fn serve<S>(io: S, shared: Arc<Shared>, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read = shared.timeouts.header_read;
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, &request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "HTTP connection closed with an error");
    }
}

/// Status, content type and body of an answer; any method is answered alike.
type Answer = (StatusCode, &'static str, String);

async fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let (status, content_type, body) = match &shared.endpoint {
        Endpoint::SecureMetrics { gate, .. } if path == "/metrics" => {
            let verdict = gate.check(request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes)).await;
            match refusal(&verdict) {
                Some(answer) => answer,
                None => route(&shared.endpoint, path, &shared.metrics),
            }
        }
        endpoint => route(endpoint, path, &shared.metrics),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The answer to a caller the gate did not let in; `None` when it did. Refusals are logged at
/// debug (a misconfigured scraper would flood the log); a failed review, at warn.
fn refusal(verdict: &auth::Verdict) -> Option<Answer> {
    use auth::Verdict::*;
    match verdict {
        Allowed { .. } => None,
        Unauthenticated { reason } => {
            tracing::debug!(%reason, "/metrics: unauthenticated caller");
            Some((
                StatusCode::UNAUTHORIZED,
                "text/plain",
                format!("unauthorized: {reason}; send a Kubernetes token (e.g. a ServiceAccount's) as `Authorization: Bearer <token>`\n"),
            ))
        }
        Forbidden { user, reason } => {
            tracing::debug!(%user, %reason, "/metrics: caller not allowed");
            Some((
                StatusCode::FORBIDDEN,
                "text/plain",
                format!(
                    "forbidden: {user} may not get /metrics; grant it `get` on the non-resource URL /metrics (the chart's <release>-leaderlock-metrics-reader ClusterRole)\n"
                ),
            ))
        }
        Unavailable { reason } => {
            tracing::warn!(%reason, "/metrics: cannot check the caller");
            Some((StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n")))
        }
    }
}

/// The answer for a request path once the caller is let in.
fn route(endpoint: &Endpoint, path: &str, metrics: &Metrics) -> Answer {
    match (endpoint, path) {
        (Endpoint::Probes, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (Endpoint::Probes, "/readyz") => match metrics.not_ready() {
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
            None => (StatusCode::OK, "text/plain", format!("ok: {}\n", if metrics.is_active() { "active" } else { "standby" })),
        },
        (Endpoint::Probes, _) => {
            (StatusCode::NOT_FOUND, "text/plain", "not found; try /healthz or /readyz (/metrics is served on --metrics-addr)\n".into())
        }
        (_, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        (_, _) => {
            (StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics (/healthz and /readyz are served on --probe-addr)\n".into())
        }
    }
}

/// Pause between failed accepts: doubles from 10 ms to 1 s, back to 10 ms after a success.
#[derive(Debug)]
struct AcceptBackoff(backon::ExponentialBackoff);

impl AcceptBackoff {
    const MAX: Duration = Duration::from_secs(1);

    fn start() -> backon::ExponentialBackoff {
        let b = backon::ExponentialBuilder::new().with_min_delay(Duration::from_millis(10)).with_max_delay(Self::MAX);
        backon::BackoffBuilder::build(b.without_max_times())
    }

    fn next_pause(&mut self) -> Duration {
        self.0.next().unwrap_or(Self::MAX)
    }

    fn reset(&mut self) {
        self.0 = Self::start();
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff(Self::start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_whether_this_replica_is_active() {
        let m = Metrics::default();
        assert_eq!(route(&Endpoint::Probes, "/readyz", &m).2, "ok: standby\n");
        m.set_active(true);
        assert_eq!(route(&Endpoint::Probes, "/readyz", &m).2, "ok: active\n");
        assert_eq!(route(&Endpoint::Probes, "/nope", &m).0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn each_port_serves_only_its_own_paths_and_points_to_the_other() {
        let m = Metrics::default();
        let on_probes = route(&Endpoint::Probes, "/metrics", &m);
        assert_eq!(on_probes.0, StatusCode::NOT_FOUND);
        assert!(on_probes.2.contains("--metrics-addr"), "{}", on_probes.2);
        let on_metrics = route(&Endpoint::PlainMetrics, "/healthz", &m);
        assert_eq!(on_metrics.0, StatusCode::NOT_FOUND);
        assert!(on_metrics.2.contains("--probe-addr"), "{}", on_metrics.2);
        assert_eq!(route(&Endpoint::PlainMetrics, "/metrics", &m).0, StatusCode::OK);
    }

    #[test]
    fn a_refused_caller_gets_401_or_403_and_what_to_do() {
        use auth::Verdict;
        let unauthenticated = refusal(&Verdict::Unauthenticated { reason: "no bearer token".into() }).unwrap();
        assert_eq!(unauthenticated.0, StatusCode::UNAUTHORIZED);
        assert!(unauthenticated.2.contains("Authorization: Bearer"), "{}", unauthenticated.2);
        let user = "system:serviceaccount:monitoring:grafana";
        let forbidden = refusal(&Verdict::Forbidden { user: user.into(), reason: "".into() }).unwrap();
        assert_eq!(forbidden.0, StatusCode::FORBIDDEN);
        assert!(forbidden.2.contains(user) && forbidden.2.contains("metrics-reader"), "{}", forbidden.2);
        assert_eq!(refusal(&Verdict::Unavailable { reason: "down".into() }).unwrap().0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refusal(&Verdict::Allowed { user: user.into() }), None);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets_after_a_success() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| (b.next_pause().as_secs_f64() * 1000.0).round() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(10));
    }

    #[test]
    fn readyz_fails_with_the_reason_when_the_controller_serves_nothing() {
        let m = Metrics::default();
        m.set_not_ready("etcd prefix /ll/ is registered to cluster east".into());
        let (status, _, body) = route(&Endpoint::Probes, "/readyz", &m);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: etcd prefix /ll/ is registered to cluster east\n");
    }
}
