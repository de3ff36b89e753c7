//! The lock engine: applies the pure [`crate::lock`] decision to etcd, reads holders from the
//! [`Mirror`]. Writes happen only when a candidate joins or leaves (or a lease had to be
//! replaced); an unchanged world costs etcd nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};

use super::mirror::Mirror;
use super::session::Leases;
use super::{Error, Result, call, retry};
use crate::lock::{self, Candidate, Holder, KeyState, Op};

/// Where the engine may read and write.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Root of everything LeaderLock owns in etcd, ending in `/` (default `/leaderlock.dev/`).
    pub root: String,
    /// Prefixes outside the root that `etcdKey` overrides may use.
    pub allowed_prefixes: Vec<String>,
    pub call_timeout: Duration,
}

/// The lock engine. One per controller process.
pub struct Engine {
    client: Client,
    cfg: EngineConfig,
    mirror: Mirror,
    leases: Leases,
    /// Last holder seen per lock prefix, so keys wiped by a lost lease are recreated with the
    /// same candidate first (and it keeps the lock).
    last_holder: Mutex<HashMap<String, String>>,
}

impl Engine {
    /// Starts the mirror (one list + one watch stream); adopts leases lazily on first use.
    pub async fn start(client: Client, cfg: EngineConfig) -> Result<Self> {
        let mut prefixes = vec![cfg.root.clone()];
        prefixes.extend(cfg.allowed_prefixes.iter().cloned());
        let mirror = Mirror::start(client.clone(), prefixes, cfg.call_timeout).await?;
        let leases = Leases::new(client.clone(), &cfg.root, cfg.call_timeout);
        Ok(Engine { client, cfg, mirror, leases, last_holder: Mutex::default() })
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The etcd prefix of lock `lock` of a LeaderLock in `namespace`: `<root>locks/<ns>/<lock>`,
    /// or `etcd_key` when it lies in this namespace's own lock area or under an allowed prefix.
    /// Inside the root, nothing else is allowed: not another namespace's locks, not the
    /// controller's own `leases/` and `controller/` keys.
    pub fn lock_prefix(&self, namespace: &str, lock: &str, etcd_key: Option<&str>) -> Result<String> {
        let own = format!("{}locks/{namespace}/", self.cfg.root);
        match etcd_key {
            None => Ok(format!("{own}{lock}")),
            Some(key) if self.allowed(&own, key) => Ok(key.to_string()),
            Some(key) => Err(Error::KeyNotAllowed { key: key.to_string(), own, allowed: self.cfg.allowed_prefixes.join(", ") }),
        }
    }

    fn allowed(&self, own: &str, key: &str) -> bool {
        let inside = if key.starts_with(self.cfg.root.as_str()) {
            key.starts_with(own) && key.len() > own.len()
        } else {
            self.cfg.allowed_prefixes.iter().any(|p| key.starts_with(p.as_str()))
        };
        inside && !key.split('/').any(|seg| seg == ".." || seg == ".")
    }

    /// Keys under the lock `prefix`, from the mirror (no I/O).
    pub fn keys(&self, prefix: &str) -> Vec<KeyState> {
        self.mirror.keys_under(&format!("{prefix}/"))
    }

    /// The holder of the lock `prefix`, from the mirror (no I/O).
    pub fn holder(&self, prefix: &str) -> Option<Holder> {
        lock::holder(prefix, &self.keys(prefix))
    }

    /// Remembers the current holder of `prefix`: if a lost lease wipes the lock's keys, they are
    /// recreated with this candidate first, so it keeps the lock.
    pub fn remember_holder(&self, prefix: &str) {
        if let Some(id) = self.holder(prefix).and_then(|h| h.candidate) {
            self.last_holder.lock().expect("holder map poisoned").insert(prefix.to_string(), id);
        }
    }

    /// What [`Engine::sync`] would do now (no I/O besides adopting/granting the lease).
    pub async fn plan(&self, prefix: &str, wanted: &[Candidate], ttl: i64) -> Result<Vec<Op>> {
        let lease = self.leases.get(ttl).await?;
        let keys = self.keys(prefix);
        let mut wanted = wanted.to_vec();
        if !keys.iter().any(|k| k.candidate_name().is_some()) {
            let prev = self.last_holder.lock().expect("holder map poisoned").get(prefix).cloned();
            lock::previous_holder_first(&mut wanted, prev.as_deref());
        }
        Ok(lock::plan(prefix, &keys, &wanted, lease))
    }

    /// Makes the keys under `prefix` match `wanted` (in creation priority order) and waits until
    /// the mirror shows the result. Returns the operations applied; none when nothing changed.
    pub async fn sync(&self, prefix: &str, wanted: &[Candidate], ttl: i64) -> Result<Vec<Op>> {
        let ops = self.plan(prefix, wanted, ttl).await?;
        self.apply_all(prefix, &ops, |_| {}).await?;
        self.remember_holder(prefix);
        Ok(ops)
    }

    /// Applies each operation in its own guarded transaction (one create per candidate keeps
    /// etcd's one-key-per-revision mutex semantics), calling `applied` after each, then waits
    /// once for the mirror to show them all, so the next decision sees them.
    pub async fn apply_all(&self, prefix: &str, ops: &[Op], mut applied: impl FnMut(&Op)) -> Result<()> {
        let t = self.cfg.call_timeout;
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

    /// Deletes every key of ours under `prefix` (a LeaderLock or lock removed).
    pub async fn release_all(&self, prefix: &str) -> Result<usize> {
        let ops: Vec<Op> =
            lock::plan(prefix, &self.keys(prefix), &[], 0).into_iter().filter(|op| matches!(op, Op::Delete { .. })).collect();
        self.apply_all(prefix, &ops, |_| {}).await?;
        Ok(ops.len())
    }
}

/// The transaction for one operation, after etcd's mutex recipe: the guarded create also reads
/// the current owner (lowest create revision), so the uncontended path is one round trip.
fn txn_for(prefix: &str, op: &Op) -> (&'static str, Txn) {
    let owner = TxnOp::get(
        format!("{prefix}/"),
        Some(GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1)),
    );
    match op {
        Op::Create { key, value, lease } => (
            "create candidate key",
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(*lease))), owner.clone()])
                .or_else([owner]),
        ),
        Op::Delete { key, create_revision } => (
            "delete candidate key",
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, *create_revision)])
                .and_then([TxnOp::delete(key.clone(), None)]),
        ),
        Op::Reattach { key, mod_revision, value, lease } => (
            "reattach candidate key",
            Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, *mod_revision)]).and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(*lease)),
            )]),
        ),
    }
}
