//! The lease owner, like etcd's `concurrency.Session` but one lease per TTL value for all the
//! candidate keys of this controller (not one per pod): a handful of keep-alive streams however
//! many pods compete.
//!
//! Lease IDs are recorded under `<root>leases/<ttl>`; a restarted or newly elected controller
//! adopts a recorded lease that is still alive, so it recreates no key and changes no holder.
//! When a lease expires anyway (etcd or every controller away longer than the TTL), the keys on
//! it are gone; [`Leases::lost`] says so and the next [`Leases::get`] grants a new one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Backoff, Error, Result, call, retry};

/// Controller-owned leases, one per TTL, kept alive in the background.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Root prefix; records live under `<root>leases/`.
    root: String,
    timeout: Duration,
    /// TTL seconds → the live lease and its keep-alive task.
    live: Mutex<BTreeMap<i64, Live>>,
    /// Lease IDs that expired, for whoever must recreate keys.
    lost: broadcast::Sender<i64>,
    /// Serialises adopting/granting: concurrent first reconciles must end up on one lease, the
    /// one recorded (else the record could name a lease nobody keeps alive).
    acquiring: tokio::sync::Mutex<()>,
}

struct Live {
    id: i64,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(live) = self.live.lock() {
            live.values().for_each(|l| l.task.abort());
        }
    }
}

impl Leases {
    pub fn new(client: Client, root: &str, timeout: Duration) -> Self {
        let (lost, _) = broadcast::channel(64);
        Leases {
            inner: Arc::new(Inner { client, root: root.to_string(), timeout, live: Mutex::default(), lost, acquiring: Default::default() }),
        }
    }

    /// Notifies lease IDs that expired: their keys were deleted by etcd.
    pub fn lost(&self) -> broadcast::Receiver<i64> {
        self.inner.lost.subscribe()
    }

    /// The record key of the lease for `ttl` seconds.
    pub fn record_key(&self, ttl: i64) -> String {
        format!("{}leases/{ttl}", self.inner.root)
    }

    /// The live lease for `ttl` seconds: the one already kept alive, else the recorded one if
    /// etcd still has it (adoption: no write), else a newly granted and recorded one.
    pub async fn get(&self, ttl: i64) -> Result<i64> {
        if let Some(id) = self.live_id(ttl) {
            return Ok(id);
        }
        let _one_at_a_time = self.inner.acquiring.lock().await;
        if let Some(id) = self.live_id(ttl) {
            return Ok(id); // another caller adopted or granted it while we waited
        }
        tracing::debug!(ttl, "lease: reading the recorded lease");
        let id = match self.recorded_alive(ttl).await? {
            Some(id) => {
                tracing::info!(lease = id, ttl, "adopted recorded lease");
                id
            }
            None => self.grant_and_record(ttl).await?,
        };
        let mut live = self.inner.live.lock().expect("lease map poisoned");
        let task = tokio::spawn(hold(self.inner.clone(), ttl, id));
        live.insert(ttl, Live { id, task });
        Ok(id)
    }

    /// The lease currently kept alive for `ttl`, if any (no I/O).
    pub fn live_id(&self, ttl: i64) -> Option<i64> {
        self.inner.live.lock().expect("lease map poisoned").get(&ttl).map(|l| l.id)
    }

    async fn recorded_alive(&self, ttl: i64) -> Result<Option<i64>> {
        let (c, t, key) = (&self.inner.client, self.inner.timeout, self.record_key(ttl));
        let resp = retry(5, || {
            let mut c = c.clone();
            let key = key.clone();
            async move { call("get lease record", t, c.get(key, None)).await }
        })
        .await?;
        let Some(id) = resp.kvs().first().and_then(|kv| kv.value_str().ok()?.parse::<i64>().ok()) else {
            return Ok(None);
        };
        let ttl_resp = retry(5, || {
            let mut c = c.clone();
            async move { call("lease time-to-live", t, c.lease_time_to_live(id, None)).await }
        })
        .await?;
        Ok((ttl_resp.ttl() > 0).then_some(id))
    }

    async fn grant_and_record(&self, ttl: i64) -> Result<i64> {
        let (c, t, key) = (&self.inner.client, self.inner.timeout, self.record_key(ttl));
        let grant = retry(5, || {
            let mut c = c.clone();
            async move { call("lease grant", t, c.lease_grant(ttl, None)).await }
        })
        .await?;
        let id = grant.id();
        retry(5, || {
            let mut c = c.clone();
            let key = key.clone();
            async move { call("put lease record", t, c.put(key, id.to_string(), None)).await }
        })
        .await?;
        tracing::info!(lease = id, ttl, "granted and recorded a new lease");
        Ok(id)
    }

    /// Revokes every live lease (deleting its keys) — for a clean uninstall and for tests.
    pub async fn revoke_all(&self) -> Result<()> {
        let live: Vec<(i64, Live)> = std::mem::take(&mut *self.inner.live.lock().expect("lease map poisoned")).into_iter().collect();
        for (_, l) in live {
            l.task.abort();
            let mut c = self.inner.client.clone();
            call("lease revoke", self.inner.timeout, c.lease_revoke(l.id)).await?;
        }
        Ok(())
    }
}

/// Keeps the lease for `ttl` alive; when it expires, forgets it and reports it lost.
async fn hold(inner: Arc<Inner>, ttl: i64, id: i64) {
    // A third of the TTL, at most 2 s: after a crash of the active controller, the lease keeps
    // at least TTL - 2 s for a standby to take over and adopt it.
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).clamp(500, 2000));
    keep_alive(&inner.client, id, ttl, period, inner.timeout, WhenUnsure::KeepTrying).await;
    tracing::warn!(lease = id, ttl, "lease expired; its candidate keys are gone and will be recreated");
    if let Ok(mut live) = inner.live.lock()
        && live.get(&ttl).is_some_and(|l| l.id == id)
    {
        live.remove(&ttl);
    }
    let _ = inner.lost.send(id);
}

/// What [`keep_alive`] does when no renewal succeeded for a whole TTL and etcd cannot be asked
/// whether the lease is still alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnsure {
    /// Treat it as lost: the replica election, where acting on a lease that may be gone could
    /// make two replicas active.
    GiveUp,
    /// Keep trying: the lock leases, whose keys etcd itself deletes if the lease does expire.
    KeepTrying,
}

/// Renews `lease` every `period` over one keep-alive stream, reopening the stream after errors
/// (retrying at least every `period`). Returns when the lease is gone: etcd says it expired, or
/// — after a whole TTL without a renewal — etcd cannot confirm it and `unsure` says give up.
pub async fn keep_alive(client: &Client, lease: i64, ttl: i64, period: Duration, timeout: Duration, unsure: WhenUnsure) {
    let mut backoff = Backoff::default();
    let mut last_renewed = Instant::now();
    loop {
        if let Err(Error::LeaseLost { .. }) = renew_until_error(client, lease, period, timeout, &mut last_renewed, &mut backoff).await {
            return;
        }
        if last_renewed.elapsed() >= Duration::from_secs(ttl as u64) {
            // No renewal for a whole TTL here (etcd away, a busy machine): etcd decides.
            let mut c = client.clone();
            match call("lease time-to-live", timeout, c.lease_time_to_live(lease, None)).await {
                // Alive for r.ttl() more seconds at most: check again by then.
                Ok(r) if r.ttl() > 0 => {
                    let spent = Duration::from_secs((ttl - r.ttl()).max(0) as u64);
                    last_renewed = Instant::now().checked_sub(spent).unwrap_or_else(Instant::now);
                }
                Ok(_) => return,
                Err(_) if unsure == WhenUnsure::GiveUp => return,
                Err(_) => {}
            }
        }
        tokio::time::sleep(backoff.next_delay().min(period)).await;
    }
}

async fn renew_until_error(
    client: &Client,
    id: i64,
    period: Duration,
    timeout: Duration,
    last_renewed: &mut Instant,
    backoff: &mut Backoff,
) -> Result<()> {
    let mut c = client.clone();
    let (mut keeper, mut stream) = call("lease keep-alive", timeout, c.lease_keep_alive(id)).await?;
    loop {
        call("lease keep-alive", timeout, keeper.keep_alive()).await?;
        let resp = call("lease keep-alive", timeout, stream.message()).await?;
        match resp {
            Some(r) if r.ttl() > 0 => {
                *last_renewed = Instant::now();
                *backoff = Backoff::default();
            }
            Some(_) => return Err(Error::LeaseLost { lease: id }),
            None => return Err(Error::WatchEnded("keep-alive stream closed".into())),
        }
        tokio::time::sleep(period).await;
    }
}
