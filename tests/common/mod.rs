//! Shared helpers for tests against the real control plane started by `hack/cluster.sh`.
//!
//! Every test gets its own namespace; waits are conditions polled until a deadline, never sleeps.
#![allow(dead_code)]

pub mod chart;
pub mod checker;
pub mod clusters;
pub mod controller;
pub mod etcd;
pub mod k8s;

#[allow(unused_imports)] // each test binary uses some of them
pub use controller::{ControllerProcess, Launch, shared_controller};

/// The controller's default etcd root prefix (`--etcd-prefix`).
pub const ROOT: &str = "/leaderlock.dev/";

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Reads an env var that `hack/cluster.sh` writes; fails with the command that provides it.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through `make test` (hack/cluster.sh run -- cargo test)"))
}

/// Runs kubectl with `args`, feeding `stdin` if given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (hack/cluster.sh puts it there)");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs kubectl and returns stdout, panicking with stderr when it fails.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

static CRD: Once = Once::new();

/// Installs the checked-in CRDs (once per test binary) and waits until they are Established.
pub fn install_crd() {
    CRD.call_once(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/");
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", path], None);
        for crd in ["crd/leaderlocks.leaderlock.dev", "crd/handovers.leaderlock.dev"] {
            kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", crd], None);
        }
    });
}

/// Creates a fresh namespace named after the test and returns its name.
pub fn namespace(test: &str) -> String {
    let ns = format!("{}-{}", test.replace('_', "-"), std::process::id());
    let ns: String = ns.chars().take(63).collect();
    kubectl_ok(&["create", "namespace", &ns], None);
    ns
}
