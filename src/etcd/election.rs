//! Which controller replica is active: etcd's election recipe under `<root>controller/`, like
//! `concurrency.Election`. Each replica creates one key on its own short [`Session`]; the
//! lowest create revision is active; the others wait — on a watch of the next older key, not a
//! poll. When the active replica dies its lease expires after `ttl`, its key goes, and the next
//! replica takes over, adopting the recorded lock leases before they expire (see
//! [`super::lease_pool`]).
//!
//! A standby rides out transient etcd errors: while its session lives it keeps its key, and
//! with it its place in the queue; once the session is lost it campaigns again on a new one.
//! A campaign that fails for good resigns (revokes its lease) before it returns the error.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session::{Renewal, Session};
use super::{Backoff, Error, Result, call};
use crate::keyspace::Keyspace;

/// This replica is active until [`Leadership::lost`] resolves.
pub struct Leadership {
    pub key: String,
    pub lease: i64,
    session: Session,
}

impl Leadership {
    /// Resolves when the session lease is gone (etcd unreachable longer than the TTL, or revoked):
    /// another replica may be active now, so this one must stop acting at once.
    pub async fn lost(&self) {
        self.session.lost().await
    }

    /// Steps down (graceful shutdown): revoking the lease hands over without waiting for the TTL.
    /// The lock leases are not touched: the next replica adopts them.
    pub async fn resign(self) {
        resign(self.session).await
    }
}

async fn resign(session: Session) {
    if let Err(e) = session.close().await {
        tracing::warn!(error = %e, "could not revoke the election lease; it expires after its TTL");
    }
}

/// How one session's campaign ended, when it did not fail for good.
enum Campaign {
    Won(String),
    SessionLost,
    Stopped,
}

/// Campaigns under `<root>controller/` and returns once this replica is active. Transient etcd
/// errors never end it; an error that retrying cannot fix (permissions) does, after resigning.
pub async fn campaign(client: &Client, root: &str, instance: &str, ttl: i64, timeout: Duration) -> Result<Leadership> {
    let never = CancellationToken::new();
    let won = campaign_until(client, root, instance, ttl, timeout, &never).await?;
    won.ok_or_else(|| Error::StreamEnded { stream: "election campaign", detail: "stopped".into() })
}

/// [`campaign`], given up when `stop` is cancelled first: then the campaign's lease is revoked
/// (a standby shutting down must not win on its way out, nor hold its place in line until its
/// lease expires) and None is returned.
pub async fn campaign_until(
    client: &Client,
    root: &str,
    instance: &str,
    ttl: i64,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Option<Leadership>> {
    let dir = Keyspace::new(root, vec![]).election_dir();
    let mut backoff = Backoff::default();
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let session = match Session::grant(client, ttl, Renewal::election(ttl), timeout).await {
            Ok(session) => session,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "election: cannot grant a lease; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        match campaign_with(client, &dir, instance, &session, timeout, stop).await {
            Ok(Campaign::Won(key)) => {
                return Ok(Some(Leadership { key, lease: session.lease(), session }));
            }
            Ok(Campaign::Stopped) => {
                resign(session).await;
                return Ok(None);
            }
            Ok(Campaign::SessionLost) => {
                tracing::warn!(lease = session.lease(), "election lease lost while standby; campaigning again on a new one");
            }
            Err(e) => {
                resign(session).await;
                return Err(e);
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Campaigns on `session` until this replica is first in line or the session is lost; retries
/// transient errors with backoff, keeping the key (the create is guarded, so a retry finds it).
async fn campaign_with(
    client: &Client,
    dir: &str,
    instance: &str,
    session: &Session,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Campaign> {
    let key = format!("{dir}{:x}", session.lease());
    let mut backoff = Backoff::default();
    loop {
        let attempt = async {
            let my_rev = put_candidate(client, &key, instance, session.lease(), timeout).await?;
            wait_turn(client, dir, my_rev, timeout).await
        };
        let failed = tokio::select! {
            r = attempt => match r {
                Ok(()) => return Ok(Campaign::Won(key)),
                Err(e) if e.is_lease_not_found() => return Ok(Campaign::SessionLost),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            },
            () = session.lost() => return Ok(Campaign::SessionLost),
            () = stop.cancelled() => return Ok(Campaign::Stopped),
        };
        tracing::warn!(error = %failed, "election: etcd error while standby; keeping our place and retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = session.lost() => return Ok(Campaign::SessionLost),
            () = stop.cancelled() => return Ok(Campaign::Stopped),
        }
    }
}

/// Creates this replica's key once (guarded on `create_revision == 0`) and returns its create
/// revision, also when it already existed.
async fn put_candidate(client: &Client, key: &str, instance: &str, lease: i64, timeout: Duration) -> Result<i64> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, instance, Some(PutOptions::new().with_lease(lease))), TxnOp::get(key, None)])
        .or_else([TxnOp::get(key, None)]);
    let mut c = client.clone();
    let resp = call("campaign", timeout, c.txn(txn)).await?;
    resp.op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        })
        .ok_or_else(|| Error::StreamEnded { stream: "election campaign", detail: "the campaign key vanished right after creation".into() })
}

/// Waits until no key under `dir` is older than `my_rev`: one watch on the next older key at a
/// time, re-reading after each deletion.
async fn wait_turn(client: &Client, dir: &str, my_rev: i64, timeout: Duration) -> Result<()> {
    let mut c = client.clone();
    loop {
        let older = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(my_rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let resp = call("campaign read", timeout, c.get(dir, Some(older))).await?;
        let Some(prev) = resp.kvs().first() else {
            return Ok(());
        };
        let prev_key = prev.key().to_vec();
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        tracing::info!(waiting_for = %String::from_utf8_lossy(prev.value()), "standby: another replica is active");
        wait_deleted(&mut c, prev_key, from).await?;
    }
}

/// Waits (on a watch) until `key` is deleted.
async fn wait_deleted(c: &mut Client, key: Vec<u8>, from: i64) -> Result<()> {
    let mut stream =
        c.watch(key, Some(WatchOptions::new().with_start_revision(from))).await.map_err(|source| Error::Call { op: "watch", source })?;
    loop {
        match stream.message().await {
            Ok(Some(r)) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => {
                return Ok(());
            }
            Ok(Some(r)) if r.canceled() || r.compact_revision() > 0 => return Ok(()), // re-read and decide again
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::StreamEnded { stream: "election watch", detail: "closed by etcd".into() }),
            Err(source) => {
                return Err(Error::Call { op: "watch", source });
            }
        }
    }
}

/// Where the election thread is; the one signal from it to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Campaigning,
    /// Active, with this election key.
    Active(String),
    /// The lease was lost while active.
    Lost,
    /// The campaign failed for good (its lease revoked).
    Failed(String),
}

/// The election on its own thread, runtime and etcd connection: a controller saturated by
/// reconciles (CPU-bound work on every worker thread) must still renew its election lease on time,
/// or it would lose the election it holds and restart in a loop.
pub struct ElectionThread {
    phase: watch::Receiver<Phase>,
    /// Cancelled to resign. Not a child of the process's shutdown token: the controller must
    /// finish its reconciles before a standby may take over.
    resign: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ElectionThread {
    /// Starts campaigning under `<root>controller/` as `instance`, until [`ElectionThread::resign`].
    pub fn start(cfg: super::EtcdConfig, root: String, instance: String, ttl: i64) -> std::io::Result<Self> {
        let (phase_tx, phase) = watch::channel(Phase::Campaigning);
        let resign = CancellationToken::new();
        let resign_rx = resign.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("election".into()).spawn(move || {
            rt.block_on(async move {
                let won = async {
                    let client = super::connect(&cfg).await?;
                    campaign_until(&client, &root, &instance, ttl, cfg.call_timeout, &resign_rx).await
                };
                let leadership = match won.await {
                    Ok(Some(leadership)) => leadership,
                    Ok(None) => {
                        phase_tx.send_replace(Phase::Failed("resigned before winning the election".into()));
                        return;
                    }
                    Err(e) => {
                        phase_tx.send_replace(Phase::Failed(e.to_string()));
                        return;
                    }
                };
                phase_tx.send_replace(Phase::Active(leadership.key.clone()));
                tokio::select! {
                    () = leadership.lost() => { phase_tx.send_replace(Phase::Lost); }
                    () = resign_rx.cancelled() => leadership.resign().await,
                }
            })
        })?;
        Ok(ElectionThread { phase, resign, thread: Some(thread) })
    }

    /// Waits until this replica is active; returns its election key.
    pub async fn elected(&mut self) -> std::result::Result<String, String> {
        let phase = self.phase.wait_for(|p| *p != Phase::Campaigning).await.map(|p| p.clone());
        match phase {
            Ok(Phase::Active(key)) => Ok(key),
            Ok(Phase::Failed(e)) => Err(e),
            Ok(_) | Err(_) => Err("the election thread ended".into()),
        }
    }

    /// Resolves when the election lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.phase.wait_for(|p| *p == Phase::Lost).await;
    }

    /// Steps down and waits for the revoke to be sent.
    pub async fn resign(mut self) {
        self.resign.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
