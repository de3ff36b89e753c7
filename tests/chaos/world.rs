//! Fixtures of the chaos scenarios: a seeded RNG, a fleet of LeaderLocks × pods, the churn
//! driver (pod deletions with replacement, readiness flips, scale changes) and the report.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::checker::Summary;

/// Full run (`LEADERLOCK_CHAOS=full`, hack/chaos.sh) or the fast subset of `make test`.
pub fn full() -> bool {
    std::env::var("LEADERLOCK_CHAOS").as_deref() == Ok("full")
}

/// xorshift64*: reproducible from the seed printed by each scenario.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn seed() -> u64 {
        std::env::var("LEADERLOCK_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1eade7)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

pub async fn create_pod(c: &kube::Client, ns: &str, name: &str, app: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), ns).create(&PostParams::default(), &pod).await.unwrap();
}

pub async fn set_ready(c: &kube::Client, ns: &str, name: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    let _ = Api::<Pod>::namespaced(c.clone(), ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await;
}

pub async fn delete_pod(c: &kube::Client, ns: &str, name: &str) {
    let _ = Api::<Pod>::namespaced(c.clone(), ns).delete(name, &DeleteParams::default().grace_period(0)).await;
}

pub fn leaderlock_yaml(name: &str, locks: &[&str], ttl: u32) -> String {
    let locks = locks.iter().map(|l| format!("{{name: {l}}}")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  locks: [{locks}]\n  ttlSeconds: {ttl}\n"
    )
}

/// N LeaderLocks `ll-<i>` (one lock `lk-<i>` each), each selecting its own pods `ll-<i>-<gen>`.
pub struct Fleet {
    pub ns: String,
    pub lls: Vec<String>,
    /// LeaderLock → (pod name, ready)
    pub pods: BTreeMap<String, Vec<(String, bool)>>,
    generation: u64,
    pub actions: BTreeMap<&'static str, u64>,
}

impl Fleet {
    pub async fn create(c: &kube::Client, ns: &str, n: usize, pods_each: usize, ttl: u32) -> Fleet {
        let mut f = Fleet { ns: ns.to_string(), lls: Vec::new(), pods: BTreeMap::new(), generation: 0, actions: BTreeMap::new() };
        let mut yaml = String::new();
        for i in 0..n {
            let ll = format!("ll-{i}");
            yaml.push_str("---\n");
            yaml.push_str(&leaderlock_yaml(&ll, &[&format!("lk-{i}")], ttl));
            f.lls.push(ll.clone());
            f.pods.insert(ll.clone(), Vec::new());
            for _ in 0..pods_each {
                f.add_pod(c, &ll).await;
            }
        }
        // The first LeaderLock alone, until it has a status: its reconcile grants the lease for
        // this TTL. Concurrent first reconciles race to grant it (two leases granted and
        // recorded at once), which precedes the reconcile stall reported in CHAOS.md; the
        // scenarios study other faults, so they avoid that race.
        let (first, rest) = yaml[4..].split_once("---\n").map_or((&yaml[4..], ""), |(a, b)| (a, b));
        crate::common::kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(first));
        let api = Api::<leaderlock::resource::LeaderLock>::namespaced(c.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get("ll-0").await.ok().and_then(|l| l.status).is_none() {
            assert!(Instant::now() < deadline, "ll-0 got no status");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !rest.is_empty() {
            crate::common::kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(rest));
        }
        f
    }

    async fn add_pod(&mut self, c: &kube::Client, ll: &str) {
        self.generation += 1;
        let name = format!("{ll}-{}", self.generation);
        create_pod(c, &self.ns, &name, ll).await;
        set_ready(c, &self.ns, &name, true).await;
        self.pods.get_mut(ll).unwrap().push((name, true));
    }

    /// One random disturbance: delete a pod and create its replacement, flip a pod's
    /// readiness, or scale a LeaderLock's pods to 3..=7.
    pub async fn step(&mut self, c: &kube::Client, rng: &mut Rng) {
        let ll = self.lls[rng.below(self.lls.len())].clone();
        let n = self.pods[&ll].len();
        match rng.below(10) {
            0..=3 if n > 0 => {
                let (name, _) = self.pods.get_mut(&ll).unwrap().remove(rng.below(n));
                delete_pod(c, &self.ns, &name).await;
                self.add_pod(c, &ll).await;
                *self.actions.entry("pod deleted and replaced").or_default() += 1;
            }
            4..=7 if n > 0 => {
                let i = rng.below(n);
                let (name, ready) = self.pods[&ll][i].clone();
                set_ready(c, &self.ns, &name, !ready).await;
                self.pods.get_mut(&ll).unwrap()[i].1 = !ready;
                *self.actions.entry("readiness flipped").or_default() += 1;
            }
            _ => {
                let want = 3 + rng.below(5);
                while self.pods[&ll].len() < want {
                    self.add_pod(c, &ll).await;
                }
                while self.pods[&ll].len() > want {
                    let (name, _) = self.pods.get_mut(&ll).unwrap().pop().unwrap();
                    delete_pod(c, &self.ns, &name).await;
                }
                *self.actions.entry("scaled").or_default() += 1;
            }
        }
    }

    /// Churns for `duration`, one step every `every`; `during(elapsed)` runs between steps
    /// (faults are injected from it). Returns the number of steps.
    pub async fn churn(&mut self, c: &kube::Client, rng: &mut Rng, duration: Duration, every: Duration) -> u64 {
        let start = Instant::now();
        let mut steps = 0;
        while start.elapsed() < duration {
            let t = Instant::now();
            self.step(c, rng).await;
            steps += 1;
            tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
        }
        steps
    }

    /// Every pod Ready again, so every LeaderLock has candidates at the end.
    pub async fn heal(&mut self, c: &kube::Client) {
        for ll in self.lls.clone() {
            for i in 0..self.pods[&ll].len() {
                let (name, ready) = self.pods[&ll][i].clone();
                if !ready {
                    set_ready(c, &self.ns, &name, true).await;
                    self.pods.get_mut(&ll).unwrap()[i].1 = true;
                }
            }
        }
    }

    pub fn actions(&self) -> String {
        self.actions.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
    }
}

/// One scenario's figures, printed and, with `LEADERLOCK_CHAOS_REPORT=<file>`, appended to it
/// as Markdown (hack/chaos.sh assembles CHAOS.md from it).
pub struct Report {
    pub name: String,
    pub setup: String,
    pub summary: Summary,
    pub convergence: Duration,
    pub convergence_bound: Duration,
    pub fault_holder_changes_target: Option<usize>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn emit(&self) {
        let s = &self.summary;
        let target = self.fault_holder_changes_target.map(|t| format!(" (target {t})")).unwrap_or_else(|| " (no target: expected)".into());
        let mut md = format!(
            "### {}\n\n{}\n\n| figure | value |\n|---|---|\n| leader transitions observed (apiserver) | {} |\n| holder changes observed (etcd) | {} |\n| checker violations | {} |\n| keys written outside root/allowed prefixes | {} |\n| holder changes caused by the fault itself | {}{} |\n| demote/promote window (leader annotation vs etcd holder), max | {:?} over {} windows |\n| convergence after the fault | {:?} (bound {:?}) |\n| events checked (pods / etcd), etcd re-lists | {} / {}, {} |\n",
            self.name,
            self.setup,
            s.transitions,
            s.holder_changes,
            s.violations.len(),
            s.outside_keys.len(),
            s.causeless.len(),
            target,
            s.max_window,
            s.windows,
            self.convergence,
            self.convergence_bound,
            s.pod_events,
            s.etcd_events,
            s.etcd_relists,
        );
        for n in &self.notes {
            md.push_str(&format!("\n{n}\n"));
        }
        for v in s.violations.iter().chain(&s.causeless).take(10) {
            md.push_str(&format!("\n* `{v}`"));
        }
        md.push('\n');
        println!("{md}");
        if let Ok(path) = std::env::var("LEADERLOCK_CHAOS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{md}").unwrap();
        }
    }
}

/// A `leaderlock controller` replica restarted when it exits, as the kubelet restarts a
/// container (`restartPolicy: Always`, 1 s back-off): the controller exits on purpose when it
/// cannot renew its election lease, and only a restart brings it back. Each incarnation logs
/// to its own file. Killed (and not restarted) on drop.
pub struct Supervised {
    inner: std::sync::Arc<std::sync::Mutex<SupState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SupState {
    pid: Option<u32>,
    log: Option<std::path::PathBuf>,
    restarts: u32,
    exits: Vec<String>,
    stop: bool,
}

impl Supervised {
    pub fn start(args: Vec<String>, envs: Vec<(String, String)>) -> Supervised {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = std::sync::Arc::new(std::sync::Mutex::new(SupState::default()));
        let st = inner.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut incarnation = 0;
            let mut tx = Some(tx);
            loop {
                let log = std::env::temp_dir().join(format!("leaderlock-chaos-{}-{id}-{incarnation}.log", std::process::id()));
                let out = std::fs::File::create(&log).unwrap();
                let mut child = std::process::Command::new("setpriv")
                    .args(["--pdeathsig", "KILL", env!("CARGO_BIN_EXE_leaderlock"), "controller"])
                    .args(["--http-addr", "127.0.0.1:0", "--election-ttl", "2"])
                    .args(&args)
                    .env("LEADERLOCK_LOG_LEVEL", "info,leaderlock=debug")
                    .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdout(std::process::Stdio::null())
                    .stderr(out)
                    .spawn()
                    .expect("start leaderlock controller");
                {
                    let mut s = st.lock().unwrap();
                    s.pid = Some(child.id());
                    s.log = Some(log);
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                // Wait for the exit, checking the stop flag (bounded: the test drops us).
                loop {
                    if st.lock().unwrap().stop {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        st.lock().unwrap().exits.push(format!("{status}"));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                st.lock().unwrap().pid = None;
                let until = Instant::now() + Duration::from_secs(1);
                while Instant::now() < until {
                    if st.lock().unwrap().stop {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                incarnation += 1;
                st.lock().unwrap().restarts += 1;
            }
        });
        rx.recv().unwrap();
        Supervised { inner, thread: Some(thread) }
    }

    /// SIGKILL of the current incarnation (the supervisor restarts it after its back-off).
    pub fn kill9(&self) {
        if let Some(pid) = self.inner.lock().unwrap().pid {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }

    pub fn restarts(&self) -> u32 {
        self.inner.lock().unwrap().restarts
    }

    /// Exit statuses of the incarnations that ended.
    pub fn exits(&self) -> Vec<String> {
        self.inner.lock().unwrap().exits.clone()
    }

    /// Every log file of every incarnation so far, concatenated.
    pub fn logs(&self) -> String {
        self.log_paths().iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
    }

    /// The log file of every incarnation so far, oldest first.
    fn log_paths(&self) -> Vec<std::path::PathBuf> {
        let current = self.inner.lock().unwrap().log.clone();
        let Some(current) = current else { return Vec::new() };
        let stem = current.file_name().unwrap().to_string_lossy().rsplit_once('-').unwrap().0.to_string();
        (0..).map(|i| current.with_file_name(format!("{stem}-{i}.log"))).take_while(|p| p.exists()).collect()
    }

    /// Whether the current incarnation says it is the active replica.
    pub fn is_active(&self) -> bool {
        let (pid, log) = {
            let s = self.inner.lock().unwrap();
            (s.pid, s.log.clone())
        };
        pid.is_some() && log.is_some_and(|l| std::fs::read_to_string(l).unwrap_or_default().contains("active: this replica reconciles"))
    }

    pub fn assert_no_panic(&self) {
        let logs = self.logs();
        assert!(
            !logs.contains("panicked"),
            "the controller panicked: {}",
            logs.lines().filter(|l| l.contains("panicked")).collect::<Vec<_>>().join("\n")
        );
    }
}

impl Drop for Supervised {
    /// Stops the controller; removes its logs unless the test is failing (then they are read).
    fn drop(&mut self) {
        self.inner.lock().unwrap().stop = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !std::thread::panicking() {
            self.log_paths().iter().for_each(|p| drop(std::fs::remove_file(p)));
        }
    }
}
