//! One lease kept alive, like etcd's `concurrency.Session`: granted (or attached to an existing
//! lease, to adopt it), renewed in the background by a policy, with one signal when it is lost
//! and one while it is at risk (unrenewed for half its TTL: etcd may expire it soon).
//! Both owners of leases use it: the replica election (one session per campaign) and the
//! [`super::lease_pool`] (one session per TTL value for every candidate key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backoff, Error, Result, call};

/// What the keep-alive does when no renewal succeeded for a whole TTL and etcd cannot be asked
/// whether the lease is still alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnsure {
    /// Treat it as lost: the replica election, where acting on a lease that may be gone could
    /// make two replicas active.
    GiveUp,
    /// Keep trying: the lock leases, whose keys etcd itself deletes if the lease does expire.
    KeepTrying,
}

/// How often a session renews its lease and when it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub period: Duration,
    pub when_unsure: WhenUnsure,
}

impl Renewal {
    /// The replica election: a third of the TTL (at least 300 ms), and give up when unsure —
    /// another replica may already be active on a lease that may be gone.
    pub fn election(ttl: i64) -> Self {
        Renewal { period: Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).max(300)), when_unsure: WhenUnsure::GiveUp }
    }

    /// The lock leases: a third of the TTL, at most 2 s — after a crash of the active controller
    /// the lease keeps at least TTL − 2 s for a standby to take over and adopt it.
    pub fn lock_leases(ttl: i64) -> Self {
        Renewal { period: Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).clamp(500, 2000)), when_unsure: WhenUnsure::KeepTrying }
    }
}

/// How long after the last confirmed renewal a lease counts as at risk: half its TTL. That is
/// more than a renewal period plus a round trip (no flap while etcd answers), and leaves half
/// the TTL to demote the pods holding on it before etcd could expire it (docs/contract.md §4.7).
pub fn at_risk_after(ttl: i64) -> Duration {
    Duration::from_millis(ttl.max(1) as u64 * 1000 / 2)
}

/// The time left, once a lease is at risk, before etcd could expire it.
fn demotion_window(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(1) as u64).saturating_sub(at_risk_after(ttl))
}

/// A lease kept alive until it is lost, closed, or the last clone is dropped (then it is
/// orphaned: no longer renewed, not revoked, so the next owner can still adopt it).
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    lease: i64,
    ttl: i64,
    timeout: Duration,
    /// True while the lease is kept alive; false (or closed) once it is lost or closed.
    alive: watch::Receiver<bool>,
    /// True while no renewal was confirmed for [`at_risk_after`] the TTL: etcd may expire the
    /// lease soon, so whoever acts on keys attached to it must stop first.
    at_risk: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
    risk: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keeper.abort();
        self.risk.abort();
    }
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts keeping it alive.
    pub async fn grant(client: &Client, ttl: i64, renewal: Renewal, timeout: Duration) -> Result<Session> {
        let mut c = client.clone();
        let expires = Instant::now() + Duration::from_secs(ttl.max(0) as u64);
        let lease = call("lease grant", timeout, c.lease_grant(ttl, None)).await?.id();
        Ok(Self::attach(client, lease, ttl, expires, renewal, timeout))
    }

    /// Keeps an existing lease alive (adoption: no write). The caller has checked it is alive,
    /// and that etcd cannot expire it before `expires` (the risk is counted from there).
    pub fn attach(client: &Client, lease: i64, ttl: i64, expires: Instant, renewal: Renewal, timeout: Duration) -> Session {
        let (alive_tx, alive) = watch::channel(true);
        let (renewed_tx, renewed) = watch::channel(expires);
        let (at_risk_tx, at_risk) = watch::channel(false);
        let keeper_client = client.clone();
        let keeper = tokio::spawn(async move {
            keep_alive(&keeper_client, lease, ttl, renewal, timeout, &renewed_tx).await;
            tracing::warn!(lease, ttl, "lease lost: the keys attached to it are gone");
            let _ = alive_tx.send(false);
        });
        let risk = tokio::spawn(watch_risk(lease, demotion_window(ttl), renewed, at_risk_tx));
        Session { inner: Arc::new(Inner { client: client.clone(), lease, ttl, timeout, alive, at_risk, keeper, risk }) }
    }

    /// The lease ID to attach keys to.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    pub fn ttl(&self) -> i64 {
        self.inner.ttl
    }

    /// Whether the lease is known to be gone (no I/O).
    pub fn is_lost(&self) -> bool {
        // A keeper that was aborted (closed) never said false: its dropped sender says it.
        !*self.inner.alive.borrow() || self.inner.alive.has_changed().is_err()
    }

    /// Whether the lease may expire soon or is gone (no I/O): no renewal confirmed for
    /// [`at_risk_after`] its TTL, or lost, or closed.
    pub fn is_at_risk(&self) -> bool {
        self.is_lost() || *self.inner.at_risk.borrow()
    }

    /// A receiver that changes whenever [`Session::is_at_risk`] may have changed.
    pub fn risk_changes(&self) -> watch::Receiver<bool> {
        self.inner.at_risk.clone()
    }

    /// Resolves when the lease is no longer kept alive: etcd says it expired, the policy gave up,
    /// or the session was closed.
    pub async fn lost(&self) {
        let mut alive = self.inner.alive.clone();
        let _ = alive.wait_for(|alive| !*alive).await;
    }

    /// Stops the keep-alive and revokes the lease, deleting every key attached to it at once
    /// (instead of after the TTL). A revoke that fails leaves the lease to expire.
    pub async fn close(self) -> Result<()> {
        self.inner.keeper.abort();
        self.inner.risk.abort();
        let mut c = self.inner.client.clone();
        call("lease revoke", self.inner.timeout, c.lease_revoke(self.inner.lease)).await.map(drop)
    }
}

/// Renews `lease` every `renewal.period` over one keep-alive stream, reopening the stream after
/// errors (retrying at least every period). Returns when the lease is gone: etcd says it
/// expired, or — after a whole TTL without a renewal — etcd cannot confirm it and the policy
/// says give up.
async fn keep_alive(client: &Client, lease: i64, ttl: i64, renewal: Renewal, timeout: Duration, expires: &watch::Sender<Instant>) {
    let mut backoff = Backoff::default();
    let mut last_renewed = Instant::now();
    loop {
        if let Err(Error::LeaseLost { .. }) =
            renew_until_error(client, lease, ttl, renewal.period, timeout, &mut last_renewed, &mut backoff, expires).await
        {
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
                Err(_) if renewal.when_unsure == WhenUnsure::GiveUp => return,
                Err(_) => {}
            }
        }
        tokio::time::sleep(backoff.next_delay().min(renewal.period)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn renew_until_error(
    client: &Client,
    id: i64,
    ttl: i64,
    period: Duration,
    timeout: Duration,
    last_renewed: &mut Instant,
    backoff: &mut Backoff,
    expires: &watch::Sender<Instant>,
) -> Result<()> {
    let mut c = client.clone();
    let (mut keeper, mut stream) = call("lease keep-alive", timeout, c.lease_keep_alive(id)).await?;
    loop {
        // etcd restarts the TTL when the request arrives, never before it was sent: counting
        // from the send keeps our idea of the expiry no later than etcd's.
        let sent = Instant::now();
        call("lease keep-alive", timeout, keeper.keep_alive()).await?;
        let resp = call("lease keep-alive", timeout, stream.message()).await?;
        match resp {
            Some(r) if r.ttl() > 0 => {
                *last_renewed = Instant::now();
                *backoff = Backoff::default();
                expires.send_replace(sent + Duration::from_secs(ttl.max(0) as u64));
            }
            Some(_) => return Err(Error::LeaseLost { lease: id }),
            None => return Err(Error::StreamEnded { stream: "lease keep-alive", detail: "closed by etcd".into() }),
        }
        tokio::time::sleep(period).await;
    }
}

/// Says when the lease is within `window` of the earliest moment etcd could expire it: a
/// deadline derived from the lease (moved by every renewal), no I/O. Ends when the keeper does.
async fn watch_risk(lease: i64, window: Duration, mut expires: watch::Receiver<Instant>, at_risk: watch::Sender<bool>) {
    loop {
        // Unrepresentable (a machine up for less than the window): at risk at once.
        let deadline = expires.borrow_and_update().checked_sub(window).unwrap_or_else(Instant::now);
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {
                tracing::warn!(lease, left = ?window, "lease not renewed: at risk of expiring");
                at_risk.send_replace(true);
                if expires.changed().await.is_err() {
                    return;
                }
                tracing::info!(lease, "lease renewed again: no longer at risk");
                at_risk.send_replace(false);
            }
            changed = expires.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_election_renews_often_and_gives_up_when_unsure() {
        let r = Renewal::election(3);
        assert_eq!((r.period, r.when_unsure), (Duration::from_secs(1), WhenUnsure::GiveUp));
        assert_eq!(Renewal::election(0).period, Duration::from_millis(333));
    }

    #[test]
    fn lock_leases_renew_at_most_every_two_seconds_and_keep_trying() {
        assert_eq!(Renewal::lock_leases(15).period, Duration::from_secs(2));
        assert_eq!(Renewal::lock_leases(1).period, Duration::from_millis(500));
        assert_eq!(Renewal::lock_leases(3).when_unsure, WhenUnsure::KeepTrying);
    }

    #[test]
    fn a_lease_is_at_risk_after_half_its_ttl_later_than_any_renewal_period() {
        assert_eq!(at_risk_after(5), Duration::from_millis(2500));
        for ttl in 5..=3600 {
            // ttlSeconds is 5..3600
            assert!(at_risk_after(ttl) > Renewal::lock_leases(ttl).period, "ttl {ttl}");
        }
    }

    #[tokio::test]
    async fn the_risk_is_raised_no_sooner_than_due_and_cleared_by_the_next_renewal() {
        let (ttl, window) = (Duration::from_millis(600), Duration::from_millis(300));
        let renewed = Instant::now();
        let (expires_tx, expires) = watch::channel(renewed + ttl);
        let (risk_tx, mut risk) = watch::channel(false);
        let task = tokio::spawn(watch_risk(1, window, expires, risk_tx));
        tokio::time::timeout(Duration::from_secs(5), risk.changed()).await.unwrap().unwrap();
        assert!(*risk.borrow_and_update(), "raised, then cleared without a renewal");
        assert!(renewed.elapsed() >= ttl - window, "raised {:?} after the last renewal", renewed.elapsed());
        expires_tx.send_replace(Instant::now() + ttl);
        tokio::time::timeout(Duration::from_secs(5), risk.changed()).await.unwrap().unwrap();
        assert!(!*risk.borrow(), "not cleared by a renewal");
        drop(expires_tx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn half_the_ttl_is_left_to_demote_once_a_lease_is_at_risk() {
        assert_eq!(demotion_window(5), Duration::from_millis(2500));
        assert_eq!(demotion_window(15), Duration::from_millis(7500));
    }
}
