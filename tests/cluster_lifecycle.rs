//! `hack/cluster.sh run` leaves no process behind, whether the command it runs ends, is
//! interrupted (Ctrl-C), or the script itself is killed with SIGKILL; and no state dir for long.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Starts a nested control plane whose command just waits; returns the script, its state dir
/// and the pids of the servers it started.
fn start_nested() -> (std::process::Child, PathBuf, Vec<u32>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/cluster.sh");
    let mut child = Command::new(script)
        .args(["run", "--", "bash", "-c", "echo DIR=$LEADERLOCK_CLUSTER_DIR; exec sleep 600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0) // its own group, like a job in a terminal
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let dir = loop {
        let l = lines.next().expect("cluster.sh printed no DIR line").unwrap();
        if let Some(d) = l.strip_prefix("DIR=") {
            break PathBuf::from(d);
        }
    };
    let pids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "pid").then(|| std::fs::read_to_string(&p).ok()?.trim().parse().ok())?
        })
        .collect();
    assert_eq!(pids.len(), 4, "two etcds, kube-apiserver, kube-controller-manager");
    assert!(pids.iter().all(|p| alive(*p)));
    (child, dir, pids)
}

#[test]
fn interrupting_a_run_stops_every_server_and_removes_its_data() {
    let (mut child, dir, pids) = start_nested();
    // SIGINT to the script (a terminal's Ctrl-C also reaches the servers, which then stop on
    // their own; the script's trap must work without that help).
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let _ = child.wait();
    wait_until("every server to stop", Duration::from_secs(20), || pids.iter().all(|p| !alive(*p)).then_some(()));
    wait_until("the state dir to be removed", Duration::from_secs(5), || (!dir.exists()).then_some(()));
}

#[test]
fn killing_the_script_with_sigkill_still_leaves_no_server_running() {
    let (mut child, dir, pids) = start_nested();
    child.kill().unwrap(); // SIGKILL: no trap runs; the parent-death signal must do the job
    let _ = child.wait();
    wait_until("every server to die with its parent", Duration::from_secs(20), || pids.iter().all(|p| !alive(*p)).then_some(()));
    // Nothing could remove the state dir (~250 MB of etcd data): the next run reaps it once it
    // is 2 minutes old, while the live control plane this test runs under is left alone.
    assert!(dir.exists());
    let aged = Command::new("touch").args(["-d", "5 minutes ago"]).arg(&dir).status().unwrap();
    assert!(aged.success());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/cluster.sh");
    let next = Command::new(script).args(["run", "--", "true"]).stderr(Stdio::null()).status().unwrap();
    assert!(next.success());
    assert!(!dir.exists(), "the next run removes a killed run's state dir");
    let outer = std::env::var("LEADERLOCK_CLUSTER_DIR").expect("run under hack/cluster.sh");
    assert!(Path::new(&outer).join("kubeconfig").exists(), "a live run's state dir is kept");
}
