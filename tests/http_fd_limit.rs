//! The HTTP endpoint out of file descriptors (docs/contract.md §5): accepting fails with
//! EMFILE until a descriptor frees up. The server must wait between attempts instead of
//! spinning a core, and serve again once descriptors are back. Its own test binary: it lowers
//! the whole process's descriptor limit.
use std::sync::Arc;
use std::time::Duration;

use leaderlock::http::{Endpoint, Server, Timeouts};
use leaderlock::metrics::Metrics;
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let micros = |t: nix::sys::time::TimeVal| Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64);
    micros(usage.user_time()) + micros(usage.system_time())
}

/// Descriptors open now (the directory listing's own descriptor excluded).
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_and_recovers() {
    let server =
        Server::bind("127.0.0.1:0".parse().unwrap(), Endpoint::Probes, Arc::new(Metrics::default()), Timeouts::default()).await.unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Room for exactly one more descriptor: the client's socket takes it, so the server's
    // accept of that very connection fails with EMFILE.
    setrlimit(Resource::RLIMIT_NOFILE, open_descriptors() + 1, hard).unwrap();
    let client = TcpStream::connect(server.local_addr()).await;
    let before = cpu_time();
    // The measurement window, not a synchronisation: the server's accept keeps failing in it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burnt = cpu_time() - before;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let mut client = client.expect("the client's socket fits under the lowered limit");
    assert!(burnt < Duration::from_millis(300), "the process used {burnt:?} of CPU in 2 s while accept failed");

    client.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut response))
        .await
        .expect("no answer after descriptors were available again")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}
