//! The lock engine against a real etcd (docs/contract.md §1, §4): zero writes while idle,
//! watch-driven hand-over, interoperability with `etcdctl lock` and Go's `concurrency.Mutex`,
//! lease adoption, TLS/auth, etcd restarts and compaction, and maps that do not grow with churn.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::env;
use common::etcd::{ChildGuard, EtcdCluster, EtcdServer, TcpProxy, etcd_bin};
use leaderlock::etcd::engine::{Engine, EngineConfig};
use leaderlock::etcd::ownership::ClusterId;
use leaderlock::etcd::{Error, EtcdConfig, connect};
use leaderlock::lock::{Candidate, Op};

fn cand(i: usize) -> Candidate {
    Candidate { id: format!("uid-{i}"), name: format!("ns/pod-{i}") }
}

fn cands(n: usize) -> Vec<Candidate> {
    (0..n).map(cand).collect()
}

fn test_cluster() -> ClusterId {
    ClusterId::new("test-cluster").unwrap()
}

fn unique_root(test: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("/test-{test}-{}-{}/", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

async fn engine_at(endpoint: &str, root: &str) -> Engine {
    let client = connect(&EtcdConfig::new(vec![endpoint.to_string()])).await.unwrap();
    let cfg =
        EngineConfig { root: root.to_string(), allowed_prefixes: vec![], call_timeout: Duration::from_secs(5), cluster_id: test_cluster() };
    Engine::start(client, cfg).await.unwrap()
}

async fn revision(endpoint: &str) -> i64 {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    c.get("/", None).await.unwrap().header().unwrap().revision()
}

/// Waits, without polling etcd, until the engine's mirror shows `check` true.
async fn until_mirror<T>(engine: &Engine, what: &str, timeout: Duration, check: impl Fn(&Engine) -> Option<T>) -> T {
    let mut rx = engine.mirror().subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check(engine) {
            return v;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out after {timeout:?} waiting for {what}");
        let _ = tokio::time::timeout(left, rx.recv()).await;
    }
}

/// A child whose stdout lines arrive on a channel.
struct Peer {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
        Peer { child: ChildGuard(child), lines }
    }

    fn wait_line(&self, starts_with: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(starts_with) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no line starting with {starts_with:?} within {timeout:?}: {e}"),
            }
        }
    }

    fn has_printed(&self, starts_with: &str) -> bool {
        self.lines.try_iter().any(|l| l.starts_with(starts_with))
    }

    /// SIGTERM: etcdctl and our Go peers then release their lock and exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status();
        let _ = self.child.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_engine_with_50_locks_and_5_candidates_costs_etcd_zero_writes_while_trylock_loops_write() {
    let etcd = EtcdServer::start(); // our own etcd: no other test may write during the window
    let engine = engine_at(&etcd.endpoint(), "/leaderlock.dev/").await;
    let prefixes: Vec<String> = (0..50).map(|i| engine.lock_prefix("shop", &format!("lock-{i}"), None).unwrap()).collect();
    for p in &prefixes {
        engine.sync(p, &cands(5), 15).await.unwrap();
    }
    let window = Duration::from_secs(env_or("LEADERLOCK_IDLE_WINDOW_SECS", 30));
    let before = revision(&etcd.endpoint()).await;
    tokio::time::sleep(window).await; // the observation window itself, not a synchronisation
    for p in &prefixes {
        assert_eq!(engine.sync(p, &cands(5), 15).await.unwrap(), vec![], "re-syncing an unchanged lock must not write");
    }
    let after = revision(&etcd.endpoint()).await;
    assert_eq!(after - before, 0, "etcd revision moved while nobody joined or left");

    // The incident, side by side: 5 TryLock pollers on one prefix, every 100 ms, for 3 s.
    let before = revision(&etcd.endpoint()).await;
    let out = Command::new(etcd_bin("trylock"))
        .args(["--endpoints", &etcd.endpoint(), "--prefix", "/trylock/lock", "--candidates", "5", "--duration", "3s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let climbed = revision(&etcd.endpoint()).await - before;
    assert!(climbed > 100, "TryLock polling should write on every try, revision climbed only {climbed}");
    println!("idle revisions: leaderlock=0 over {window:?}; trylock(5 candidates, 100ms)={climbed} over 3s");
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_holder_key_hands_the_lock_to_the_next_candidate_within_100ms() {
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let engine = engine_at(&endpoint, &unique_root("handover")).await;
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(3), 15).await.unwrap();
    let first = engine.holder(&prefix).unwrap();
    assert_eq!(first.owner.as_deref(), Some("uid-0"));

    let mut rx = engine.mirror().subscribe();
    let mut other = etcd_client::Client::connect([endpoint.as_str()], None).await.unwrap();
    let start = Instant::now();
    other.delete(first.key.clone(), None).await.unwrap();
    let next = loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        match engine.holder(&prefix) {
            Some(h) if h.key != first.key => break h,
            _ => assert!(start.elapsed() < Duration::from_secs(1), "no new holder"),
        }
    };
    let took = start.elapsed();
    assert!(engine.mirror().last_delete(&prefix).is_some(), "the deletion is timed for the failover latency");
    assert_eq!(next.owner.as_deref(), Some("uid-1"), "next in create-revision order");
    assert!(next.token > first.token, "fencing token must grow");
    assert!(took < Duration::from_millis(100), "hand-over took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_holder_is_external_and_its_release_hands_the_lock_to_our_first_candidate() {
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let engine = engine_at(&endpoint, &unique_root("external")).await;
    let prefix = engine.lock_prefix("shop", "report", None).unwrap();
    let mut etcdctl = Peer::spawn(Command::new(etcd_bin("etcdctl")).args(["--endpoints", &endpoint, "lock", &prefix]));
    let external_key = etcdctl.wait_line(&prefix, Duration::from_secs(10));

    engine.sync(&prefix, &cands(2), 15).await.unwrap();
    let h = engine.holder(&prefix).unwrap();
    assert_eq!((h.key.as_str(), h.owner.as_deref()), (external_key.as_str(), None), "holder must be etcdctl's key");

    etcdctl.terminate();
    let h =
        until_mirror(&engine, "our candidate to hold", Duration::from_secs(10), |e| e.holder(&prefix).filter(|h| h.owner.is_some())).await;
    assert_eq!(h.owner.as_deref(), Some("uid-0"));
    assert_eq!(engine.sync(&prefix, &cands(2), 15).await.unwrap(), vec![], "the external key was never ours to touch");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_and_go_mutex_wait_while_we_hold_and_acquire_in_order_when_we_leave() {
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let engine = engine_at(&endpoint, &unique_root("interop")).await;
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(1), 15).await.unwrap();

    let mut etcdctl = Peer::spawn(Command::new(etcd_bin("etcdctl")).args(["--endpoints", &endpoint, "lock", &prefix]));
    until_mirror(&engine, "etcdctl's key", Duration::from_secs(10), |e| (e.keys(&prefix).len() == 2).then_some(())).await;
    let mut mutex = Peer::spawn(Command::new(etcd_bin("mutex")).args(["--endpoints", &endpoint, "--prefix", &prefix]));
    mutex.wait_line("waiting", Duration::from_secs(10));
    until_mirror(&engine, "the Go mutex's key", Duration::from_secs(10), |e| (e.keys(&prefix).len() == 3).then_some(())).await;
    // Both peers have their keys and watch ours: they must not have acquired.
    assert_eq!(engine.holder(&prefix).unwrap().owner.as_deref(), Some("uid-0"));
    assert!(!etcdctl.has_printed(&prefix), "etcdctl acquired while our candidate held the lock");
    assert!(!mutex.has_printed("acquired"), "Go Mutex acquired while our candidate held the lock");

    engine.sync(&prefix, &[], 15).await.unwrap(); // our candidate leaves
    etcdctl.wait_line(&prefix, Duration::from_secs(5));
    assert!(!mutex.has_printed("acquired"), "the Go Mutex must wait for etcdctl, which queued first");
    etcdctl.terminate();
    mutex.wait_line("acquired", Duration::from_secs(5));
    mutex.terminate();
}

/// The mirror lists page by page: one response with every key under the root passed gRPC's
/// 4 MiB message limit at 10,000 LeaderLocks × 3 pods, and a restarted controller could not start.
#[tokio::test(flavor = "multi_thread")]
async fn the_mirror_starts_over_more_keys_than_one_grpc_message_holds() {
    use etcd_client::{Txn, TxnOp};
    let etcd = EtcdServer::start();
    let root = unique_root("many");
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let value = "v".repeat(1024); // 5,000 keys of 1 KiB: over 4 MiB in all
    for lock in 0..50 {
        let puts: Vec<TxnOp> = (0..100).map(|i| TxnOp::put(format!("{root}locks/ns/l-{lock}/{i:04}"), value.clone(), None)).collect();
        c.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let engine = engine_at(&etcd.endpoint(), &root).await;
    let keys = engine.mirror().keys_under(&root);
    assert_eq!(keys.len(), 5000, "every key, once");
    assert_eq!(engine.keys(&format!("{root}locks/ns/l-49")).len(), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_engine_adopts_its_lease_changes_no_holder_and_writes_nothing() {
    let etcd = EtcdServer::start();
    let root = "/leaderlock.dev/";
    let first = engine_at(&etcd.endpoint(), root).await;
    let prefixes: Vec<String> = (0..5).map(|i| first.lock_prefix("shop", &format!("l{i}"), None).unwrap()).collect();
    for p in &prefixes {
        first.sync(p, &cands(3), 15).await.unwrap();
    }
    let holders: Vec<_> = prefixes.iter().map(|p| first.holder(p)).collect();
    drop(first); // a crash: no revoke, the lease lives on

    let before = revision(&etcd.endpoint()).await;
    let second = engine_at(&etcd.endpoint(), root).await;
    for p in &prefixes {
        assert_eq!(second.sync(p, &cands(3), 15).await.unwrap(), vec![], "adopting must recreate nothing");
    }
    assert_eq!(prefixes.iter().map(|p| second.holder(p)).collect::<Vec<_>>(), holders);
    assert_eq!(revision(&etcd.endpoint()).await, before, "a restart must not write to etcd");
}

/// The upgrade to cluster identities: keys written before (`leaderlock:<ns>/<pod>`, no cluster)
/// on our recorded lease are adopted as they are — no holder change, not one write — while a key
/// of that form on another cluster's lease is never touched.
#[tokio::test(flavor = "multi_thread")]
async fn keys_from_before_cluster_identities_are_adopted_without_a_write_and_others_kept() {
    let etcd = EtcdServer::start();
    let root = "/leaderlock.dev/";
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let ours = c.lease_grant(15, None).await.unwrap().id();
    let theirs = c.lease_grant(15, None).await.unwrap().id();
    c.put(format!("{root}leases/15"), ours.to_string(), None).await.unwrap();
    let (own, shared) = (format!("{root}locks/shop/ledger"), "/legacy/locks/job".to_string());
    let old = |lease| Some(etcd_client::PutOptions::new().with_lease(lease));
    c.put(format!("{own}/uid-0"), "leaderlock:ns/pod-0", old(ours)).await.unwrap();
    c.put(format!("{own}/uid-1"), "leaderlock:ns/pod-1", old(ours)).await.unwrap();
    c.put(format!("{shared}/uid-x"), "leaderlock:other/pod-x", old(theirs)).await.unwrap();
    c.put(format!("{shared}/uid-0"), "leaderlock:ns/pod-0", old(ours)).await.unwrap();
    let before = revision(&etcd.endpoint()).await;

    let client = connect(&EtcdConfig::new(vec![etcd.endpoint()])).await.unwrap();
    let cfg = EngineConfig {
        root: root.into(),
        allowed_prefixes: vec!["/legacy/locks/".into()],
        call_timeout: Duration::from_secs(5),
        cluster_id: test_cluster(),
    };
    let engine = Engine::start(client, cfg).await.unwrap();
    assert_eq!(engine.sync(&own, &cands(2), 15).await.unwrap(), vec![], "adopting old keys writes nothing");
    assert_eq!(engine.holder(&own).and_then(|h| h.owner).as_deref(), Some("uid-0"), "the holder stays");
    assert_eq!(engine.sync(&shared, &cands(1), 15).await.unwrap(), vec![]);
    let holder = engine.holder(&shared).unwrap();
    assert_eq!((holder.key.as_str(), holder.owner), ("/legacy/locks/job/uid-x", None), "not ours: a foreign holder");
    assert_eq!(revision(&etcd.endpoint()).await, before, "the upgrade wrote to etcd");

    // Leaving the shared lock deletes our old key, never theirs.
    let ops = engine.sync(&shared, &[], 15).await.unwrap();
    assert!(matches!(ops.as_slice(), [Op::Delete { key, .. }] if key.ends_with("/uid-0")), "{ops:?}");
    assert_eq!(engine.keys(&shared).iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["/legacy/locks/job/uid-x"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_lost_lease_keys_are_recreated_with_the_previous_holder_first() {
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let engine = engine_at(&endpoint, &unique_root("lost-lease")).await;
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    let order = vec![cand(2), cand(0), cand(1)];
    engine.sync(&prefix, &order, 15).await.unwrap();
    let before = engine.holder(&prefix).unwrap();
    assert_eq!(before.owner.as_deref(), Some("uid-2"));

    // The lease expires behind our back (an outage longer than the TTL).
    let session = engine.leases().session(15).unwrap();
    let lease = session.lease();
    let mut other = etcd_client::Client::connect([endpoint.as_str()], None).await.unwrap();
    other.lease_revoke(lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), session.lost()).await.expect("the session reports its lease lost");
    assert_eq!(engine.leases().live_id(15), None, "a lost lease is not handed out");
    until_mirror(&engine, "the keys to vanish", Duration::from_secs(5), |e| e.keys(&prefix).is_empty().then_some(())).await;

    engine.sync(&prefix, &cands(3), 15).await.unwrap(); // plain order: uid-0 first
    let after = engine.holder(&prefix).unwrap();
    assert_eq!(after.owner.as_deref(), Some("uid-2"), "the previous holder must keep the lock");
    assert!(after.token > before.token);
    assert_ne!(engine.leases().live_id(15), Some(lease), "a new lease replaces the lost one");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificates_and_password_auth() {
    let etcd = EtcdServer::start_with(true);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "leaderlock:s3cret"],
        &["role", "add", "leaderlock"],
        &["role", "grant-permission", "leaderlock", "--prefix=true", "readwrite", "/leaderlock.dev/"],
        &["user", "grant-role", "leaderlock", "leaderlock"],
        &["auth", "enable"],
    ] {
        let out = etcd.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tls = etcd.tls.as_ref().unwrap();
    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
    cfg.ca_file = Some(tls.ca.clone());
    cfg.cert_file = Some(tls.client_cert.clone());
    cfg.key_file = Some(tls.client_key.clone());
    cfg.username = Some("leaderlock".into());
    cfg.password = Some("s3cret".into());
    let client = connect(&cfg).await.unwrap();
    let engine = Engine::start(
        client,
        EngineConfig {
            root: "/leaderlock.dev/".into(),
            allowed_prefixes: vec![],
            call_timeout: Duration::from_secs(5),
            cluster_id: test_cluster(),
        },
    )
    .await
    .unwrap();
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(2), 15).await.unwrap();
    assert_eq!(engine.holder(&prefix).unwrap().owner.as_deref(), Some("uid-0"));

    cfg.password = Some("wrong".into());
    let err = connect(&cfg).await.err().expect("a wrong password must be refused");
    assert!(matches!(err, Error::Denied { .. }), "want a clear auth error, got: {err}");
    let mut no_cert = EtcdConfig::new(vec![etcd.endpoint()]);
    no_cert.ca_file = Some(tls.ca.clone());
    assert!(connect(&no_cert).await.is_err(), "etcd requires a client certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mirror_resumes_after_an_etcd_restart() {
    let mut etcd = EtcdServer::start();
    let engine = engine_at(&etcd.endpoint(), "/leaderlock.dev/").await;
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(2), 30).await.unwrap();
    let first = engine.holder(&prefix).unwrap();

    etcd.kill();
    etcd.restart();
    etcd.etcdctl(&["del", &first.key]);
    let h = until_mirror(&engine, "the mirror to see a change made after the restart", Duration::from_secs(20), |e| {
        e.holder(&prefix).filter(|h| h.key != first.key)
    })
    .await;
    assert_eq!(h.owner.as_deref(), Some("uid-1"));
    assert!(engine.mirror().restarts() >= 1);
    // The engine writes again once etcd is back: the deleted candidate rejoins.
    assert_eq!(engine.sync(&prefix, &cands(2), 30).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_mirror_relists_when_its_revision_was_compacted() {
    let etcd = EtcdServer::start();
    let mut proxy = TcpProxy::start(etcd.client_port).await;
    let engine = engine_at(&proxy.endpoint(), "/leaderlock.dev/").await;
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(2), 30).await.unwrap();
    let first = engine.holder(&prefix).unwrap();

    proxy.cut();
    etcd.etcdctl(&["del", &first.key]);
    etcd.etcdctl(&["put", "/leaderlock.dev/unrelated", "x"]);
    let out = etcd.etcdctl(&["get", "/leaderlock.dev/unrelated", "-w", "json"]);
    let rev = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["header"]["revision"].as_i64().unwrap();
    assert!(etcd.etcdctl(&["compact", &rev.to_string()]).status.success());
    proxy.restore().await;

    let h =
        until_mirror(&engine, "the relisted mirror", Duration::from_secs(20), |e| e.holder(&prefix).filter(|h| h.key != first.key)).await;
    assert_eq!(h.owner.as_deref(), Some("uid-1"));
}

#[test]
fn etcd_keys_outside_the_root_and_allowed_prefixes_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
        let client = connect(&EtcdConfig::new(vec![endpoint])).await.unwrap();
        let root = unique_root("allowed");
        let cfg = EngineConfig {
            root: root.clone(),
            allowed_prefixes: vec!["/legacy/locks/".into()],
            call_timeout: Duration::from_secs(5),
            cluster_id: test_cluster(),
        };
        let engine = Engine::start(client, cfg).await.unwrap();
        assert_eq!(engine.lock_prefix("ns", "a", Some("/legacy/locks/a")).unwrap(), "/legacy/locks/a");
        let own = format!("{root}locks/ns/custom");
        assert_eq!(engine.lock_prefix("ns", "a", Some(&own)).unwrap(), own, "the namespace's own area is fine");
        let (other_ns, leases, election) = (format!("{root}locks/other/a"), format!("{root}leases/15"), format!("{root}controller/x"));
        for bad in ["/legacy/other", "/legacy/locks/../../registry", "/registry/pods", &other_ns, &leases, &election] {
            let err = engine.lock_prefix("ns", "a", Some(bad)).unwrap_err();
            assert!(err.to_string().contains("--allowed-key-prefix"), "{err}");
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_keeps_watching_and_writing_through_the_loss_of_any_one_member() {
    let mut cluster = EtcdCluster::start(3);
    let client = connect(&EtcdConfig::new(cluster.endpoints())).await.unwrap();
    let cfg = EngineConfig {
        root: "/leaderlock.dev/".into(),
        allowed_prefixes: vec![],
        call_timeout: Duration::from_secs(5),
        cluster_id: test_cluster(),
    };
    let engine = Engine::start(client, cfg).await.unwrap();
    let prefix = engine.lock_prefix("shop", "ledger", None).unwrap();
    engine.sync(&prefix, &cands(3), 30).await.unwrap();
    // Whichever member the watch stream is on, losing it must not blind the mirror.
    for down in 0..3 {
        cluster.members[down].kill();
        let holder = engine.holder(&prefix).unwrap();
        let via = &cluster.members[(down + 1) % 3];
        // The survivors may need a moment to elect a new raft leader.
        common::wait_until("a delete through the surviving quorum", Duration::from_secs(30), || {
            via.etcdctl(&["del", &holder.key]).status.success().then_some(())
        });
        until_mirror(&engine, &format!("the change with member {down} down"), Duration::from_secs(20), |e| {
            e.holder(&prefix).filter(|h| h.key != holder.key)
        })
        .await;
        // ...and writes go through the remaining quorum: the deleted candidate rejoins.
        assert_eq!(engine.sync(&prefix, &cands(3), 30).await.unwrap().len(), 1);
        cluster.members[down].restart();
    }
}

/// Before: the last-holder and deleted-at maps kept one entry per lock prefix ever used, so a
/// controller under LeaderLock churn grew without bound. Now a lock whose keys are all gone
/// leaves no entry in either.
#[tokio::test(flavor = "multi_thread")]
async fn locks_that_are_released_or_emptied_leave_no_map_entries() {
    let endpoint = env("LEADERLOCK_ETCD_ENDPOINTS");
    let engine = engine_at(&endpoint, &unique_root("maps")).await;
    let mut other = etcd_client::Client::connect([endpoint.as_str()], None).await.unwrap();
    for round in 0..3 {
        let prefixes: Vec<String> = (0..10).map(|i| engine.lock_prefix("shop", &format!("l{round}-{i}"), None).unwrap()).collect();
        for p in &prefixes {
            engine.sync(p, &cands(3), 15).await.unwrap();
            // A failover in each lock: the deletion is timed while candidates remain.
            other.delete(engine.holder(p).unwrap().key, None).await.unwrap();
        }
        until_mirror(&engine, "every failover", Duration::from_secs(10), |e| (e.mirror().deleted_at_len() == 10).then_some(())).await;
        assert_eq!(engine.holder_map_len(), 10);
        // Half the locks go with their LeaderLock, the other half lose every candidate.
        for (i, p) in prefixes.iter().enumerate() {
            if i % 2 == 0 {
                engine.release_all(p).await.unwrap();
            } else {
                engine.sync(p, &[], 15).await.unwrap();
            }
            assert!(engine.keys(p).is_empty());
        }
        assert_eq!(engine.holder_map_len(), 0, "round {round}: no holder remembered for a lock without candidates");
        assert_eq!(engine.mirror().deleted_at_len(), 0, "round {round}: no deletion time kept for a lock without keys");
    }
}
