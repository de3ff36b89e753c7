//! The command line (docs/contract.md §5): `--help` names every flag and its env var, bad flags and an
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
        ("--probe-addr", "LEADERLOCK_PROBE_ADDR"),
        ("--metrics-addr", "LEADERLOCK_METRICS_ADDR"),
        ("--metrics-secure", "LEADERLOCK_METRICS_SECURE"),
        ("--metrics-cert-file", "LEADERLOCK_METRICS_CERT_FILE"),
        ("--metrics-key-file", "LEADERLOCK_METRICS_KEY_FILE"),
        ("--election-ttl", "LEADERLOCK_ELECTION_TTL"),
        ("--cluster-id", "LEADERLOCK_CLUSTER_ID"),
        ("--log-format", "LEADERLOCK_LOG_FORMAT"),
        ("--log-level", "LEADERLOCK_LOG_LEVEL"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} missing from --help:\n{help}");
    }
    let top = String::from_utf8(leaderlock(&["--help"]).stdout).unwrap();
    for sub in ["controller", "crd", "role", "wait", "run", "shards", "copy-self"] {
        assert!(top.contains(sub), "subcommand {sub} missing from --help");
    }
}

/// The contract names every flag and env var users can set: a new flag without a line in
/// docs/contract.md fails here.
#[test]
fn every_flag_and_env_var_in_help_is_in_the_contract() {
    let contract = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract.md")).unwrap();
    for sub in ["controller", "role", "wait", "run", "shards", "copy-self", "crd"] {
        let help = String::from_utf8(leaderlock(&[sub, "--help"]).stdout).unwrap();
        let words = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        for name in words.filter(|w| (w.starts_with("--") && w.len() > 2) || w.starts_with("LEADERLOCK_")) {
            if name == "--help" {
                continue;
            }
            assert!(contract.contains(name), "`leaderlock {sub} --help` names {name}, docs/contract.md does not");
        }
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

/// The forms `--grace-period` has always taken; every duration flag takes them all.
const DURATION_FORMS: [&str; 5] = ["500ms", "1.5s", "2m", "1h", "3"];

#[test]
fn etcd_timeout_takes_the_same_duration_forms_as_grace_period() {
    for form in DURATION_FORMS {
        let out = leaderlock(&["controller", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-timeout", form, "--election-ttl", "2"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("invalid value"), "--etcd-timeout {form} refused: {stderr}");
        assert!(stderr.contains("etcd"), "got past flag parsing to etcd with --etcd-timeout {form}: {stderr}");
    }
}

#[test]
fn every_duration_flag_says_the_syntax_in_help_and_refuses_a_bad_value_with_it() {
    let role_file: &[&str] = &["--lock", "l"];
    for (sub, flag, rest) in [
        ("controller", "--etcd-timeout", &[][..]),
        ("controller", "--election-ttl", &[][..]),
        ("wait", "--timeout", role_file),
        ("run", "--grace-period", &["--lock", "l", "--", "true"][..]),
        ("shards", "--grace-period", &["--shards-file", "/tmp/s", "--", "true"][..]),
    ] {
        let help = String::from_utf8(leaderlock(&[sub, "--help"]).stdout).unwrap();
        let line = help.lines().find(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag} not in {sub} --help"));
        assert!(line.contains("<DURATION>"), "{sub} {flag}: {line}");
        assert!(help.contains("500ms, 10s, 1.5m or 2h"), "{sub} --help does not give the duration syntax:\n{help}");

        let out = leaderlock(&[&[sub, flag, "soon"][..], rest].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub} {flag} soon: {stderr}");
        assert!(stderr.contains("\"soon\" is not a duration") && stderr.contains("500ms, 10s, 1.5m or 2h"), "{sub} {flag}: {stderr}");
    }
}

fn kubectl_leaderlock(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-leaderlock")).args(args).envs(envs.iter().copied()).output().unwrap()
}

const PLUGIN_COMMANDS: [&str; 5] = ["status", "handover", "step-down", "pause", "resume"];

/// The plugin's `--help`s name nothing the contract (§5.8) does not, and each states the exit
/// statuses and gives an example.
#[test]
fn every_flag_in_the_plugins_help_is_in_the_contract() {
    let contract = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract.md")).unwrap();
    let top = String::from_utf8(kubectl_leaderlock(&["--help"], &[]).stdout).unwrap();
    for sub in PLUGIN_COMMANDS {
        assert!(top.contains(sub), "command {sub} missing from `kubectl leaderlock --help`:\n{top}");
    }
    assert!(top.contains("Exit status:") && top.contains("KUBECONFIG"), "{top}");
    for sub in [None].into_iter().chain(PLUGIN_COMMANDS.map(Some)) {
        let args: Vec<&str> = sub.into_iter().chain(["--help"]).collect();
        let help = String::from_utf8(kubectl_leaderlock(&args, &[]).stdout).unwrap();
        let words = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        for name in words.filter(|w| (w.starts_with("--") && w.len() > 2) || w.starts_with("LEADERLOCK_") || *w == "KUBECONFIG") {
            if name == "--help" {
                continue;
            }
            assert!(contract.contains(name), "`kubectl leaderlock {} --help` names {name}, docs/contract.md does not", sub.unwrap_or(""));
        }
        if let Some(sub) = sub {
            assert!(help.contains("Exit status") && help.contains(&format!("kubectl leaderlock {sub} ")), "{sub} --help:\n{help}");
        }
    }
}

#[test]
fn the_plugin_refuses_bad_flags_with_2_and_an_unreadable_kubeconfig_with_4() {
    let out = kubectl_leaderlock(&["handover", "payments", "--wait", "--timeout", "soon"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"soon\" is not a duration") && stderr.contains("500ms, 10s, 1.5m or 2h"), "{stderr}");
    let out = kubectl_leaderlock(&["status", "-A", "payments"], &[]);
    assert_eq!(out.status.code(), Some(2), "-A and NAME: {}", String::from_utf8_lossy(&out.stderr));

    for (args, envs) in [
        (&["status", "--kubeconfig", "/nonexistent/kubeconfig"][..], &[][..]),
        (&["status", "--context", "somewhere"][..], &[("KUBECONFIG", "/nonexistent/kubeconfig")][..]),
    ] {
        let out = kubectl_leaderlock(args, envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot load the kubeconfig") && stderr.contains("check --kubeconfig, KUBECONFIG and --context"),
            "{stderr}"
        );
    }
}
