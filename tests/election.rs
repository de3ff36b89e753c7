//! The replica election against a real etcd (docs/contract.md §5: several replicas, one active):
//! a standby keeps its place through transient etcd errors, and a campaign that gives up leaves
//! no lease behind.
mod common;

use std::time::Duration;

use common::etcd::{EtcdServer, TcpProxy};
use common::k8s::eventually;
use leaderlock::etcd::election::campaign;
use leaderlock::etcd::{EtcdConfig, connect};

const ROOT: &str = "/leaderlock.dev/";
const TIMEOUT: Duration = Duration::from_secs(2);

/// The election keys under `<root>controller/`, as (key, lease) pairs.
async fn election_keys(endpoint: &str) -> Vec<(String, i64)> {
    let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = c.get(format!("{ROOT}controller/"), Some(opts)).await.unwrap();
    resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease())).collect()
}

/// Before: the broken watch ended the standby's campaign with an error, and the controller
/// exited. Now it keeps campaigning (a new session once the old lease is gone) and takes over
/// when the active replica resigns.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_keeps_campaigning_through_a_broken_watch_and_takes_over_later() {
    let etcd = EtcdServer::start();
    let mut proxy = TcpProxy::start(etcd.client_port).await;
    let direct = connect(&EtcdConfig::new(vec![etcd.endpoint()])).await.unwrap();
    let active = campaign(&direct, ROOT, "active", 2, TIMEOUT).await.unwrap();

    let via_proxy = connect(&EtcdConfig::new(vec![proxy.endpoint()])).await.unwrap();
    let mut standby = tokio::spawn(async move { campaign(&via_proxy, ROOT, "standby", 2, TIMEOUT).await });
    let (first_key, _) = eventually("the standby's election key", Duration::from_secs(10), async || {
        election_keys(&etcd.endpoint()).await.into_iter().find(|(k, _)| *k != active.key)
    })
    .await;

    // A partition longer than the election TTL: the standby's watch breaks and its lease expires.
    proxy.cut();
    eventually("the standby's lease to expire", Duration::from_secs(15), async || {
        (!election_keys(&etcd.endpoint()).await.iter().any(|(k, _)| *k == first_key)).then_some(())
    })
    .await;
    if standby.is_finished() {
        let ended = (&mut standby).await.unwrap();
        panic!("the standby stopped campaigning on a transient error: {:?}", ended.err());
    }
    proxy.restore().await;
    eventually("the standby to campaign again", Duration::from_secs(15), async || {
        (election_keys(&etcd.endpoint()).await.len() == 2).then_some(())
    })
    .await;

    active.resign().await;
    let won = tokio::time::timeout(Duration::from_secs(10), standby).await.expect("the standby takes over").unwrap();
    let won = won.expect("the standby's campaign succeeds");
    assert_eq!(election_keys(&etcd.endpoint()).await, vec![(won.key.clone(), won.lease)], "no key left from the broken attempt");
}

/// Before: a campaign that failed for good returned its error but left its lease granted and
/// kept alive by a detached keeper. Now it resigns: the lease is revoked before the error returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_that_fails_for_good_revokes_its_lease() {
    let etcd = EtcdServer::start();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "reader:pw"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "--prefix=true", "read", ROOT],
        &["user", "grant-role", "reader", "reader"],
        &["auth", "enable"],
    ] {
        let out = etcd.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
    cfg.username = Some("reader".into());
    cfg.password = Some("pw".into());
    let reader = connect(&cfg).await.unwrap();

    let err = campaign(&reader, ROOT, "reader", 2, TIMEOUT).await.err().expect("a read-only user cannot campaign");
    assert!(!err.is_transient(), "permission denied is not transient: {err}");

    cfg.username = Some("root".into());
    cfg.password = Some("rootpw".into());
    let mut root = connect(&cfg).await.unwrap();
    let leases = root.leases().await.unwrap();
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, Vec::<i64>::new(), "the failed campaign's lease must be revoked");
}
