//! The HTTP endpoint (SPEC §5): `/metrics`, `/healthz` (the process serves), `/readyz` (200
//! once connected; the body says `active` or `standby`). A minimal HTTP/1.1 responder: three
//! GET routes do not justify a web framework.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Failures of the HTTP endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} for /metrics, /healthz and /readyz: {source}; choose another --http-addr")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds `addr` and serves until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let (status, ctype, body) = route(&String::from_utf8_lossy(&buf[..n]), &metrics);
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(bound)
}

fn route(request: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    match path.split('?').next().unwrap_or("/") {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" => match metrics.not_ready() {
            Some(reason) => ("503 Service Unavailable", "text/plain", format!("not ready: {reason}\n")),
            None => ("200 OK", "text/plain", format!("ok: {}\n", if metrics.is_active() { "active" } else { "standby" })),
        },
        _ => ("404 Not Found", "text/plain", "not found; try /metrics, /healthz or /readyz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_whether_this_replica_is_active() {
        let m = Metrics::default();
        assert_eq!(route("GET /readyz HTTP/1.1\r\n", &m).2, "ok: standby\n");
        m.set_active(true);
        assert_eq!(route("GET /readyz HTTP/1.1\r\n", &m).2, "ok: active\n");
        assert_eq!(route("GET /nope HTTP/1.1\r\n", &m).0, "404 Not Found");
    }

    #[test]
    fn readyz_fails_with_the_reason_when_the_controller_serves_nothing() {
        let m = Metrics::default();
        m.set_not_ready("etcd prefix /ll/ is registered to cluster east".into());
        let (status, _, body) = route("GET /readyz HTTP/1.1\r\n", &m);
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "not ready: etcd prefix /ll/ is registered to cluster east\n");
    }
}
