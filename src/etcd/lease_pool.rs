//! The candidate keys' leases: one controller-owned [`Session`] per TTL value (not one per pod),
//! so a handful of keep-alive streams serve however many pods compete.
//!
//! Lease IDs are recorded under `<root>leases/<ttl>`; a restarted or newly elected controller
//! adopts a recorded lease that is still alive, so it recreates no key and changes no holder.
//! When a lease is lost anyway (etcd or every controller away longer than the TTL), the keys on
//! it are gone; the next [`LeasePool::get`] grants a new one.
//!
//! A lease that goes unrenewed for half its TTL is *at risk* ([`LeasePool::is_at_risk`]): the
//! controller stops calling the pods holding on it leaders before etcd could expire it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::Client;

use super::session::{Renewal, Session, at_risk_after};
use super::{Result, call, retry};
use crate::keyspace::Keyspace;

/// Controller-owned leases, one per TTL, kept alive in the background.
pub struct LeasePool {
    client: Client,
    keyspace: Keyspace,
    timeout: Duration,
    /// TTL seconds → its session (possibly lost: replaced on the next `get`).
    live: Mutex<BTreeMap<i64, Session>>,
    /// Serialises adopting/granting: concurrent first reconciles must end up on one lease, the
    /// one recorded (else the record could name a lease nobody keeps alive).
    acquiring: tokio::sync::Mutex<()>,
    /// Bumped whenever a session's risk may have changed (at risk, renewed again, lost).
    risk: tokio::sync::watch::Sender<u64>,
}

impl LeasePool {
    pub fn new(client: Client, keyspace: Keyspace, timeout: Duration) -> Self {
        LeasePool { client, keyspace, timeout, live: Mutex::default(), acquiring: Default::default(), risk: Default::default() }
    }

    /// The record key of the lease for `ttl` seconds.
    pub fn record_key(&self, ttl: i64) -> String {
        self.keyspace.lease_record(ttl)
    }

    /// The live lease for `ttl` seconds: the one already kept alive, else the recorded one if
    /// etcd still has it (adoption: no write), else a newly granted and recorded one.
    pub async fn get(&self, ttl: i64) -> Result<i64> {
        if let Some(id) = self.live_id(ttl) {
            return Ok(id);
        }
        let _one_at_a_time = self.acquiring.lock().await;
        if let Some(id) = self.live_id(ttl) {
            return Ok(id); // another caller adopted or granted it while we waited
        }
        tracing::debug!(ttl, "lease: reading the recorded lease");
        let renewal = Renewal::lock_leases(ttl);
        let session = match self.recorded_alive(ttl).await? {
            Some((id, renewed)) => {
                tracing::info!(lease = id, ttl, "adopted recorded lease");
                Session::attach(&self.client, id, ttl, renewed, renewal, self.timeout)
            }
            None => self.grant_and_record(ttl, renewal).await?,
        };
        let id = session.lease();
        self.forward_risk(&session);
        self.sessions().insert(ttl, session);
        Ok(id)
    }

    /// Whether `lease` is one of ours that may expire soon or is gone (no I/O). A lease the pool
    /// does not keep is not judged here.
    pub fn is_at_risk(&self, lease: i64) -> bool {
        self.sessions().values().any(|s| s.lease() == lease && s.is_at_risk())
    }

    /// Whether every lease the pool keeps is at risk or lost (true when it keeps none): nothing
    /// of ours can still be called leader.
    pub fn all_at_risk(&self) -> bool {
        self.sessions().values().all(Session::is_at_risk)
    }

    /// The longest a lease of the pool can go unrenewed before it counts as at risk.
    pub fn longest_risk_window(&self) -> Duration {
        self.sessions().keys().map(|ttl| at_risk_after(*ttl)).max().unwrap_or_default()
    }

    /// Changes whenever [`LeasePool::is_at_risk`] may have changed for some lease.
    pub fn risk_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.risk.subscribe()
    }

    /// Relays `session`'s risk changes (and its end) to [`LeasePool::risk_changes`] until it ends.
    fn forward_risk(&self, session: &Session) {
        let (mut changes, pool) = (session.risk_changes(), self.risk.clone());
        tokio::spawn(async move {
            loop {
                let ended = changes.changed().await.is_err();
                pool.send_modify(|generation| *generation += 1);
                if ended {
                    return;
                }
            }
        });
    }

    /// The session for `ttl`, if one was started (no I/O): whoever must learn of its loss waits
    /// on [`Session::lost`].
    pub fn session(&self, ttl: i64) -> Option<Session> {
        self.sessions().get(&ttl).cloned()
    }

    /// The lease currently kept alive for `ttl`, if any (no I/O).
    pub fn live_id(&self, ttl: i64) -> Option<i64> {
        self.session(ttl).filter(|s| !s.is_lost()).map(|s| s.lease())
    }

    /// How many sessions the pool holds: at most one per distinct `ttlSeconds` in use.
    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Revokes every lease (deleting its keys) — for a clean uninstall and for tests.
    pub async fn revoke_all(&self) -> Result<()> {
        let sessions = std::mem::take(&mut *self.sessions());
        for session in sessions.into_values() {
            session.close().await?;
        }
        Ok(())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Session>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts).
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The recorded lease for `ttl` if etcd still has it, with the earliest moment etcd could
    /// expire it.
    async fn recorded_alive(&self, ttl: i64) -> Result<Option<(i64, Instant)>> {
        let (c, t, key) = (&self.client, self.timeout, self.record_key(ttl));
        let resp = retry(5, || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { call("get lease record", t, c.get(key, None)).await }
        })
        .await?;
        let Some(id) = resp.kvs().first().and_then(|kv| kv.value_str().ok()?.parse::<i64>().ok()) else {
            return Ok(None);
        };
        let asked = Instant::now();
        let alive = retry(5, || {
            let mut c = c.clone();
            async move { call("lease time-to-live", t, c.lease_time_to_live(id, None)).await }
        })
        .await?;
        if alive.ttl() <= 0 {
            return Ok(None);
        }
        // etcd answers whole seconds left, rounded down, as of some moment after we asked.
        let mut expires = asked + Duration::from_secs(alive.ttl() as u64);
        // Adopting renews the lease once (a keep-alive changes no revision): a lease left
        // unrenewed for half its TTL while controllers changed hands would otherwise count as at
        // risk at once, and its holders would be demoted and promoted again. If the renewal
        // fails, the keeper retries it and the expiry read above stands.
        let sent = Instant::now();
        if self.renew_once(id).await {
            expires = expires.max(sent + Duration::from_secs(ttl.max(0) as u64));
        }
        Ok(Some((id, expires)))
    }

    /// One keep-alive of `id`; whether etcd confirmed it.
    async fn renew_once(&self, id: i64) -> bool {
        let (mut c, t) = (self.client.clone(), self.timeout);
        let renewed = async {
            let (mut keeper, mut stream) = call("lease keep-alive", t, c.lease_keep_alive(id)).await?;
            call("lease keep-alive", t, keeper.keep_alive()).await?;
            call("lease keep-alive", t, stream.message()).await
        };
        matches!(renewed.await, Ok(Some(r)) if r.ttl() > 0)
    }

    async fn grant_and_record(&self, ttl: i64, renewal: Renewal) -> Result<Session> {
        let (c, t, key) = (&self.client, self.timeout, self.record_key(ttl));
        let session = retry(5, || Session::grant(c, ttl, renewal, t)).await?;
        let id = session.lease();
        retry(5, || {
            let (mut c, key) = (c.clone(), key.clone());
            async move { call("put lease record", t, c.put(key, id.to_string(), None)).await }
        })
        .await?;
        tracing::info!(lease = id, ttl, "granted and recorded a new lease");
        Ok(session)
    }
}
