//! The chart as the pinned helm renders it.

use std::process::Command;

use serde_json::Value;

use super::env;

/// The chart in this repository.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/leaderlock");

/// `helm template` of the chart (the pinned helm, state dirs in a temp dir) for `release` in `ns`.
pub fn render(release: &str, ns: &str, sets: &[&str]) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let mut args = vec!["template", release, CHART, "--namespace", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(format!("{}/helm", env("LEADERLOCK_HELM_BIN_DIR")))
        .args(&args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{text}"))
}
