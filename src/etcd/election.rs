//! Which controller replica is active: etcd's election recipe under `<root>controller/`, like
//! `concurrency.Election`. Each replica creates one key on its own short session lease; the
//! lowest create revision is active; the others wait — on a watch of the next older key, not a
//! poll. When the active replica dies its lease expires after `ttl`, its key goes, and the next
//! replica takes over, adopting the recorded lock leases before they expire (see [`super::session`]).

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::session::{WhenUnsure, keep_alive};
use super::{Error, Result, call};

/// This replica is active until [`Leadership::lost`] resolves.
pub struct Leadership {
    pub key: String,
    pub lease: i64,
    client: Client,
    timeout: Duration,
    alive: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the session lease is gone (etcd unreachable longer than the TTL, or revoked):
    /// another replica may be active now, so this one must stop acting at once.
    pub async fn lost(&mut self) {
        while *self.alive.borrow() {
            if self.alive.changed().await.is_err() {
                return;
            }
        }
    }

    /// Steps down (graceful shutdown): revoking the lease hands over without waiting for the TTL.
    /// The lock leases are not touched: the next replica adopts them.
    pub async fn resign(self) {
        self.keeper.abort();
        let mut c = self.client.clone();
        if let Err(e) = call("lease revoke", self.timeout, c.lease_revoke(self.lease)).await {
            tracing::warn!(error = %e, "could not resign; the standby takes over when the lease expires");
        }
    }
}

/// Campaigns under `<root>controller/` and returns once this replica is active.
pub async fn campaign(client: &Client, root: &str, instance: &str, ttl: i64, timeout: Duration) -> Result<Leadership> {
    let mut c = client.clone();
    let lease = call("lease grant", timeout, c.lease_grant(ttl, None)).await?.id();
    let (alive_tx, alive) = watch::channel(true);
    // Gives up after a whole TTL without renewal unless etcd confirms the lease is still alive:
    // on a lease that may be gone, another replica may already be active.
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let keeper_client = client.clone();
    let keeper = tokio::spawn(async move {
        keep_alive(&keeper_client, lease, ttl, period, timeout, WhenUnsure::GiveUp).await;
        let _ = alive_tx.send(false);
    });
    let dir = format!("{root}controller/");
    let key = format!("{dir}{lease:x}");
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), instance, Some(PutOptions::new().with_lease(lease))), TxnOp::get(key.clone(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = call("campaign", timeout, c.txn(txn)).await?;
    let my_rev = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        })
        .ok_or_else(|| Error::WatchEnded("campaign key vanished right after creation".into()))?;
    let mut leadership = Leadership { key, lease, client: client.clone(), timeout, alive, keeper };
    loop {
        let older = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(my_rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let resp = call("campaign read", timeout, c.get(dir.clone(), Some(older))).await?;
        let Some(prev) = resp.kvs().first() else { return Ok(leadership) };
        let prev_key = prev.key().to_vec();
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        tracing::info!(waiting_for = %String::from_utf8_lossy(prev.value()), "standby: another replica is active");
        tokio::select! {
            r = wait_deleted(&mut c, prev_key, from) => r?,
            _ = leadership.lost() => return Err(Error::LeaseLost { lease }),
        }
    }
}

/// Waits (on a watch) until `key` is deleted.
async fn wait_deleted(c: &mut Client, key: Vec<u8>, from: i64) -> Result<()> {
    let mut stream =
        c.watch(key, Some(WatchOptions::new().with_start_revision(from))).await.map_err(|source| Error::Call { op: "watch", source })?;
    loop {
        match stream.message().await {
            Ok(Some(r)) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => return Ok(()),
            Ok(Some(r)) if r.canceled() || r.compact_revision() > 0 => return Ok(()), // re-read and decide again
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::WatchEnded("election watch closed".into())),
            Err(source) => return Err(Error::Call { op: "watch", source }),
        }
    }
}

/// The election on its own thread, runtime and etcd connection: a controller saturated by
/// reconciles (CPU-bound work on every worker thread) must still renew its election lease on time,
/// or it would lose the election it holds and restart in a loop.
pub struct ElectionThread {
    elected: Option<tokio::sync::oneshot::Receiver<std::result::Result<String, String>>>,
    alive: watch::Receiver<bool>,
    resign: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ElectionThread {
    /// Starts campaigning under `<root>controller/` as `instance`.
    pub fn start(cfg: super::EtcdConfig, root: String, instance: String, ttl: i64) -> std::io::Result<Self> {
        let (elected_tx, elected) = tokio::sync::oneshot::channel();
        let (alive_tx, alive) = watch::channel(true);
        let (resign, resign_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("election".into()).spawn(move || {
            rt.block_on(async move {
                let won = async {
                    let client = super::connect(&cfg).await?;
                    campaign(&client, &root, &instance, ttl, cfg.call_timeout).await
                };
                match won.await {
                    Ok(mut leadership) => {
                        let _ = elected_tx.send(Ok(leadership.key.clone()));
                        tokio::select! {
                            () = leadership.lost() => { let _ = alive_tx.send(false); }
                            _ = resign_rx => leadership.resign().await,
                        }
                    }
                    Err(e) => {
                        let _ = elected_tx.send(Err(e.to_string()));
                    }
                }
            })
        })?;
        Ok(ElectionThread { elected: Some(elected), alive, resign: Some(resign), thread: Some(thread) })
    }

    /// Waits until this replica is active; returns its election key.
    pub async fn elected(&mut self) -> std::result::Result<String, String> {
        match self.elected.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| Err("the election thread ended".into())),
            None => Err("already elected".into()),
        }
    }

    /// Resolves when the election lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.alive.wait_for(|alive| !*alive).await;
    }

    /// Steps down and waits for the revoke to be sent.
    pub async fn resign(mut self) {
        if let Some(tx) = self.resign.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
