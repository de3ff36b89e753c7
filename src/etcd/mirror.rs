//! One watch for everything: an in-memory copy of every key under the root prefix (and the
//! allowed external prefixes) at a known revision. Waiters — the controller, tests — learn of
//! changes from [`Mirror::subscribe`]; nothing polls etcd, so an idle system reads and writes
//! nothing.
//!
//! ```text
//!  etcd ──Get(ranges)@R──▶ keys ◀── one watch stream, one watcher per range, from R+1
//!                            │       disconnect → resume from each range's progress
//!                            │       compacted  → relist, diff, resume
//!                            └──▶ broadcast of changed keys
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{Backoff, Error, Result, call, retry};
use crate::lock::KeyState;

/// Watched key ranges (prefixes), without any range nested in another.
pub fn disjoint_ranges(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort();
    prefixes.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in prefixes {
        if !out.iter().any(|o| p.starts_with(o.as_str())) {
            out.push(p);
        }
    }
    out
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, KeyState>,
    /// Per range: every event up to this revision has been applied.
    progress: Vec<i64>,
}

impl State {
    fn has_keys_under(&self, prefix: &str) -> bool {
        self.keys.range(prefix.to_string()..).next().is_some_and(|(k, _)| k.starts_with(prefix))
    }
}

/// The lock prefix of a key: everything before its last `/`.
fn parent(key: &str) -> Option<&str> {
    key.rfind('/').map(|i| &key[..i])
}

/// The in-memory copy. Cheap to clone; the watch task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

struct Inner {
    ranges: Vec<String>,
    state: RwLock<State>,
    /// Bumped after every applied batch, so waiters can wait for a revision without polling.
    applied: watch::Sender<i64>,
    changes: broadcast::Sender<Arc<Vec<String>>>,
    restarts: AtomicU64,
    /// Lock prefix → when a key under it was last deleted, to measure failover latency. Only
    /// prefixes that still have keys: the last key's deletion leaves no one to fail over to.
    deleted_at: Mutex<HashMap<String, Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    // The guarded data is replaced or updated in single steps: a panic elsewhere cannot leave
    // it half-written, so a poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn deleted_at(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.deleted_at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

fn key_state(kv: &KeyValue) -> KeyState {
    KeyState {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
        value: kv.value().to_vec(),
    }
}

impl Mirror {
    /// Lists `prefixes` at one revision and starts the watch from the next one.
    pub async fn start(client: Client, prefixes: Vec<String>, timeout: Duration) -> Result<Self> {
        let ranges = disjoint_ranges(prefixes);
        let (applied, _) = watch::channel(0);
        let (changes, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            ranges,
            state: RwLock::default(),
            applied,
            changes,
            restarts: AtomicU64::new(0),
            deleted_at: Mutex::default(),
            task: Mutex::new(None),
        });
        relist(&client, &inner, timeout).await?;
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move { watch_loop(client, weak, timeout).await });
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Mirror { inner })
    }

    /// Every key under `prefix`, as of the mirror's current progress.
    pub fn keys_under(&self, prefix: &str) -> Vec<KeyState> {
        let state = self.inner.read();
        state.keys.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect()
    }

    /// Whether `key` lies in a watched range (the controller never touches any other key).
    pub fn covers(&self, key: &str) -> bool {
        self.inner.ranges.iter().any(|r| key.starts_with(r.as_str()))
    }

    /// The revision up to which the range holding `key` is known to be complete.
    pub fn progress_for(&self, key: &str) -> i64 {
        let state = self.inner.read();
        self.inner.ranges.iter().position(|r| key.starts_with(r.as_str())).and_then(|i| state.progress.get(i).copied()).unwrap_or(0)
    }

    /// Waits until the mirror reflects every change to `key`'s range up to `revision` — used
    /// after our own writes so the next decision sees them. False on timeout.
    pub async fn wait_for(&self, key: &str, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        tokio::time::timeout(timeout, async {
            while self.progress_for(key) < revision {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Batches of changed keys. A receiver that lags must treat everything as changed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<String>>> {
        self.inner.changes.subscribe()
    }

    /// When the mirror last saw a key directly under `prefix` deleted, while `prefix` still has
    /// keys (a holder to fail over to).
    pub fn last_delete(&self, prefix: &str) -> Option<Instant> {
        self.inner.deleted_at().get(prefix).copied()
    }

    /// How many lock prefixes have a recorded deletion (for the `leaderlock_map_entries` gauge):
    /// stays at most the number of prefixes with keys.
    pub fn deleted_at_len(&self) -> usize {
        self.inner.deleted_at().len()
    }

    /// How many keys the mirror holds.
    pub fn len(&self) -> usize {
        self.inner.read().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times the watch was re-established (disconnects and compactions).
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }
}

/// Keys per list request: a whole range in one response would exceed gRPC's 4 MiB message limit
/// at a few tens of thousands of candidate keys.
const LIST_PAGE: i64 = 1000;

/// The first key after every key starting with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // all keys
}

/// Replaces the copy with a fresh list of every range at one revision, page by page; announces
/// the diff.
async fn relist(client: &Client, inner: &Inner, timeout: Duration) -> Result<()> {
    let mut fresh = BTreeMap::new();
    let mut at = 0;
    for range in &inner.ranges {
        let end = prefix_end(range.as_bytes());
        let mut from = range.as_bytes().to_vec();
        loop {
            let opts = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            let opts = if at > 0 { opts.with_revision(at) } else { opts };
            let resp = retry(10, || {
                let mut c = client.clone();
                let (key, opts) = (from.clone(), opts.clone());
                async move { call("list lock keys", timeout, c.get(key, Some(opts))).await }
            })
            .await?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let ks = key_state(kv);
                fresh.insert(ks.key.clone(), ks);
            }
            match resp.kvs().last() {
                Some(kv) if resp.more() => {
                    from = kv.key().to_vec();
                    from.push(0); // the next key after it
                }
                _ => break,
            }
        }
    }
    let changed: Vec<String> = {
        let mut state = inner.write();
        let mut changed: Vec<String> = state.keys.iter().filter(|(k, v)| fresh.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        changed.extend(fresh.iter().filter(|(k, _)| !state.keys.contains_key(*k)).map(|(k, _)| k.clone()));
        state.keys = fresh;
        state.progress = vec![at; inner.ranges.len()];
        // Deletions missed while compacted are not timed; prefixes left without keys are forgotten.
        inner.deleted_at().retain(|prefix, _| state.has_keys_under(&format!("{prefix}/")));
        changed
    };
    inner.applied.send_replace(at);
    if !changed.is_empty() {
        let _ = inner.changes.send(Arc::new(changed));
    }
    Ok(())
}

enum StreamEnd {
    Compacted,
    Broken(Error),
}

async fn watch_loop(client: Client, inner: std::sync::Weak<Inner>, timeout: Duration) {
    let mut backoff = Backoff::default();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let end = run_stream(&client, &strong, timeout, &mut backoff).await;
        strong.restarts.fetch_add(1, Ordering::Relaxed);
        match end {
            StreamEnd::Compacted => {
                tracing::warn!("watch revision was compacted; relisting lock keys");
                if let Err(e) = relist(&client, &strong, timeout).await {
                    tracing::warn!(error = %e, "relist failed; retrying");
                }
            }
            StreamEnd::Broken(e) => tracing::warn!(error = %e, "etcd watch interrupted; resuming"),
        }
        drop(strong);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Runs one watch stream with one watcher per range until it breaks.
async fn run_stream(client: &Client, inner: &Inner, timeout: Duration, backoff: &mut Backoff) -> StreamEnd {
    let starts: Vec<i64> = inner.read().progress.iter().map(|p| p + 1).collect();
    let mut c = client.clone();
    let first = WatchOptions::new().with_prefix().with_start_revision(starts[0]).with_progress_notify();
    let mut stream = match call("watch", timeout, c.watch(inner.ranges[0].clone(), Some(first))).await {
        Ok(s) => s,
        Err(e) => return StreamEnd::Broken(e),
    };
    for (range, start) in inner.ranges.iter().zip(&starts).skip(1) {
        let opts = WatchOptions::new().with_prefix().with_start_revision(*start).with_progress_notify();
        if let Err(e) = stream.watch(range.clone(), Some(opts)).await {
            return StreamEnd::Broken(Error::Call { op: "watch", source: e });
        }
    }
    // etcd answers create requests in order: the n-th created watch id serves the n-th range.
    let mut ids: Vec<i64> = Vec::new();
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return StreamEnd::Broken(Error::StreamEnded { stream: "mirror watch", detail: "closed by etcd".into() });
            }
            Err(e) => {
                return StreamEnd::Broken(Error::Call { op: "watch", source: e });
            }
        };
        if resp.compact_revision() > 0 {
            return StreamEnd::Compacted;
        }
        if resp.canceled() {
            return StreamEnd::Broken(Error::StreamEnded { stream: "mirror watch", detail: format!("canceled: {}", resp.cancel_reason()) });
        }
        if resp.created() {
            // The header of a "created" response is the current revision, not progress: events
            // from the start revision may still be on their way.
            ids.push(resp.watch_id());
            *backoff = Backoff::default();
            continue;
        }
        let header_rev = resp.header().map_or(0, |h| h.revision());
        let range = ids.iter().position(|id| *id == resp.watch_id());
        apply(inner, range, resp.events(), header_rev);
    }
}

/// Applies one watch response. Events replayed after a resume are recognised by revision and
/// skipped, so applying is idempotent.
fn apply(inner: &Inner, range: Option<usize>, events: &[etcd_client::Event], header_rev: i64) {
    let mut changed = Vec::new();
    let progress = {
        let mut state = inner.write();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let ks = key_state(kv);
            let current = state.keys.get(&ks.key).map_or(0, |k| k.mod_revision);
            if ks.mod_revision <= current {
                continue;
            }
            match ev.event_type() {
                EventType::Put => {
                    changed.push(ks.key.clone());
                    state.keys.insert(ks.key.clone(), ks);
                }
                EventType::Delete => {
                    if state.keys.remove(&ks.key).is_some() {
                        if let Some(prefix) = parent(&ks.key) {
                            record_delete(inner, &state, prefix);
                        }
                        changed.push(ks.key);
                    }
                }
            }
        }
        // After events, only their own revisions are certain (a catching-up watcher may get more);
        // a progress notification (no events) vouches for its header revision.
        let last_event = events.iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
        let rev = last_event.unwrap_or(header_rev);
        match range {
            // A progress notification for the whole stream (watch id -1) or for one watcher.
            None if events.is_empty() => state.progress.iter_mut().for_each(|p| *p = (*p).max(rev)),
            Some(i) => state.progress[i] = state.progress[i].max(rev),
            None => {}
        }
        state.progress.iter().copied().min().unwrap_or(0)
    };
    inner.applied.send_replace(progress);
    if !changed.is_empty() {
        let _ = inner.changes.send(Arc::new(changed));
    }
}

/// Times a deletion under `prefix` for the failover latency, or forgets the prefix when its last
/// key went (nothing to fail over to; a lock whose keys all go must not stay in the map).
fn record_delete(inner: &Inner, state: &State, prefix: &str) {
    let mut deleted_at = inner.deleted_at();
    if state.has_keys_under(&format!("{prefix}/")) {
        deleted_at.insert(prefix.to_string(), Instant::now());
    } else {
        deleted_at.remove(prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::{State, disjoint_ranges, parent, prefix_end};
    use crate::lock::KeyState;

    #[test]
    fn a_prefix_has_keys_only_when_a_key_lies_under_it() {
        let mut state = State::default();
        let key = |k: &str| KeyState { key: k.into(), create_revision: 1, mod_revision: 1, lease: 0, value: vec![] };
        state.keys.insert("/ll/locks/ns/ab/x".into(), key("/ll/locks/ns/ab/x"));
        assert!(state.has_keys_under("/ll/locks/ns/ab/"));
        assert!(!state.has_keys_under("/ll/locks/ns/a/"), "a sibling with a longer name is not under it");
        assert_eq!(parent("/ll/locks/ns/ab/x"), Some("/ll/locks/ns/ab"));
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_possible_key() {
        assert_eq!(prefix_end(b"/ll/"), b"/ll0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn nested_and_duplicate_prefixes_are_watched_once() {
        let r = disjoint_ranges(vec!["/ll/".into(), "/ll/shared/".into(), "/legacy/".into(), "/legacy/".into()]);
        assert_eq!(r, vec!["/legacy/".to_string(), "/ll/".to_string()]);
    }
}
