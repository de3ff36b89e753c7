//! Which controller replica is active: etcd's election recipe under `<root>controller/`, like
//! `concurrency.Election`. Each replica creates one key on its own short session lease; the
//! lowest create revision is active; the others wait — on a watch of the next older key, not a
//! poll. When the active replica dies its lease expires after `ttl`, its key goes, and the next
//! replica takes over, adopting the recorded lock leases before they expire (see [`super::session`]).

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, timeout, alive_tx));
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
    let mut stream = c
        .watch(key, Some(WatchOptions::new().with_start_revision(from)))
        .await
        .map_err(|source| Error::Call { op: "watch", source })?;
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

/// Renews the session lease every third of its TTL; reports it lost when etcd says it expired
/// or when no renewal succeeded for a whole TTL.
async fn keep_alive(client: Client, lease: i64, ttl: i64, timeout: Duration, alive: watch::Sender<bool>) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let mut last_ok = Instant::now();
    loop {
        let mut c = client.clone();
        if let Ok((mut keeper, mut stream)) = call("lease keep-alive", timeout, c.lease_keep_alive(lease)).await {
            loop {
                if call("lease keep-alive", timeout, keeper.keep_alive()).await.is_err() {
                    break;
                }
                match call("lease keep-alive", timeout, stream.message()).await {
                    Ok(Some(r)) if r.ttl() > 0 => last_ok = Instant::now(),
                    Ok(Some(_)) => {
                        let _ = alive.send(false);
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
        }
        if last_ok.elapsed() >= Duration::from_secs(ttl as u64) {
            // No renewal for a whole TTL here (a busy machine, a slow etcd): etcd decides. While
            // it still has the lease nobody else can be active; if it cannot say, step down.
            let mut c = client.clone();
            match call("lease time-to-live", timeout, c.lease_time_to_live(lease, None)).await {
                // Alive for r.ttl() more seconds at most: check again by then.
                Ok(r) if r.ttl() > 0 => {
                    let spent = Duration::from_secs((ttl - r.ttl()).max(0) as u64);
                    last_ok = Instant::now().checked_sub(spent).unwrap_or_else(Instant::now);
                }
                _ => {
                    let _ = alive.send(false);
                    return;
                }
            }
        }
        tokio::time::sleep(period / 2).await;
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
