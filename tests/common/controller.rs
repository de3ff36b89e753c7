//! The one launcher of `leaderlock controller` processes in tests, optionally supervised
//! (restarted when it exits, as the kubelet restarts a container with `restartPolicy: Always`
//! and a 1 s back-off: the controller exits on purpose when it cannot renew its election lease).
//!
//! Every incarnation logs to its own file. The child gets a parent-death signal bound to the
//! supervising thread, so no controller outlives its test, even one killed with SIGKILL; it is
//! killed (and not restarted) on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{env, wait_until};

/// What a test asks of its controller: arguments after `controller`, environment, whether a
/// supervisor restarts it, and where its logs go.
pub struct Launch {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    restart: bool,
    log_dir: PathBuf,
}

impl Launch {
    pub fn new(args: &[&str]) -> Launch {
        Launch { args: args.iter().map(|s| s.to_string()).collect(), envs: Vec::new(), restart: false, log_dir: std::env::temp_dir() }
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Restarts the controller 1 s after every exit, like a kubelet.
    pub fn supervised(mut self) -> Launch {
        self.restart = true;
        self
    }

    pub fn log_dir(mut self, dir: &Path) -> Launch {
        self.log_dir = dir.to_path_buf();
        self
    }

    pub fn start(self) -> ControllerProcess {
        ControllerProcess::launch(self)
    }
}

#[derive(Default)]
struct State {
    pid: Option<u32>,
    log: Option<PathBuf>,
    restarts: u32,
    exits: Vec<String>,
    /// The next exit is final (a graceful stop was asked for).
    no_restart: bool,
    stop: bool,
}

/// A running (or supervised) `leaderlock controller`.
pub struct ControllerProcess {
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first incarnation's log (the only one unless supervised); see [`Self::logs`].
    pub log: PathBuf,
}

impl ControllerProcess {
    /// One unsupervised controller with `extra` arguments: its exit is final.
    pub fn start(extra: &[&str]) -> ControllerProcess {
        Launch::new(extra).start()
    }

    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> ControllerProcess {
        envs.iter().fold(Launch::new(extra), |l, (k, v)| l.env(k, v)).start()
    }

    fn launch(launch: Launch) -> ControllerProcess {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = N.fetch_add(1, Ordering::Relaxed);
        let stem = launch.log_dir.join(format!("leaderlock-controller-{}-{id}", std::process::id()));
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || supervise(&launch, &stem, &st, tx));
        let log = rx.recv().expect("the supervisor to start the controller");
        ControllerProcess { state, thread: Some(thread), log }
    }

    /// SIGKILL of the current incarnation: a crash, nothing is cleaned up. A supervised
    /// controller comes back after its back-off.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }

    /// SIGKILL, and no restart.
    pub fn kill(self) {}

    /// SIGTERM (the replica resigns), waiting for the exit; no restart.
    pub fn terminate(self) {
        let Some(pid) = self.pid() else { return };
        self.state.lock().unwrap().no_restart = true;
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        wait_until("the controller to exit after SIGTERM", Duration::from_secs(30), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists() || zombie(pid)).then_some(())
        });
    }

    /// The current incarnation's process id, None while it is down.
    pub fn pid(&self) -> Option<u32> {
        self.state.lock().unwrap().pid
    }

    pub fn restarts(&self) -> u32 {
        self.state.lock().unwrap().restarts
    }

    /// Exit statuses of the incarnations that ended.
    pub fn exits(&self) -> Vec<String> {
        self.state.lock().unwrap().exits.clone()
    }

    /// Every incarnation's log, oldest first, concatenated.
    pub fn logs(&self) -> String {
        self.log_paths().iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
    }

    fn current_log(&self) -> String {
        let log = self.state.lock().unwrap().log.clone();
        log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default()
    }

    fn log_paths(&self) -> Vec<PathBuf> {
        let stem = self.log.to_string_lossy().trim_end_matches("-0.log").to_string();
        (0..).map(|i| PathBuf::from(format!("{stem}-{i}.log"))).take_while(|p| p.exists()).collect()
    }

    /// Whether the current incarnation says it is the active replica.
    pub fn is_active(&self) -> bool {
        self.pid().is_some() && self.current_log().contains("active: this replica reconciles")
    }

    pub fn assert_no_panic(&self) {
        let logs = self.logs();
        let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "the controller panicked: {}", panics.join("\n"));
    }

    /// The current incarnation's port serving `path` (/metrics, or /healthz and /readyz), from
    /// its log.
    pub fn http_port(&self, path: &str) -> u16 {
        let line = if path.starts_with("/metrics") { "serving /metrics" } else { "serving /healthz" };
        wait_until("the controller to serve HTTP", Duration::from_secs(30), || {
            let log = self.current_log();
            log.lines().find(|l| l.contains(line))?.split("addr=127.0.0.1:").nth(1)?.split_whitespace().next()?.parse().ok()
        })
    }

    /// GET `path` from this controller's probes or (plain-HTTP) metrics endpoint: the body, or
    /// None if it does not answer.
    pub fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.http_port(path))).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
        let mut out = String::new();
        conn.read_to_string(&mut out).ok()?;
        Some(out.split_once("\r\n\r\n")?.1.to_string())
    }

    /// Resident memory of the current incarnation (VmRSS of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// The gauge family `leaderlock_map_entries{map="<name>"}` of /metrics, by map name; empty
    /// when the controller does not export it.
    pub fn map_entries(&self) -> Option<BTreeMap<String, f64>> {
        Some(map_entries(&self.http_get("/metrics")?))
    }
}

/// Parses `leaderlock_map_entries{map="<name>"} <value>` lines of a Prometheus text exposition.
pub fn map_entries(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("leaderlock_map_entries{")?;
            let (labels, value) = rest.split_once('}')?;
            let name = labels.split(',').find_map(|kv| kv.trim().strip_prefix("map=\""))?.strip_suffix('"')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// The supervising thread: spawns the controller (its parent-death signal is bound to this
/// thread), reports the first log path through `started`, and restarts it after exits when
/// asked to, until the handle is dropped.
fn supervise(launch: &Launch, stem: &Path, st: &Mutex<State>, started: std::sync::mpsc::Sender<PathBuf>) {
    let mut started = Some(started);
    for incarnation in 0.. {
        let log = PathBuf::from(format!("{}-{incarnation}.log", stem.display()));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", env!("CARGO_BIN_EXE_leaderlock"), "controller"])
            .args(["--probe-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--election-ttl", "2"])
            .args(&launch.args)
            .env("LEADERLOCK_LOG_LEVEL", "info,leaderlock=debug")
            // /metrics in plain HTTP: the tests read it without a token. An env var, so that a
            // test's own env can switch it back (tests/metrics_auth.rs).
            .env("LEADERLOCK_METRICS_SECURE", "false")
            .envs(launch.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start leaderlock controller");
        {
            let mut s = st.lock().unwrap();
            s.pid = Some(child.id());
            s.log = Some(log.clone());
        }
        if let Some(tx) = started.take() {
            let _ = tx.send(log);
        }
        loop {
            if st.lock().unwrap().stop {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                st.lock().unwrap().exits.push(status.to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let final_exit = {
            let mut s = st.lock().unwrap();
            s.pid = None;
            !launch.restart || s.no_restart
        };
        // Wait for the drop (the parent-death signal must not fire before the handle goes).
        let back_off = Instant::now() + Duration::from_secs(1);
        while final_exit || Instant::now() < back_off {
            if st.lock().unwrap().stop {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        st.lock().unwrap().restarts += 1;
    }
}

/// A passing test's controller logs are noise that would pile up in the temp dir run after run;
/// a failing test's stay there to be read.
impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.state.lock().unwrap().stop = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !std::thread::panicking() {
            self.log_paths().iter().for_each(|p| drop(std::fs::remove_file(p)));
        }
    }
}

/// One controller shared by every test of a binary, with `--allowed-key-prefix /legacy/`. It
/// is never dropped, so its log goes in the control plane's folder and goes away with it.
pub fn shared_controller() {
    static SHARED: OnceLock<ControllerProcess> = OnceLock::new();
    SHARED.get_or_init(|| {
        let endpoints = env("LEADERLOCK_ETCD_ENDPOINTS");
        let dir = PathBuf::from(env("LEADERLOCK_CLUSTER_DIR"));
        Launch::new(&["--etcd-endpoints", &endpoints, "--allowed-key-prefix", "/legacy/"]).log_dir(&dir).start()
    });
}
