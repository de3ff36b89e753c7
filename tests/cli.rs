//! The command line (SPEC §5): `--help` names every flag and its env var, bad flags and an
//! unreachable etcd fail with messages that say what to do, and logs can be JSON.
use std::process::Command;

fn leaderlock(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leaderlock")).args(args).env_remove("LEADERLOCK_ETCD_ENDPOINTS").output().unwrap()
}

#[test]
fn controller_help_lists_every_flag_with_its_env_var() {
    let help = String::from_utf8(leaderlock(&["controller", "--help"]).stdout).unwrap();
    for (flag, env) in [
        ("--etcd-endpoints", "LEADERLOCK_ETCD_ENDPOINTS"),
        ("--etcd-ca-file", "LEADERLOCK_ETCD_CA_FILE"),
        ("--etcd-cert-file", "LEADERLOCK_ETCD_CERT_FILE"),
        ("--etcd-key-file", "LEADERLOCK_ETCD_KEY_FILE"),
        ("--etcd-username", "LEADERLOCK_ETCD_USERNAME"),
        ("--etcd-password", "LEADERLOCK_ETCD_PASSWORD"),
        ("--etcd-prefix", "LEADERLOCK_ETCD_PREFIX"),
        ("--allowed-key-prefix", "LEADERLOCK_ALLOWED_KEY_PREFIXES"),
        ("--etcd-timeout", "LEADERLOCK_ETCD_TIMEOUT"),
        ("--instance", "POD_NAME"),
        ("--namespace", "LEADERLOCK_NAMESPACE"),
        ("--max-concurrent-reconciles", "LEADERLOCK_MAX_CONCURRENT_RECONCILES"),
        ("--http-addr", "LEADERLOCK_HTTP_ADDR"),
        ("--election-ttl", "LEADERLOCK_ELECTION_TTL"),
        ("--log-format", "LEADERLOCK_LOG_FORMAT"),
        ("--log-level", "LEADERLOCK_LOG_LEVEL"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} missing from --help:\n{help}");
    }
    let top = String::from_utf8(leaderlock(&["--help"]).stdout).unwrap();
    for sub in ["controller", "crd", "role", "wait", "run", "copy-self"] {
        assert!(top.contains(sub), "subcommand {sub} missing from --help");
    }
}

#[test]
fn an_etcd_prefix_without_slashes_is_refused_with_the_rule() {
    let out = leaderlock(&["controller", "--etcd-prefix", "leaderlock"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start and end with '/'"));
}

#[test]
fn an_unreachable_etcd_fails_fast_with_a_json_log_line_that_says_what_to_check() {
    let out = leaderlock(&["controller", "--log-format", "json", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", "1s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("ERROR")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "ERROR");
    let msg = v["fields"]["message"].as_str().unwrap();
    assert!(msg.contains("etcd") && (msg.contains("--etcd-endpoints") || msg.contains("timed out")), "{msg}");
}
