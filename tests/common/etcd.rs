//! Real etcd processes and a cuttable TCP proxy for tests that need their own etcd (idle-write
//! accounting, restarts, TLS/auth, partitions). Everything is killed on drop.
#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{env, wait_until};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn etcd_bin(name: &str) -> PathBuf {
    PathBuf::from(env("LEADERLOCK_ETCD_BIN_DIR")).join(name)
}

/// Every key under `prefix` in the (plain-HTTP) etcd at `endpoint`, in key order: the shared
/// lock etcd of `hack/cluster.sh` (`LEADERLOCK_ETCD_ENDPOINTS`).
pub fn keys_under(endpoint: &str, prefix: &str) -> Vec<String> {
    let out = Command::new(etcd_bin("etcdctl")).args(["--endpoints", endpoint, "get", "--prefix", "--keys-only", prefix]).output().unwrap();
    key_lines(&out)
}

fn key_lines(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "etcdctl get failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// `etcdctl lock PREFIX` against `endpoint`, once it holds the lock: the process (which releases
/// the lock when dropped) and the key it printed.
pub fn etcdctl_lock(endpoint: &str, prefix: &str) -> (ChildGuard, String) {
    let mut child = ChildGuard(
        std::process::Command::new("etcdctl")
            .args(["--endpoints", endpoint, "lock", prefix])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.0.stdout.take().unwrap()), &mut line).unwrap();
    (child, line.trim().to_string())
}

/// `etcdctl lock PREFIX` against `endpoint` without waiting: it queues behind the holder.
pub fn etcdctl_lock_waiter(endpoint: &str, prefix: &str) -> ChildGuard {
    ChildGuard(
        std::process::Command::new("etcdctl")
            .args(["--endpoints", endpoint, "lock", prefix])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// TLS material for an etcd that requires client certificates.
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, via openssl.
    pub fn generate(dir: &Path) -> Tls {
        let sh = |script: &str| {
            let ok = Command::new("bash").arg("-ec").arg(script).current_dir(dir).stderr(Stdio::null()).status().unwrap();
            assert!(ok.success(), "openssl failed: {script}");
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.crt");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=etcd -keyout server.key -out server.csr
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,clientAuth\\n' > san.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.crt");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=leaderlock -keyout client.key -out client.csr
            printf 'extendedKeyUsage=clientAuth\\n' > client.ext
            openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile client.ext -out client.crt");
        Tls {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// One etcd member of our own, on free loopback ports, with its data in a temp dir.
pub struct EtcdServer {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    pub tls: Option<Tls>,
    child: Option<ChildGuard>,
    /// `name=peer-url,…` of the whole cluster, for members of an [`EtcdCluster`].
    cluster: Option<(String, String)>,
}

/// A 3-member etcd cluster on loopback, for member-loss tests.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut members: Vec<EtcdServer> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| EtcdServer {
                dir: tempfile::tempdir().unwrap(),
                client_port: *c,
                peer_port: *p,
                tls: None,
                child: None,
                cluster: Some((format!("m{i}"), initial.clone())),
            })
            .collect();
        members.iter_mut().for_each(|m| m.spawn()); // a member alone has no quorum: start all first
        members.iter().for_each(|m| m.wait_healthy());
        EtcdCluster { members }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        Self::start_with(false)
    }

    pub fn start_with(tls: bool) -> EtcdServer {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| Tls::generate(dir.path()));
        let mut s = EtcdServer { dir, client_port: free_port(), peer_port: free_port(), tls, child: None, cluster: None };
        s.restart();
        s
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd hard (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// (Re)starts etcd on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        wait_until("etcd to answer", Duration::from_secs(30), || self.etcdctl(&["endpoint", "health"]).status.success().then_some(()));
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(etcd_bin("etcd"));
        let client_url = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let (name, initial) = self.cluster.clone().unwrap_or_else(|| ("test".into(), format!("test={peer}")));
        cmd.args(["--name", &name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--log-level", "error", "--unsafe-no-fsync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--cert-file").arg(&tls.server_cert).arg("--key-file").arg(&tls.server_key);
        }
        self.child = Some(ChildGuard(cmd.spawn().expect("etcd binary")));
    }

    /// Every key under `prefix`, in key order.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        key_lines(&self.etcdctl(&["get", "--prefix", "--keys-only", prefix]))
    }

    /// Runs etcdctl against this member.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(etcd_bin("etcdctl"));
        cmd.arg("--endpoints").arg(self.endpoint());
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        }
        cmd.args(args).output().unwrap()
    }
}

/// A TCP forwarder between a client and etcd that a test can cut (a partition) and restore.
pub struct TcpProxy {
    pub port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> TcpProxy {
        let mut p = TcpProxy { port: free_port(), target, task: None, conns: Default::default() };
        p.restore().await;
        p
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.conns.lock().unwrap().drain(..).for_each(|c| c.abort());
    }

    /// Accepts and forwards connections again, on the same port.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, conns) = (self.target, self.conns.clone());
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
