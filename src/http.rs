//! The HTTP endpoint (docs/contract.md §5): `/metrics`, `/healthz` (the process serves),
//! `/readyz` (200 once connected; the body says `active` or `standby`).
//!
//! Served by hyper, which kube and tonic already compile: it parses a request however the
//! client's packets split it. Every connection carries one request (scrapes and probes come
//! seconds apart), so one deadline bounds a connection's whole life and a client that stalls
//! — before, during or after its request — is dropped instead of holding a task.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::metrics::Metrics;

/// Failures of the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} for /metrics, /healthz and /readyz: {source}; choose another --http-addr")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accepting a connection to the end of the request's headers.
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

/// The running endpoint. Dropping it stops accepting connections, like [`Server::shutdown`]
/// without the wait.
pub struct Server {
    addr: SocketAddr,
    /// Cancels the server's token (a child of the caller's) when the server goes.
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves in the background until the server is shut down or dropped (not
    /// on the process's shutdown signal: probes and scrapes are answered until the controller
    /// has finished and resigned).
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>, timeouts: Timeouts) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, metrics, timeouts, stop.clone()));
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

/// Accepts until told to stop, then waits for the open connections.
async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, timeouts: Timeouts, stop: CancellationToken) {
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
                spawn_connection(stream, metrics.clone(), timeouts, &connections);
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

/// Serves one connection's single request, within the timeouts.
fn spawn_connection(stream: TcpStream, metrics: Arc<Metrics>, timeouts: Timeouts, connections: &GracefulShutdown) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(request.uri().path(), &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let connection = connections.watch(connection);
    tokio::spawn(async move {
        match tokio::time::timeout(timeouts.request, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection closed with an error"),
            Err(_) => tracing::debug!(timeout = ?timeouts.request, "HTTP connection dropped: request not done within the timeout"),
        }
    });
}

fn respond(path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = route(path, metrics);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Status, content type and body for a request path; any method is answered alike.
fn route(path: &str, metrics: &Metrics) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match metrics.not_ready() {
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
            None => (StatusCode::OK, "text/plain", format!("ok: {}\n", if metrics.is_active() { "active" } else { "standby" })),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /healthz or /readyz\n".into()),
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
        assert_eq!(route("/readyz", &m).2, "ok: standby\n");
        m.set_active(true);
        assert_eq!(route("/readyz", &m).2, "ok: active\n");
        assert_eq!(route("/nope", &m).0, StatusCode::NOT_FOUND);
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
        let (status, _, body) = route("/readyz", &m);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: etcd prefix /ll/ is registered to cluster east\n");
    }
}
