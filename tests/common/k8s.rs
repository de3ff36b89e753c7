//! Kubernetes-side helpers: a client from the test control plane, pods we create and play the
//! kubelet for, the `leaderlock controller` process, and the safety checker that watches every
//! pod update.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use leaderlock::resource::LeaderLock;
use serde_json::json;

use super::env;
use super::etcd::ChildGuard;

pub async fn client() -> kube::Client {
    kube::Client::try_default().await.expect("a kube client from KUBECONFIG")
}

/// Creates a pod with `labels` that no kubelet will ever run; see [`set_ready`].
pub async fn create_pod(c: &kube::Client, ns: &str, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
}

/// Plays the kubelet: marks the pod Running and Ready (or not Ready) through `pods/status`.
pub async fn set_ready(c: &kube::Client, ns: &str, name: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    Api::<Pod>::namespaced(c.clone(), ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

pub async fn ready_pods(c: &kube::Client, ns: &str, names: &[&str], labels: &[(&str, &str)]) {
    for n in names {
        create_pod(c, ns, n, labels).await;
        set_ready(c, ns, n, true).await;
    }
}

/// Deletes a pod at once (no kubelet will finish a graceful deletion).
pub async fn delete_pod(c: &kube::Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(c.clone(), ns).delete(name, &DeleteParams::default().grace_period(0)).await.unwrap();
}

pub async fn annotations(c: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    // A holder such as "etcd:/key" is not a pod name: no pod, no keys.
    let Ok(pod) = Api::<Pod>::namespaced(c.clone(), ns).get(name).await else { return BTreeMap::new() };
    pod.metadata.annotations.unwrap_or_default().into_iter().filter(|(k, _)| k.starts_with("leaderlock.dev/")).collect()
}

/// Role of every pod in `ns` for `lock`, by pod name.
pub async fn roles(c: &kube::Client, ns: &str, lock: &str) -> BTreeMap<String, String> {
    let key = format!("leaderlock.dev/{lock}");
    let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&Default::default()).await.unwrap();
    pods.items.iter().filter_map(|p| Some((p.name_any(), p.annotations().get(&key)?.clone()))).collect()
}

pub async fn leaderlock(c: &kube::Client, ns: &str, name: &str) -> LeaderLock {
    Api::<LeaderLock>::namespaced(c.clone(), ns).get(name).await.unwrap()
}

/// Polls `check` (an API read) every 50 ms until it returns Some, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The holder recorded in status for `lock`, once the LeaderLock is Ready.
pub async fn status_holder(c: &kube::Client, ns: &str, ll: &str, lock: &str) -> Option<(String, i64)> {
    let l = leaderlock(c, ns, ll).await;
    let st = l.status?;
    let s = st.locks.iter().find(|s| s.name == lock)?;
    Some((s.holder.clone()?, s.fencing_token.as_ref()?.parse().ok()?))
}

/// Waits until exactly one pod is annotated leader for `lock` with the status' holder and
/// token, every other candidate in `standby`, and the status counting `candidates`; returns
/// (holder, token).
pub async fn elected(c: &kube::Client, ns: &str, ll: &str, lock: &str, candidates: usize) -> (String, i64) {
    eventually(&format!("an elected holder of {lock} in {ns}"), Duration::from_secs(30), || async {
        let (holder, token) = status_holder(c, ns, ll, lock).await?;
        // Pods are annotated before the status is written: the status must count them too.
        let st = leaderlock(c, ns, ll).await.status?;
        if st.locks.iter().find(|s| s.name == lock)?.candidates as usize != candidates {
            return None;
        }
        let roles = roles(c, ns, lock).await;
        let leaders: Vec<&String> = roles.iter().filter(|(_, r)| *r == "leader").map(|(p, _)| p).collect();
        let standbys = roles.values().filter(|r| *r == "standby").count();
        let token_ann = annotations(c, ns, &holder).await.get(&format!("leaderlock.dev/{lock}.token")).cloned();
        (leaders == [&holder] && standbys + 1 == candidates && token_ann == Some(token.to_string())).then_some((holder, token))
    })
    .await
}

/// A running `leaderlock controller`. It dies with the thread that started it (parent-death
/// signal) and on drop, so no controller outlives its test.
pub struct ControllerProcess {
    child: ChildGuard,
    pub log: std::path::PathBuf,
}

/// A passing test's controller log is noise that would pile up in the temp dir run after run;
/// a failing test's stays there to be read.
impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl ControllerProcess {
    pub fn start(extra: &[&str]) -> ControllerProcess {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> ControllerProcess {
        Self::start_logging_in(&std::env::temp_dir(), extra, envs)
    }

    fn start_logging_in(dir: &std::path::Path, extra: &[&str], envs: &[(&str, &str)]) -> ControllerProcess {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("leaderlock-controller-{}-{n}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", env!("CARGO_BIN_EXE_leaderlock"), "controller"])
            .args(["--http-addr", "127.0.0.1:0", "--election-ttl", "2"])
            .args(extra)
            .env("LEADERLOCK_LOG_LEVEL", "info,leaderlock=debug")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start leaderlock controller");
        ControllerProcess { child: ChildGuard(child), log }
    }

    /// SIGKILL: a crash, nothing is cleaned up.
    pub fn kill(self) {}

    /// SIGTERM: a graceful stop (the replica resigns).
    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status();
        let _ = self.child.0.wait();
    }

    /// The port of /metrics, /healthz, /readyz, from the log line announcing it.
    pub fn http_port(&self) -> u16 {
        super::wait_until("the controller to serve HTTP", Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            log.lines().find(|l| l.contains("serving /metrics"))?.split("addr=127.0.0.1:").nth(1)?.split_whitespace().next()?.parse().ok()
        })
    }

    /// GET `path` from this controller's HTTP endpoint; None if it does not answer.
    pub fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.http_port())).ok()?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).ok()?;
        Some(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    }

    /// Whether this replica's log says it became active.
    pub fn is_active(&self) -> bool {
        std::fs::read_to_string(&self.log).unwrap_or_default().contains("active: this replica reconciles")
    }
}

/// One controller shared by every test of a binary, started from a thread that lives as long
/// as the test binary, with `--allowed-key-prefix /legacy/`. It is never dropped, so its log
/// goes in the control plane's folder and goes away with it.
pub fn shared_controller() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let endpoints = env("LEADERLOCK_ETCD_ENDPOINTS");
            let dir = std::path::PathBuf::from(env("LEADERLOCK_CLUSTER_DIR"));
            let p = ControllerProcess::start_logging_in(&dir, &["--etcd-endpoints", &endpoints, "--allowed-key-prefix", "/legacy/"], &[]);
            tx.send(()).unwrap();
            let _keep = p;
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
    });
}

/// What the safety checker saw that it must never see.
#[derive(Clone, Debug)]
pub struct Violation {
    pub namespace: String,
    pub message: String,
}

/// Watches every pod update from its start and records violations of the two safety
/// promises: at most one `leader` per lock at any moment, and tokens that never decrease.
#[derive(Clone, Default)]
pub struct Checker {
    violations: Arc<Mutex<Vec<Violation>>>,
    updates: Arc<Mutex<u64>>,
}

impl Checker {
    /// The checker of this test binary, started on first use.
    pub fn global() -> Checker {
        static CHECKER: OnceLock<Checker> = OnceLock::new();
        CHECKER
            .get_or_init(|| {
                let checker = Checker::default();
                let c = checker.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    rt.block_on(c.run(tx));
                });
                rx.recv().unwrap();
                checker
            })
            .clone()
    }

    async fn run(self, started: std::sync::mpsc::Sender<()>) {
        let api: Api<Pod> = Api::all(client().await);
        // pod (ns/name) → (lock → role, lock → token)
        let mut pods: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        let mut max_token: HashMap<(String, String), i64> = HashMap::new();
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut started = Some(started);
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut touched = Vec::new();
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let ns = p.namespace().unwrap_or_default();
                    let keys: BTreeMap<String, String> = p
                        .annotations()
                        .iter()
                        .filter(|(k, _)| k.starts_with("leaderlock.dev/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    pods.insert(format!("{ns}/{}", p.name_any()), keys);
                    touched.push(ns);
                }
                watcher::Event::Delete(p) => {
                    pods.remove(&format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()));
                }
                watcher::Event::InitDone => {
                    if let Some(s) = started.take() {
                        let _ = s.send(());
                    }
                }
                watcher::Event::Init => {}
            }
            *self.updates.lock().unwrap() += 1;
            for ns in touched {
                self.check(&ns, &pods, &mut max_token);
            }
        }
    }

    fn check(&self, ns: &str, pods: &HashMap<String, BTreeMap<String, String>>, max_token: &mut HashMap<(String, String), i64>) {
        let mut leaders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (pod, keys) in pods.iter().filter(|(p, _)| p.starts_with(&format!("{ns}/"))) {
            for (k, v) in keys {
                let lock = k.trim_start_matches("leaderlock.dev/");
                if let Some(lock) = lock.strip_suffix(".token") {
                    let t: i64 = v.parse().unwrap_or(-1);
                    let e = max_token.entry((ns.to_string(), lock.to_string())).or_insert(t);
                    if t < *e {
                        self.violate(ns, format!("token of {lock} decreased from {e} to {t} on {pod}"));
                    }
                    *e = (*e).max(t);
                } else if v == "leader" {
                    leaders.entry(lock.to_string()).or_default().push(pod.clone());
                }
            }
        }
        for (lock, who) in leaders.into_iter().filter(|(_, w)| w.len() > 1) {
            self.violate(ns, format!("{} pods lead {lock} at once: {who:?}", who.len()));
        }
    }

    fn violate(&self, ns: &str, message: String) {
        self.violations.lock().unwrap().push(Violation { namespace: ns.to_string(), message });
    }

    /// Fails the test if anything unsafe was seen in `ns`.
    pub fn assert_clean(&self, ns: &str) {
        let v: Vec<Violation> = self.violations.lock().unwrap().iter().filter(|v| v.namespace == ns).cloned().collect();
        assert!(v.is_empty(), "safety violations in {ns}: {v:#?}");
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.violations.lock().unwrap().clone()
    }
}
