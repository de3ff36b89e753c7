//! Read-your-writes: what this controller wrote that the watches have not delivered yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use kube::Resource;
use kube::runtime::watcher;

use crate::resource::{LeaderLock, LeaderLockStatus};

/// What this controller last wrote to objects of one kind (by UID), with the resourceVersion the
/// write produced, kept until the watch delivers that version. A reconcile can start before the
/// watch shows our previous write; deciding from the older copy it would announce the same
/// holder change twice and write the status again, or — for pods — think a pod it just promoted
/// is still standby and skip its demotion: two leaders.
///
/// An entry goes when a reader's copy shows our write or anything newer ([`Written::newer_than`]:
/// pruning on the watch event instead would race a reconcile that took its view just before the
/// index saw that event), with its object's Delete event, or with the relist that no longer shows
/// it ([`Written::observe`]). So entries are bounded by the live objects. A write whose
/// answer comes back after the object's Delete event was seen is not recorded at all: the UIDs of
/// the last [`Written::TOMBSTONES`] deletions are kept for that (a 30-minute soak showed such
/// entries accumulating otherwise).
pub struct Written<T> {
    entries: Mutex<HashMap<String, (u64, T)>>,
    /// During a relist, the UIDs it listed so far.
    relisted: Mutex<Option<HashSet<String>>>,
    /// UIDs of recently deleted objects, oldest first; bounded.
    deleted: Mutex<Tombstones>,
}

#[derive(Default)]
struct Tombstones {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Tombstones {
    fn add(&mut self, uid: String, cap: usize) {
        if self.set.insert(uid.clone()) {
            self.order.push_back(uid);
        }
        while self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

impl<T> Default for Written<T> {
    fn default() -> Self {
        Written { entries: Mutex::default(), relisted: Mutex::default(), deleted: Mutex::default() }
    }
}

impl<T: Clone> Written<T> {
    /// How many deletions are remembered: far more than can happen between a write and its answer.
    pub const TOMBSTONES: usize = 4096;

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, T)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many writes the watch has not delivered yet (cheap: for `leaderlock_map_entries`).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the objects a watch event says are gone: a deleted one, or those a completed
    /// relist did not list.
    pub fn observe<K: Resource>(&self, ev: &watcher::Event<K>) {
        let uid = |o: &K| o.meta().uid.clone();
        let mut relisted = self.relisted.lock().unwrap_or_else(PoisonError::into_inner);
        match ev {
            watcher::Event::Delete(o) => {
                if let Some(u) = uid(o) {
                    self.map().remove(&u);
                    self.deleted.lock().unwrap_or_else(PoisonError::into_inner).add(u, Self::TOMBSTONES);
                }
            }
            watcher::Event::Apply(_) => {}
            watcher::Event::Init => *relisted = Some(HashSet::new()),
            watcher::Event::InitApply(o) => relisted.get_or_insert_default().extend(uid(o)),
            watcher::Event::InitDone => {
                let listed = relisted.take().unwrap_or_default();
                self.map().retain(|u, _| listed.contains(u));
            }
        }
    }

    /// Remembers that writing `value` produced version `rv` of object `uid` (not when the watch
    /// already said the object is gone).
    pub fn record(&self, uid: Option<&str>, rv: Option<&str>, value: T) {
        if let (Some(uid), Some(rv)) = (uid, rv.and_then(|v| v.parse::<u64>().ok())) {
            if self.deleted.lock().unwrap_or_else(PoisonError::into_inner).set.contains(uid) {
                return;
            }
            self.map().insert(uid.to_string(), (rv, value));
        }
    }

    /// What we wrote, if the copy at version `rv` the caller holds is older than that write.
    pub fn newer_than(&self, uid: Option<&str>, rv: Option<&str>) -> Option<T> {
        let (uid, rv) = (uid?, rv?.parse::<u64>().ok()?);
        let mut m = self.map();
        match m.get(uid) {
            Some((wrote, value)) if rv < *wrote => Some(value.clone()),
            Some(_) => {
                m.remove(uid); // the watch has caught up
                None
            }
            None => None,
        }
    }
}

/// `ll`, with the status we last wrote if `ll` is older than that write.
pub fn with_latest_status(written: &Written<LeaderLockStatus>, ll: Arc<LeaderLock>) -> Arc<LeaderLock> {
    match written.newer_than(ll.metadata.uid.as_deref(), ll.metadata.resource_version.as_deref()) {
        Some(status) => {
            let mut newer = (*ll).clone();
            newer.status = Some(status);
            Arc::new(newer)
        }
        None => ll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::PodKeys;
    use crate::resource::{LeaderLockSpec, LockStatus};
    use kube::ResourceExt;

    fn ll(rv: &str, holder: Option<&str>) -> Arc<LeaderLock> {
        let spec = LeaderLockSpec {
            selector: Default::default(),
            locks: None,
            shards: None,
            placement: None,
            ttl_seconds: 15,
            pod_labels: false,
            paused: false,
        };
        let mut l = LeaderLock::new("payments", spec);
        l.metadata.uid = Some("u1".into());
        l.metadata.resource_version = Some(rv.into());
        l.status = Some(LeaderLockStatus {
            locks: vec![LockStatus { name: "ledger".into(), holder: holder.map(str::to_string), ..Default::default() }],
            ..Default::default()
        });
        Arc::new(l)
    }

    #[test]
    fn a_reconcile_reading_a_copy_older_than_our_status_write_sees_the_write() {
        let written = Written::default();
        let wrote = ll("20", Some("w-1"));
        written.record(Some("u1"), Some("20"), wrote.status.clone().unwrap());
        let stale = with_latest_status(&written, ll("19", None));
        assert_eq!(stale.status.as_ref().unwrap().locks[0].holder.as_deref(), Some("w-1"));
        assert_eq!(stale.resource_version().as_deref(), Some("19"), "only the status is replaced");
        // Once the watch delivers the write (or anything newer), the copy is used as it is.
        let caught_up = with_latest_status(&written, ll("21", Some("w-2")));
        assert_eq!(caught_up.status.as_ref().unwrap().locks[0].holder.as_deref(), Some("w-2"));
        assert_eq!(with_latest_status(&written, ll("19", None)).status.as_ref().unwrap().locks[0].holder, None, "forgotten once caught up");
    }

    fn pod(uid: &str) -> k8s_openapi::api::core::v1::Pod {
        pod_at(uid, "1")
    }

    fn pod_at(uid: &str, rv: &str) -> k8s_openapi::api::core::v1::Pod {
        let mut p = k8s_openapi::api::core::v1::Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    #[test]
    fn a_write_answered_after_its_objects_delete_event_is_not_kept() {
        let written: Written<PodKeys> = Written::default();
        written.observe(&watcher::Event::Delete(pod("p1")));
        written.record(Some("p1"), Some("9"), PodKeys::default());
        assert_eq!(written.len(), 0, "nothing will ever deliver or delete p1 again");
        for i in 0..Written::<PodKeys>::TOMBSTONES {
            written.observe(&watcher::Event::Delete(pod(&format!("other-{i}"))));
        }
        written.record(Some("p1"), Some("9"), PodKeys::default());
        assert_eq!(written.len(), 1, "tombstones are bounded: the oldest are forgotten");
    }

    #[test]
    fn objects_deleted_before_the_watch_delivered_our_write_are_forgotten() {
        let written: Written<PodKeys> = Written::default();
        for uid in ["p1", "p2", "p3"] {
            written.record(Some(uid), Some("7"), PodKeys::default());
        }
        written.observe(&watcher::Event::Apply(pod("p1")));
        assert_eq!(written.len(), 3, "a pod still there keeps its entry until the watch catches up");
        written.observe(&watcher::Event::Delete(pod("p1")));
        assert_eq!(written.newer_than(Some("p1"), Some("6")), None);
        // p3 was deleted while the watch was down: the relist does not list it.
        for ev in [watcher::Event::Init, watcher::Event::InitApply(pod("p2")), watcher::Event::InitDone] {
            written.observe(&ev);
        }
        assert_eq!((written.len(), written.newer_than(Some("p2"), Some("6"))), (1, Some(PodKeys::default())));
    }

    #[test]
    fn a_pod_just_promoted_is_seen_as_leader_even_from_an_older_copy() {
        let written: Written<PodKeys> = Written::default();
        let leader = PodKeys { annotations: [("leaderlock.dev/ledger".to_string(), "leader".to_string())].into(), ..Default::default() };
        written.record(Some("p1"), Some("7"), leader.clone());
        assert_eq!(written.newer_than(Some("p1"), Some("6")), Some(leader), "the watch still shows version 6");
        assert_eq!(written.newer_than(Some("p2"), Some("6")), None, "another pod");
        assert_eq!(written.newer_than(Some("p1"), Some("7")), None);
        assert_eq!(written.newer_than(Some("p1"), Some("6")), None, "forgotten once caught up");
    }
}
