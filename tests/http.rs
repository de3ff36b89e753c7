//! The HTTP endpoints (docs/contract.md §5.3) as a client meets them: the real servers on
//! loopback ports, spoken to over raw TCP so each test controls exactly what arrives and when —
//! the probes, and /metrics in plain HTTP (`--metrics-secure=false`); tests/metrics_auth.rs
//! covers HTTPS and its callers' authentication on the real control plane. Needs no control
//! plane.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leaderlock::http::{Endpoint, Server, Timeouts};
use leaderlock::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any timeout under test: a read still pending after this never ends.
const DEADLINE: Duration = Duration::from_secs(10);

/// The probes' endpoint.
async fn start(timeouts: Timeouts) -> Server {
    start_endpoint(Endpoint::Probes, timeouts).await
}

async fn start_endpoint(endpoint: Endpoint, timeouts: Timeouts) -> Server {
    Server::bind("127.0.0.1:0".parse().unwrap(), endpoint, Arc::new(Metrics::default()), timeouts).await.unwrap()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    // Each write leaves as its own segment, so a pause between writes splits the request.
    stream.set_nodelay(true).unwrap();
    stream
}

/// Everything the server sends until it closes the connection; fails after [`DEADLINE`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // Reset instead of closed: the server dropped the connection all the same.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading the response: {e}"),
        Err(_) => panic!("the server kept the connection open for {DEADLINE:?}"),
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = connect(addr).await;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn each_route_answers_with_its_status_and_body_on_its_own_port() {
    let probes = start(Timeouts::default()).await;
    let addr = probes.local_addr();
    let healthz = get(addr, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n") && healthz.ends_with("\r\n\r\nok\n"), "{healthz}");
    let readyz = get(addr, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200 OK\r\n") && readyz.ends_with("\r\n\r\nok: standby\n"), "{readyz}");
    let other = get(addr, "/").await;
    assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n") && other.contains("try /healthz or /readyz"), "{other}");
    let no_metrics = get(addr, "/metrics").await;
    assert!(no_metrics.starts_with("HTTP/1.1 404 Not Found\r\n") && no_metrics.contains("--metrics-addr"), "{no_metrics}");

    let plain = start_endpoint(Endpoint::PlainMetrics, Timeouts::default()).await;
    let metrics = get(plain.local_addr(), "/metrics?name=x").await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(metrics.to_lowercase().contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{metrics}");
    assert!(metrics.contains("\nleaderlock_active 0\n"), "{metrics}");
    let no_probe = get(plain.local_addr(), "/healthz").await;
    assert!(no_probe.starts_with("HTTP/1.1 404 Not Found\r\n") && no_probe.contains("--probe-addr"), "{no_probe}");
}

#[tokio::test]
async fn a_request_split_across_packets_is_answered() {
    let server = start(Timeouts::default()).await;
    let mut stream = connect(server.local_addr()).await;
    stream.write_all(b"GET /read").await.unwrap();
    // The pause is the scenario: the server sees the first packet alone before the rest exists.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"yz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let response = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\nok: standby\n"), "{response}");
}

#[tokio::test]
async fn a_silent_client_delays_no_one_and_is_dropped_after_the_header_timeout() {
    let timeouts = Timeouts { header_read: Duration::from_secs(1), request: Duration::from_secs(5) };
    let server = start(timeouts).await;
    let addr = server.local_addr();
    let connected = Instant::now();
    let mut silent = connect(addr).await;

    let healthz = get(addr, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");
    assert!(connected.elapsed() < timeouts.header_read, "answered only after the silent client was dropped");

    let said = read_until_closed(&mut silent).await;
    let held = connected.elapsed();
    assert!(held >= timeouts.header_read, "dropped after {held:?}, before the header timeout");
    assert!(!said.contains("200 OK"), "{said}");
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_dropped_after_the_header_timeout() {
    let timeouts = Timeouts { header_read: Duration::from_millis(500), request: Duration::from_secs(5) };
    let server = start(timeouts).await;
    let mut slow = connect(server.local_addr()).await;
    let connected = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // One header byte every 50 ms: always active, never done. Stops when the server hangs up.
    for byte in b"X-Slow: ".iter().cycle() {
        if connected.elapsed() > DEADLINE {
            panic!("the server still read a dribbling client after {DEADLINE:?}");
        }
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = connected.elapsed();
    assert!(held >= timeouts.header_read, "dropped after {held:?}, before the header timeout");
    assert!(held < timeouts.request, "held for {held:?}: the header timeout did not apply");
}

#[tokio::test]
async fn shutdown_waits_for_stalled_clients_at_most_the_request_timeout_and_stops_listening() {
    let timeouts = Timeouts { header_read: Duration::from_secs(30), request: Duration::from_millis(800) };
    let server = start(timeouts).await;
    let addr = server.local_addr();
    let mut idle = connect(addr).await;
    let mut stalled = connect(addr).await;
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: te").await.unwrap();
    let answered = get(addr, "/healthz").await;
    assert!(answered.starts_with("HTTP/1.1 200 OK\r\n"), "{answered}");

    let started = Instant::now();
    tokio::time::timeout(DEADLINE, server.shutdown()).await.expect("shutdown did not complete");
    let took = started.elapsed();
    assert!(took < timeouts.request + Duration::from_secs(1), "shutdown took {took:?}");

    read_until_closed(&mut idle).await;
    read_until_closed(&mut stalled).await;
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting connections after shutdown");
}
