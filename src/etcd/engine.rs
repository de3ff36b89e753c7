//! The lock engine: applies the pure [`crate::lock`] decision to etcd through the [`super::mutex`]
//! recipe, reads holders from the [`Mirror`]. Writes happen only when a candidate joins or
//! leaves (or a lease had to be replaced); an unchanged world costs etcd nothing.
//!
//! [`Engine::sync_observed`] is the one entry point that changes a lock: the controller and the
//! tests call it ([`Engine::sync`] is the same without an observer).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::Client;

use super::lease_pool::LeasePool;
use super::mirror::Mirror;
use super::mutex::{move_txn, txn_for};
use super::ownership::{self, ClusterId};
use super::{Result, call, retry};
use crate::keyspace::Keyspace;
use crate::lock::{self, Candidate, KeyState, LockKey, Move, Op, Target, Unmovable};

/// Where the engine may read and write.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Root of everything LeaderLock owns in etcd, ending in `/` (default `/leaderlock.dev/`).
    pub root: String,
    /// Prefixes outside the root that `etcdKey` overrides may use.
    pub allowed_prefixes: Vec<String>,
    pub call_timeout: Duration,
    /// This controller's cluster: written into every key value it creates; it deletes or
    /// rewrites no key naming another cluster (see [`super::ownership`]).
    pub cluster_id: ClusterId,
}

/// The lock engine. One per controller process.
pub struct Engine {
    client: Client,
    keyspace: Keyspace,
    cluster_id: ClusterId,
    call_timeout: Duration,
    mirror: Mirror,
    leases: LeasePool,
    /// Last holder per lock prefix that still has candidates of ours, so keys wiped by a lost
    /// lease are recreated with the same candidate first (and it keeps the lock). Forgotten when
    /// nobody of ours wants the lock any more: nothing of ours is left to recreate.
    last_holder: Mutex<HashMap<String, String>>,
    /// The last [`LeasePool::risk_changes`] generation whose demotions were written.
    demoted: tokio::sync::watch::Sender<u64>,
}

impl Engine {
    /// Starts the mirror (one list + one watch stream); adopts leases lazily on first use.
    pub async fn start(client: Client, cfg: EngineConfig) -> Result<Self> {
        let keyspace = Keyspace::new(cfg.root, cfg.allowed_prefixes);
        let mirror = Mirror::start(client.clone(), keyspace.watched(), cfg.call_timeout).await?;
        let leases = LeasePool::new(client.clone(), keyspace.clone(), cfg.call_timeout);
        Ok(Engine {
            client,
            keyspace,
            cluster_id: cfg.cluster_id,
            call_timeout: cfg.call_timeout,
            mirror,
            leases,
            last_holder: Mutex::default(),
            demoted: Default::default(),
        })
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn leases(&self) -> &LeasePool {
        &self.leases
    }

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The etcd prefix of a lock; see [`Keyspace::lock_prefix`].
    pub fn lock_prefix(&self, namespace: &str, lock: &str, etcd_key: Option<&str>) -> Result<String> {
        Ok(self.keyspace.lock_prefix(namespace, lock, etcd_key)?)
    }

    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// Keys under the lock `prefix`, from the mirror (no I/O), as etcd holds them.
    pub fn keys(&self, prefix: &str) -> Vec<KeyState> {
        self.mirror.keys_under(&format!("{prefix}/"))
    }

    /// Keys under the lock `prefix` as the lock decision must judge them: only ours carry the
    /// marker (see [`ownership::decision_view`]).
    fn decision_keys(&self, prefix: &str) -> Vec<KeyState> {
        ownership::decision_view(self.keys(prefix), &self.cluster_id, &self.our_leases())
    }

    /// The leases recorded under our root, from the mirror (no I/O): keys from before cluster
    /// identities are ours when they live on one of them.
    fn our_leases(&self) -> Vec<i64> {
        let records = self.mirror.keys_under(&self.keyspace.lease_records());
        records.iter().filter_map(|k| std::str::from_utf8(&k.value).ok()?.parse().ok()).collect()
    }

    /// The holder of the lock `prefix`, from the mirror (no I/O). A holder of another cluster has
    /// no `candidate` and is named `<cluster>/<namespace>/<pod>`. None while our holder's key is
    /// on a lease at risk ([`Engine::lease_at_risk`]): etcd may expire it any moment, and another
    /// cluster promote its next candidate, so ours must not be called leader (docs/contract.md §4.7).
    pub fn holder(&self, prefix: &str) -> Option<LockKey> {
        let keys = self.decision_keys(prefix);
        let mut holder = lock::holder(prefix, &keys)?;
        if holder.owner.is_some() && keys.iter().any(|k| k.key == holder.key && self.lease_at_risk(k.lease)) {
            return None;
        }
        if holder.owner.is_none() {
            let raw = self.keys(prefix).into_iter().find(|k| k.key == holder.key);
            holder.name = raw.and_then(|k| ownership::foreign_holder(&k, &self.cluster_id));
        }
        Some(holder)
    }

    /// Everyone in line for the lock `prefix`, holder first, named like [`Engine::holder`] (no I/O).
    pub fn line(&self, prefix: &str) -> Vec<LockKey> {
        let raw = self.keys(prefix);
        let mut line = lock::line(prefix, &ownership::decision_view(raw.clone(), &self.cluster_id, &self.our_leases()));
        for h in line.iter_mut().filter(|h| h.owner.is_none()) {
            h.name = raw.iter().find(|k| k.key == h.key).and_then(|k| ownership::foreign_holder(k, &self.cluster_id));
        }
        line
    }

    /// Hands the lock `prefix` from the holder with fencing token `holder_token` to `target` in
    /// one transaction ([`lock::plan_move`]) and waits until the mirror shows it. `Ok(Err(_))`:
    /// the keys as they are do not allow it (nothing written).
    pub async fn move_lock(&self, prefix: &str, holder_token: i64, target: Target<'_>) -> Result<Result<Move, Unmovable>> {
        let mut planned = match lock::plan_move(prefix, &self.decision_keys(prefix), holder_token, target) {
            Ok(r) => r,
            Err(why) => return Ok(Err(why)),
        };
        planned.ops = planned.ops.into_iter().map(|op| ownership::stamp(op, &self.cluster_id)).collect();
        planned.then = planned.then.into_iter().map(|op| ownership::stamp(op, &self.cluster_id)).collect();
        let txn = move_txn(&planned);
        let t = self.call_timeout;
        let resp = retry(5, || {
            let mut c = self.client.clone();
            let txn = txn.clone();
            async move { call("hand over lock", t, c.txn(txn)).await }
        })
        .await?;
        if !resp.succeeded() {
            return Err(super::Error::Raced { op: "hand over lock" });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        if !self.mirror.wait_for(&format!("{prefix}/"), revision, t).await {
            tracing::warn!(prefix, revision, "mirror did not catch up with the handover in time");
        }
        // Waiters that were ahead of the target, back in line in their order. A failure here
        // leaves them without a key until the next sync recreates it: the lock has moved.
        self.apply_all(prefix, &planned.then, |_| {}).await?;
        self.remember_holder(prefix);
        Ok(Ok(planned))
    }

    /// Whether keys on our `lease` must not make leaders: the lease went unrenewed for half its
    /// TTL or is lost (no I/O).
    pub fn lease_at_risk(&self, lease: i64) -> bool {
        self.leases.is_at_risk(lease)
    }

    /// The generation of [`Engine::risk_changes`] now: [`Engine::demoted`] reaches it once the
    /// demotions it calls for are written.
    pub fn risk_generation(&self) -> u64 {
        *self.leases.risk_changes().borrow()
    }

    /// Changes whenever a lease's risk may have changed: the pods must be looked at again.
    pub fn risk_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.leases.risk_changes()
    }

    /// Records that the demotions called for by `generation` of [`Engine::risk_changes`] are
    /// written.
    pub fn mark_demoted(&self, generation: u64) {
        self.demoted.send_if_modified(|done| std::mem::replace(done, generation.max(*done)) != *done);
    }

    /// Resolves once the demotions of `generation` (or a later one) are written.
    pub async fn demoted(&self, generation: u64) {
        let _ = self.demoted.subscribe().wait_for(|done| *done >= generation).await;
    }

    /// How many lock prefixes have a remembered holder (for the `leaderlock_map_entries` gauge):
    /// stays at most the number of locks with candidates.
    pub fn holder_map_len(&self) -> usize {
        self.holders().len()
    }

    /// Makes the keys under `prefix` match `wanted` (in creation priority order) and waits until
    /// the mirror shows the result. Returns the operations applied; none when nothing changed.
    pub async fn sync(&self, prefix: &str, wanted: &[Candidate], ttl: i64) -> Result<Vec<Op>> {
        self.sync_observed(prefix, wanted, ttl, |_| {}).await
    }

    /// [`Engine::sync`], calling `applied` after each operation etcd accepted (also when a later
    /// one fails), e.g. to count writes.
    pub async fn sync_observed(&self, prefix: &str, wanted: &[Candidate], ttl: i64, applied: impl FnMut(&Op)) -> Result<Vec<Op>> {
        let ops = self.plan(prefix, wanted, ttl).await?;
        self.apply_all(prefix, &ops, applied).await?;
        self.remember_holder(prefix);
        Ok(ops)
    }

    /// What [`Engine::sync`] would do now (no I/O besides adopting/granting the lease).
    async fn plan(&self, prefix: &str, wanted: &[Candidate], ttl: i64) -> Result<Vec<Op>> {
        if wanted.is_empty() {
            self.forget_holder(prefix); // our keys are about to go: nothing left to recreate
        }
        let lease = self.leases.get(ttl).await?;
        let keys = self.decision_keys(prefix);
        let mut wanted = wanted.to_vec();
        if !keys.iter().any(|k| k.candidate_name().is_some()) {
            let prev = self.holders().get(prefix).cloned();
            lock::previous_holder_first(&mut wanted, prev.as_deref());
        }
        Ok(lock::plan(prefix, &keys, &wanted, lease).into_iter().map(|op| ownership::stamp(op, &self.cluster_id)).collect())
    }

    /// Remembers the current holder of `prefix`: if a lost lease wipes the lock's keys, they are
    /// recreated with this candidate first, so it keeps the lock.
    fn remember_holder(&self, prefix: &str) {
        if let Some(id) = self.holder(prefix).and_then(|h| h.owner) {
            self.holders().insert(prefix.to_string(), id);
        }
    }

    fn forget_holder(&self, prefix: &str) {
        self.holders().remove(prefix);
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<String, String>> {
        // Single inserts and removes: a panic elsewhere cannot leave the map inconsistent.
        self.last_holder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies each operation in its own guarded transaction (one create per candidate keeps
    /// etcd's one-key-per-revision mutex semantics), calling `applied` after each, then waits
    /// once for the mirror to show them all, so the next decision sees them.
    async fn apply_all(&self, prefix: &str, ops: &[Op], mut applied: impl FnMut(&Op)) -> Result<()> {
        let t = self.call_timeout;
        let mut last = 0;
        for op in ops {
            let (name, txn) = txn_for(prefix, op);
            let resp = retry(5, || {
                let mut c = self.client.clone();
                let txn = txn.clone();
                async move { call(name, t, c.txn(txn)).await }
            })
            .await?;
            last = last.max(resp.header().map_or(0, |h| h.revision()));
            applied(op);
        }
        if !ops.is_empty() && !self.mirror.wait_for(&format!("{prefix}/"), last, t).await {
            tracing::warn!(prefix, revision = last, "mirror did not catch up with our writes in time");
        }
        Ok(())
    }

    /// Deletes every key of ours under `prefix` (a LeaderLock or lock removed) and forgets the
    /// lock. Returns how many keys it deleted.
    pub async fn release_all(&self, prefix: &str) -> Result<usize> {
        self.forget_holder(prefix);
        let ops: Vec<Op> =
            lock::plan(prefix, &self.decision_keys(prefix), &[], 0).into_iter().filter(|op| matches!(op, Op::Delete { .. })).collect();
        self.apply_all(prefix, &ops, |_| {}).await?;
        Ok(ops.len())
    }
}
