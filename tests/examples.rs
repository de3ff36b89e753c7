//! The files under examples/ are valid against the real apiserver (server-side dry run), and
//! `leaderlock copy-self` (the examples' init container) produces a working binary.
mod common;
use common::*;

#[test]
fn every_example_is_accepted_by_the_apiserver() {
    install_crd();
    let ns = namespace("examples");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let out = kubectl(&["apply", "--dry-run=server", "-n", &ns, "-f", dir], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "leaderlock.leaderlock.dev/payments",
        "leaderlock.leaderlock.dev/ledger",
        "deployment.apps/ledger-worker",
        "service/ledger-leader",
        "pod/payments-worker-1",
    ] {
        assert!(applied.contains(kind), "{kind} missing from: {applied}");
    }
}

#[test]
fn copy_self_installs_a_runnable_leaderlock() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("leaderlock");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_leaderlock")).arg("copy-self").arg(&dest).status().unwrap();
    assert!(st.success());
    let out = std::process::Command::new(&dest).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("leaderlock "));
}
