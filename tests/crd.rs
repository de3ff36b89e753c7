//! The LeaderLock resource through kubectl against the real apiserver (docs/contract.md §2):
//! the schema accepts what is valid and refuses each kind of mistake with a message
//! that names the field.
mod common;
use common::*;

const VALID: &str = r#"
apiVersion: leaderlock.dev/v1alpha1
kind: LeaderLock
metadata: {name: payments}
spec:
  selector: {matchLabels: {app: payments-worker}}
  locks:
  - name: ledger-writer
  - name: nightly-report
    etcdKey: /legacy/locks/nightly-report
"#;

fn apply(ns: &str, yaml: &str) -> std::process::Output {
    kubectl(&["apply", "-n", ns, "-f", "-"], Some(yaml))
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    for (plural, generated) in leaderlock::resource::crds() {
        let path = format!("{}/crds/leaderlock.dev_{plural}.yaml", env!("CARGO_MANIFEST_DIR"));
        let checked_in = std::fs::read_to_string(&path).unwrap();
        assert!(generated.unwrap() == checked_in, "{path} is stale: run `make crd`");
    }
}

/// kubectl reads the printed YAML with Go's YAML rules, not ours: what the apiserver stores must
/// be the schema and names the Rust types describe, with no string read back as another type.
#[test]
fn the_apiserver_stores_the_crd_the_rust_types_describe() {
    install_crd();
    let stored = kubectl_ok(&["get", "crd", "leaderlocks.leaderlock.dev", "-o", "json"], None);
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let ours = serde_json::to_value(<leaderlock::resource::LeaderLock as kube::CustomResourceExt>::crd()).unwrap();
    let mut changed = Vec::new();
    differences("spec", &ours["spec"], &stored["spec"], &mut changed);
    assert!(changed.is_empty(), "changed on the way through kubectl:\n{}", changed.join("\n"));
}

/// Where `stored` differs from `ours`, ignoring fields only the apiserver adds (e.g. listKind)
/// and how a number is spelled (JSON has one number type: 3600.0 is 3600).
fn differences(path: &str, ours: &serde_json::Value, stored: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Number, Object};
    match (ours, stored) {
        (Object(fields), _) => fields.iter().for_each(|(k, v)| differences(&format!("{path}.{k}"), v, &stored[k], out)),
        (Array(items), Array(stored_items)) if items.len() == stored_items.len() => {
            items.iter().zip(stored_items).enumerate().for_each(|(i, (a, b))| differences(&format!("{path}[{i}]"), a, b, out))
        }
        (Number(a), Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if ours != stored => out.push(format!("{path}: {ours} became {stored}")),
        _ => {}
    }
}

#[test]
fn valid_leaderlock_applies_with_defaults_filled_in() {
    install_crd();
    let ns = namespace("valid-applies");
    let out = apply(&ns, VALID);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ttl = kubectl_ok(&["get", "ll", "payments", "-n", &ns, "-o", "jsonpath={.spec.ttlSeconds}/{.spec.podLabels}"], None);
    assert_eq!(ttl, "15/false", "schema defaults ttlSeconds=15 and podLabels=false");
}

/// Each case: what is wrong, the spec lines, and a fragment the apiserver's message must contain.
const INVALID: &[(&str, &str, &str)] = &[
    ("missing selector", "locks: [{name: a}]", "spec.selector: Required value"),
    ("empty selector", "selector: {}\n  locks: [{name: a}]", "spec.selector: Invalid value"),
    ("no locks", "selector: {matchLabels: {app: x}}\n  locks: []", "spec.locks: Invalid value"),
    ("missing locks", "selector: {matchLabels: {app: x}}", "give exactly one of spec.locks"),
    ("257 locks", "", "spec.locks: Too many: 257"),
    ("both locks and shards", "selector: {matchLabels: {app: x}}\n  locks: [{name: a}]\n  shards: 4", "give exactly one of spec.locks"),
    ("0 shards", "selector: {matchLabels: {app: x}}\n  shards: 0", "spec.shards: Invalid value: 0"),
    ("257 shards", "selector: {matchLabels: {app: x}}\n  shards: 257", "spec.shards: Invalid value: 257"),
    (
        "unknown placement policy",
        "selector: {matchLabels: {app: x}}\n  shards: 4\n  placement: {policy: Random}",
        "spec.placement.policy: Unsupported value",
    ),
    (
        "preferred under Queue",
        "selector: {matchLabels: {app: x}}\n  shards: 4\n  placement: {preferred: {matchLabels: {zone: a}}}",
        "placement.preferred needs policy Spread",
    ),
    (
        "stabilizationSeconds above 3600",
        "selector: {matchLabels: {app: x}}\n  shards: 4\n  placement: {policy: Spread, stabilizationSeconds: 3601}",
        "spec.placement.stabilizationSeconds: Invalid value",
    ),
    ("lock name not DNS-1123", "selector: {matchLabels: {app: x}}\n  locks: [{name: Ledger_Writer}]", "spec.locks[0].name"),
    ("lock name of 51 characters", "", "spec.locks[0].name: Too long"),
    ("duplicate lock names", "selector: {matchLabels: {app: x}}\n  locks: [{name: a}, {name: a}]", "spec.locks[1]: Duplicate value"),
    ("ttlSeconds below 5", "selector: {matchLabels: {app: x}}\n  locks: [{name: a}]\n  ttlSeconds: 4", "spec.ttlSeconds: Invalid value: 4"),
    (
        "ttlSeconds above 3600",
        "selector: {matchLabels: {app: x}}\n  locks: [{name: a}]\n  ttlSeconds: 3601",
        "spec.ttlSeconds: Invalid value: 3601",
    ),
    (
        "relative etcdKey",
        "selector: {matchLabels: {app: x}}\n  locks: [{name: a, etcdKey: legacy/a}]",
        "spec.locks[0].etcdKey: Invalid value",
    ),
    (
        "etcdKey ending in /",
        "selector: {matchLabels: {app: x}}\n  locks: [{name: a, etcdKey: /legacy/}]",
        "spec.locks[0].etcdKey: Invalid value",
    ),
    ("unknown field", "selector: {matchLabels: {app: x}}\n  locks: [{name: a}]\n  ttl: 10", "unknown field \"spec.ttl\""),
    ("ttlSeconds of the wrong type", "selector: {matchLabels: {app: x}}\n  locks: [{name: a}]\n  ttlSeconds: soon", "spec.ttlSeconds"),
];

fn invalid_spec(case: &str, spec: &str) -> String {
    let spec = match case {
        "257 locks" => {
            let locks: Vec<String> = (0..257).map(|i| format!("{{name: l{i}}}")).collect();
            format!("selector: {{matchLabels: {{app: x}}}}\n  locks: [{}]", locks.join(", "))
        }
        "lock name of 51 characters" => format!("selector: {{matchLabels: {{app: x}}}}\n  locks: [{{name: {}}}]", "a".repeat(51)),
        _ => spec.to_string(),
    };
    format!("apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: bad}}\nspec:\n  {spec}\n")
}

#[test]
fn each_kind_of_invalid_spec_is_rejected_naming_the_field() {
    install_crd();
    let ns = namespace("invalid-rejected");
    let mut failures = Vec::new();
    for (case, spec, expected) in INVALID {
        let out = apply(&ns, &invalid_spec(case, spec));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{case}: was accepted"));
        } else if !stderr.contains(expected) {
            failures.push(format!("{case}: message lacks {expected:?}: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let left = kubectl_ok(&["get", "ll", "-n", &ns, "-o", "name"], None);
    assert_eq!(left, "", "no invalid LeaderLock may be stored");
}

#[test]
fn kubectl_get_ll_shows_the_spec_columns() {
    install_crd();
    let ns = namespace("get-columns");
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(VALID));
    let status = r#"{"status":{"lockCount":2,"locks":[{"name":"ledger-writer","holder":"payments-worker-0","fencingToken":"42","candidates":3,"transitions":1}],
      "conditions":[{"type":"Ready","status":"True","reason":"Elected","message":"ok","lastTransitionTime":"2026-11-23T20:01:02Z"}]}}"#;
    kubectl_ok(&["patch", "ll", "payments", "-n", &ns, "--subresource=status", "--type=merge", "-p", status], None);
    let table = kubectl_ok(&["get", "ll", "-n", &ns], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "LOCKS", "HOLDER", "READY", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["payments", "2", "payments-worker-0", "True"]);
}

#[test]
fn status_is_writable_only_through_the_status_subresource() {
    install_crd();
    let ns = namespace("status-subresource");
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(VALID));
    let status = r#"{"status":{"locks":[{"name":"ledger-writer","holder":"intruder"}]}}"#;
    // A patch of the main resource silently drops status: the status subresource owns it.
    kubectl_ok(&["patch", "ll", "payments", "-n", &ns, "--type=merge", "-p", status], None);
    let holder = kubectl_ok(&["get", "ll", "payments", "-n", &ns, "-o", "jsonpath={.status.locks[0].holder}"], None);
    assert_eq!(holder, "", "status changed through the main resource");
    kubectl_ok(&["patch", "ll", "payments", "-n", &ns, "--subresource=status", "--type=merge", "-p", status], None);
    let holder = kubectl_ok(&["get", "ll", "payments", "-n", &ns, "-o", "jsonpath={.status.locks[0].holder}"], None);
    assert_eq!(holder, "intruder");
    // And a status write does not change the spec.
    let spec_patch = r#"{"spec":{"ttlSeconds":99}}"#;
    kubectl_ok(&["patch", "ll", "payments", "-n", &ns, "--subresource=status", "--type=merge", "-p", spec_patch], None);
    let ttl = kubectl_ok(&["get", "ll", "payments", "-n", &ns, "-o", "jsonpath={.spec.ttlSeconds}"], None);
    assert_eq!(ttl, "15");
}

#[test]
fn crd_is_established_with_short_name_and_status_subresource() {
    install_crd();
    let crd = kubectl_ok(&["get", "crd", "leaderlocks.leaderlock.dev", "-o", "json"], None);
    let crd: serde_json::Value = serde_json::from_str(&crd).unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "ll");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    let established = crd["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established);
    let resources = kubectl_ok(&["api-resources", "--api-group=leaderlock.dev", "-o", "name"], None);
    let mut resources: Vec<&str> = resources.lines().collect();
    resources.sort();
    assert_eq!(resources, ["handovers.leaderlock.dev", "leaderlocks.leaderlock.dev"]);
}
