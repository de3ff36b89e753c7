//! On a real node — kubelet and containerd on this machine, nothing played: the chart installed
//! with the image built here, the examples running their job through `leaderlock run` in a
//! busybox-only image, each pod reading its role from the file its kubelet projects, a
//! graceful failover seen by the jobs and the leader-only Service, and a forged `leader` on a
//! standby refused by the chart's admission policy before the kubelet can see it (and, with the
//! policy's binding deleted, reverted by the controller: how long, and whether the kubelet
//! projected it meanwhile).
//!
//! It needs the node of `LEADERLOCK_NODE=1 hack/cluster.sh run` (`make test` runs it that way);
//! outside it the test is reported as ignored, never passed.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "e2e/forgery.rs"]
mod forgery;

const CHART_NS: &str = "leaderlock-system";
const NS: &str = "e2e";
const LOCK: &str = "ledger-writer";
/// How long a condition that depends on a downward-API file may take. The kubelet usually
/// projects an annotation change within 1.2 s, but a race in its volume manager sometimes loses
/// the change until the pod's next periodic sync, up to 1.5 × `syncFrequency` later (README,
/// "When the kubelet loses a role change"). The node runs with 5 s; the bound allows the
/// kubelet's default of 1 min too: the test asserts what happens, not how fast (the benchmark
/// reports that).
const FILE_SECS: u64 = 150;
const JOB_LINE: &str = "writing the ledger with fencing token ";

#[test]
#[ignore = "needs a real node: LEADERLOCK_NODE=1 hack/cluster.sh run -- cargo test --test e2e -- --ignored (make test runs it)"]
fn chart_and_examples_run_on_a_real_node() {
    let node = Node::from_env();
    node.import_images();
    dockerfile_describes_the_image(&node);
    install_chart(&node);
    run_examples();
    let first = converged_holder();
    let (holder, token) = graceful_failover(&first);
    let pods = names(json(&["get", "pods", "-n", NS, "-l", "app=ledger-worker"])["items"].as_array().unwrap());
    let standby = pods.iter().find(|p| **p != holder).unwrap();
    forgery::refused_with_the_policy_and_reverted_without(&node.dir, NS, LOCK, standby);
    assert_eq!(converged_holder(), (holder, token), "the forgeries moved nothing");
}

/// What `hack/cluster.sh` with a node exported.
struct Node {
    dir: PathBuf,
    containerd: String,
    pod_etcd: String,
    api_host: String,
    api_port: String,
}

impl Node {
    fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run this test inside LEADERLOCK_NODE=1 hack/cluster.sh run"))
        };
        Node {
            dir: PathBuf::from(var("LEADERLOCK_NODE_DIR")),
            containerd: var("CONTAINERD_ADDRESS"),
            pod_etcd: var("LEADERLOCK_POD_ETCD_ENDPOINTS"),
            api_host: var("LEADERLOCK_POD_APISERVER_HOST"),
            api_port: var("LEADERLOCK_POD_APISERVER_PORT"),
        }
    }

    /// Builds the leaderlock and busybox images (hack/image.sh) and imports them into the
    /// kubelet's containerd namespace: no registry is involved.
    fn import_images(&self) {
        let out_dir = self.dir.join("images");
        for kind in ["leaderlock", "busybox"] {
            // What this test checks needs a working image, not a fast one (make e2e measures).
            run(Command::new(repo().join("hack/image.sh")).arg(kind).arg(&out_dir).env("LEADERLOCK_IMAGE_PROFILE", "image-test"));
            let tar = out_dir.join(format!("{kind}.tar"));
            run(Command::new("ctr").args(["-a", &self.containerd, "-n", "k8s.io", "images", "import"]).arg(&tar));
        }
    }
}

/// The Dockerfile's final stage and the image built here (hack/image.sh) hold the same content:
/// the static /leaderlock and /kubectl-leaderlock, the same user, entrypoint and command.
fn dockerfile_describes_the_image(node: &Node) {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stage = &dockerfile[dockerfile.rfind("\nFROM ").expect("a FROM line")..];
    let directive = |name: &str| {
        let prefix = format!("{name} ");
        stage.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::trim).unwrap_or_else(|| panic!("no {name} in the final stage"))
    };
    assert_eq!(directive("FROM"), "scratch", "the final stage adds nothing but the binary");
    let copies: Vec<_> = stage.lines().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(copies, ["COPY --from=build /leaderlock /leaderlock", "COPY --from=build /kubectl-leaderlock /kubectl-leaderlock"]);
    let inspect = run(Command::new("ocipack").arg("-inspect").arg(node.dir.join("images/leaderlock.tar")));
    let config: Value = serde_json::from_str(inspect.lines().next().unwrap().strip_prefix("config ").unwrap()).unwrap();
    let words = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert_eq!(config["entrypoint"], words(directive("ENTRYPOINT")));
    assert_eq!(config["cmd"], words(directive("CMD")));
    assert_eq!(config["user"], directive("USER"));
    let files: Vec<_> = inspect.lines().skip(1).collect();
    assert_eq!(files, ["0 0755 /kubectl-leaderlock", "0 0755 /leaderlock"], "the image holds the two binaries");
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(repo().join("charts/leaderlock/Chart.yaml")).unwrap();
    let line = chart.lines().find(|l| l.starts_with("appVersion:")).unwrap();
    line["appVersion:".len()..].trim().trim_matches('"').to_string()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl").args(args).output().unwrap()
}

fn kubectl_ok(args: &[&str]) -> String {
    run(Command::new("kubectl").args(args))
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(&all)).unwrap()
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn names(pods: &[Value]) -> Vec<String> {
    pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect()
}

/// `helm install` with the image built here; pods reach the apiserver and the lock etcd at the
/// host's bridge address (no kube-proxy runs), which is all the values change besides the image.
fn install_chart(node: &Node) {
    let values = node.dir.join("e2e-values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: leaderlock.dev/leaderlock, pullPolicy: Never}}\n\
             etcd: {{endpoints: [\"{}\"]}}\n\
             extraEnv:\n- {{name: KUBERNETES_SERVICE_HOST, value: \"{}\"}}\n- {{name: KUBERNETES_SERVICE_PORT, value: \"{}\"}}\n",
            node.pod_etcd, node.api_host, node.api_port
        ),
    )
    .unwrap();
    let chart = repo().join("charts/leaderlock");
    run(Command::new("helm")
        .args(["install", "leaderlock"])
        .arg(&chart)
        .args(["-n", CHART_NS, "--create-namespace", "--wait", "--timeout", "180s", "-f"])
        .arg(&values));
    let pods = json(&["get", "pods", "-n", CHART_NS, "-l", "app.kubernetes.io/name=leaderlock"]);
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 2, "two controller replicas");
    for p in pods {
        assert!(ready(p), "controller pod not Ready (probes): {}", p["metadata"]["name"]);
        assert_eq!(p["spec"]["serviceAccountName"], "leaderlock", "the chart's ServiceAccount");
        let projected = p["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["projected"]["sources"].as_array().is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some())));
        assert!(projected, "no projected ServiceAccount token in {}", p["metadata"]["name"]);
    }
    let names = names(pods);
    wait_for("exactly one active controller replica", 60, || {
        let states: Vec<_> = names.iter().map(|n| active(n)).collect();
        let count = |want| states.iter().filter(|s| **s == Some(want)).count();
        (count(true) == 1 && count(false) == 1).then_some(())
    });
}

/// Whether the replica is active, from its `/readyz` (`ok: active` or `ok: standby`), read
/// through the apiserver's pod proxy on the probes' port. (Not /metrics: the proxy passes no
/// credentials, and /metrics answers only authorized callers.)
fn active(pod: &str) -> Option<bool> {
    let path = format!("/api/v1/namespaces/{CHART_NS}/pods/{pod}:8080/proxy/readyz");
    let out = kubectl(&["get", "--raw", &path]);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "ok: active" => Some(true),
        "ok: standby" => Some(false),
        _ => None,
    }
}

/// examples/ applied as a user would, with the image names of this machine.
fn run_examples() {
    kubectl_ok(&["create", "namespace", NS]);
    wait_for("the namespace's default ServiceAccount", 60, || kubectl(&["get", "sa", "default", "-n", NS]).status.success().then_some(()));
    let deployment = std::fs::read_to_string(repo().join("examples/deployment.yaml"))
        .unwrap()
        .replace("image: leaderlock:", "image: leaderlock.dev/leaderlock:")
        .replace("image: busybox:1.36", "image: leaderlock.dev/busybox:local");
    assert!(
        deployment.contains(&format!("leaderlock.dev/leaderlock:{}", app_version())),
        "examples/deployment.yaml names another leaderlock tag than the chart"
    );
    let file = std::env::temp_dir().join(format!("e2e-deployment-{}.yaml", std::process::id()));
    std::fs::write(&file, deployment).unwrap();
    for f in ["examples/leaderlock-ledger.yaml", "examples/leader-service.yaml"] {
        kubectl_ok(&["apply", "-n", NS, "-f", repo().join(f).to_str().unwrap()]);
    }
    kubectl_ok(&["apply", "-n", NS, "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    wait_for("three Ready ledger-worker pods", 180, || {
        let pods = json(&["get", "pods", "-n", NS, "-l", "app=ledger-worker"]);
        let items = pods["items"].as_array()?;
        (items.len() == 3 && items.iter().all(ready)).then_some(())
    });
}

/// The LeaderLock's holder and token once every view agrees: the status, each pod's role as
/// `leaderlock role` reads it from the kubelet's file, the holder's file's token, the jobs' own
/// logs (exactly one job runs), and the leader-only Service's EndpointSlice.
fn converged_holder() -> (String, u64) {
    let (holder, token) = wait_for("an elected holder", 60, status_holder);
    let pods = names(json(&["get", "pods", "-n", NS, "-l", "app=ledger-worker"])["items"].as_array().unwrap());
    wait_for("every pod's `leaderlock role` to agree with the status", FILE_SECS, || {
        pods.iter()
            .all(|p| {
                let want = if *p == holder { format!("leader {token}") } else { "standby".to_string() };
                role(p).as_deref() == Some(want.as_str())
            })
            .then_some(())
    });
    let file = kubectl_ok(&["exec", "-n", NS, &holder, "-c", "worker", "--", "cat", "/etc/leaderlock/annotations"]);
    assert!(file.contains(&format!("leaderlock.dev/{LOCK}.token=\"{token}\"")), "holder's file lacks token {token}:\n{file}");
    wait_for("the job to run in the holder only", FILE_SECS, || {
        let running: Vec<_> = pods.iter().filter(|p| job_running(p)).collect();
        (running.len() == 1 && *running[0] == holder && last_job_token(&holder) == Some(token)).then_some(())
    });
    let ip = json(&["get", "pod", "-n", NS, &holder])["status"]["podIP"].as_str().unwrap().to_string();
    wait_for("the leader Service's EndpointSlice to hold the holder only", 30, || (slice_addresses() == vec![ip.clone()]).then_some(()));
    (holder, token)
}

fn status_holder() -> Option<(String, u64)> {
    let ll = json(&["get", "leaderlock", "ledger", "-n", NS]);
    let lock = ll["status"]["locks"].as_array()?.iter().find(|l| l["name"] == LOCK)?.clone();
    let holder = lock["holder"].as_str().filter(|h| !h.is_empty())?.to_string();
    // int64 in the API, so JSON carries it as a string.
    let token = &lock["fencingToken"];
    Some((holder, token.as_u64().or_else(|| token.as_str()?.parse().ok())?))
}

/// `leaderlock role` run inside the pod's worker container.
fn role(pod: &str) -> Option<String> {
    let out = kubectl(&["exec", "-n", NS, pod, "-c", "worker", "--", "/opt/leaderlock/leaderlock", "role", "--lock", LOCK]);
    matches!(out.status.code(), Some(0 | 1)).then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The fencing token of the last job start in the pod's own log, if its job ever started.
fn last_job_token(pod: &str) -> Option<u64> {
    let out = kubectl(&["logs", "-n", NS, pod, "-c", "worker"]);
    let log = String::from_utf8_lossy(&out.stdout);
    log.lines().rev().find_map(|l| l.strip_prefix(JOB_LINE)).and_then(|t| t.trim().parse().ok())
}

/// Whether the example's job (`sh -c '… while true …'`) is a live process in the pod. busybox
/// has no pgrep; `leaderlock run`'s own arguments hold the script too, hence the `^sh -c`; the
/// pattern's brackets keep the probe from matching itself.
fn job_running(pod: &str) -> bool {
    let probe = r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <$f | grep -q '^sh -c .*while [t]rue' && exit 0; done; exit 1"#;
    kubectl(&["exec", "-n", NS, pod, "-c", "worker", "--", "sh", "-c", probe]).status.success()
}

fn slice_addresses() -> Vec<String> {
    let slices = json(&["get", "endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=ledger-leader"]);
    let mut ips: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// Deleting the holder pod: its job stops, another pod's job starts with a larger token, and
/// the Service follows; the Deployment's replacement pod becomes a standby. Returns the new
/// holder and token.
fn graceful_failover((old, old_token): &(String, u64)) -> (String, u64) {
    kubectl_ok(&["delete", "pod", "-n", NS, old, "--wait=false"]);
    let (new, new_token) = wait_for("a new holder", 60, || status_holder().filter(|(h, _)| h != old));
    assert!(new_token > *old_token, "fencing token did not grow: {old_token} -> {new_token}");
    wait_for("the new holder's job", FILE_SECS, || (last_job_token(&new) == Some(new_token)).then_some(()));
    wait_for("the old pod to be gone", 60, || (!kubectl(&["get", "pod", "-n", NS, old]).status.success()).then_some(()));
    wait_for("three Ready pods again", 120, || {
        let pods = json(&["get", "pods", "-n", NS, "-l", "app=ledger-worker"]);
        let items = pods["items"].as_array()?;
        (items.len() == 3 && items.iter().all(ready)).then_some(())
    });
    let (holder, token) = converged_holder();
    assert_eq!((holder.as_str(), token), (new.as_str(), new_token), "holder changed again without cause");
    (holder, token)
}
