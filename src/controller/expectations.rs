//! Read-your-writes: what this controller wrote that the watches have not delivered yet —
//! what kube-controller-manager calls *expectations*.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::Resource;
use kube::runtime::watcher;

use crate::resource::{LeaderLock, LeaderLockStatus};

/// What this controller last wrote to objects of one kind (by UID), with the resourceVersion the
/// write produced, expected until the watch delivers that version. A reconcile can start before
/// the watch shows our previous write; deciding from the older copy it would announce the same
/// holder change twice and write the status again, or — for pods — think a pod it just promoted
/// is still standby and skip its demotion: two leaders.
///
/// An entry goes when a reader's copy shows our write or anything newer
/// ([`Expectations::newer_than`]: pruning on the watch event instead would race a reconcile that
/// took its view just before the index saw that event), with its object's Delete event, or with
/// the relist that no longer shows it ([`Expectations::forget_gone`]). So entries are bounded by
/// the live objects. A write whose answer comes back after the object's Delete event was seen is
/// not recorded at all: the UIDs of the last [`Expectations::TOMBSTONES`] deletions are kept for
/// that (a 30-minute soak showed such entries accumulating otherwise). One lock guards all of
/// it: a Delete seen between a write's tombstone check and its insert would otherwise leave an
/// entry for ever.
pub struct Expectations<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    entries: HashMap<String, (u64, T)>,
    /// During a relist, the UIDs it listed so far.
    relisted: Option<HashSet<String>>,
    /// UIDs of recently deleted objects, oldest first; bounded.
    deleted: Tombstones,
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

impl<T> Default for Expectations<T> {
    fn default() -> Self {
        Expectations { state: Mutex::new(State { entries: HashMap::new(), relisted: None, deleted: Tombstones::default() }) }
    }
}

impl<T: Clone> Expectations<T> {
    /// How many deletions are remembered: far more than can happen between a write and its answer.
    pub const TOMBSTONES: usize = 4096;

    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many writes the watch has not delivered yet (cheap: for `leaderlock_map_entries`).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the objects a watch event says are gone: a deleted one, or those a completed
    /// relist did not list.
    pub fn forget_gone<K: Resource>(&self, ev: &watcher::Event<K>) {
        let uid = |o: &K| o.meta().uid.clone();
        let mut s = self.state();
        match ev {
            watcher::Event::Delete(o) => {
                if let Some(u) = uid(o) {
                    s.entries.remove(&u);
                    s.deleted.add(u, Self::TOMBSTONES);
                }
            }
            watcher::Event::Apply(_) => {}
            watcher::Event::Init => s.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(o) => s.relisted.get_or_insert_default().extend(uid(o)),
            watcher::Event::InitDone => {
                let listed = s.relisted.take().unwrap_or_default();
                s.entries.retain(|u, _| listed.contains(u));
            }
        }
    }

    /// Expects version `rv` of object `uid`, which writing `value` produced (not when the watch
    /// already said the object is gone).
    pub fn record(&self, uid: Option<&str>, rv: Option<&str>, value: T) {
        if let (Some(uid), Some(rv)) = (uid, rv.and_then(|v| v.parse::<u64>().ok())) {
            let mut s = self.state();
            if !s.deleted.set.contains(uid) {
                s.entries.insert(uid.to_string(), (rv, value));
            }
        }
    }

    /// What we wrote, if the copy at version `rv` the caller holds is older than that write.
    pub fn newer_than(&self, uid: Option<&str>, rv: Option<&str>) -> Option<T> {
        let (uid, rv) = (uid?, rv?.parse::<u64>().ok()?);
        let mut s = self.state();
        match s.entries.get(uid) {
            Some((wrote, value)) if rv < *wrote => Some(value.clone()),
            Some(_) => {
                s.entries.remove(uid); // the watch has caught up
                None
            }
            None => None,
        }
    }
}

/// `ll`, with the status we last wrote if `ll` is older than that write.
pub fn with_latest_status(written: &Expectations<LeaderLockStatus>, ll: Arc<LeaderLock>) -> Arc<LeaderLock> {
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
    use crate::resource::LockStatus;
    use kube::ResourceExt;

    fn ll(rv: &str, holder: Option<&str>) -> Arc<LeaderLock> {
        let mut l = LeaderLock::new("payments", crate::fixtures::spec());
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
        let written = Expectations::default();
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
        let written: Expectations<PodKeys> = Expectations::default();
        written.forget_gone(&watcher::Event::Delete(pod("p1")));
        written.record(Some("p1"), Some("9"), PodKeys::default());
        assert_eq!(written.len(), 0, "nothing will ever deliver or delete p1 again");
        for i in 0..Expectations::<PodKeys>::TOMBSTONES {
            written.forget_gone(&watcher::Event::Delete(pod(&format!("other-{i}"))));
        }
        written.record(Some("p1"), Some("9"), PodKeys::default());
        assert_eq!(written.len(), 1, "tombstones are bounded: the oldest are forgotten");
    }

    #[test]
    fn a_delete_racing_a_record_never_leaves_an_entry_behind() {
        // Writers record while another thread delivers the same objects' Delete events; whichever
        // comes first, once both are done no entry for a deleted object may remain.
        for round in 0..50 {
            let written: Arc<Expectations<PodKeys>> = Arc::default();
            let uids: Vec<String> = (0..200).map(|i| format!("r{round}-p{i}")).collect();
            std::thread::scope(|s| {
                let w = written.clone();
                let u = uids.clone();
                s.spawn(move || u.iter().for_each(|uid| w.record(Some(uid), Some("5"), PodKeys::default())));
                let w = written.clone();
                let u = uids.clone();
                s.spawn(move || u.iter().for_each(|uid| w.forget_gone(&watcher::Event::Delete(pod(uid)))));
            });
            assert_eq!(written.len(), 0, "round {round}: an expectation outlived its object's Delete event");
        }
    }

    #[test]
    fn objects_deleted_before_the_watch_delivered_our_write_are_forgotten() {
        let written: Expectations<PodKeys> = Expectations::default();
        for uid in ["p1", "p2", "p3"] {
            written.record(Some(uid), Some("7"), PodKeys::default());
        }
        written.forget_gone(&watcher::Event::Apply(pod("p1")));
        assert_eq!(written.len(), 3, "a pod still there keeps its entry until the watch catches up");
        written.forget_gone(&watcher::Event::Delete(pod("p1")));
        assert_eq!(written.newer_than(Some("p1"), Some("6")), None);
        // p3 was deleted while the watch was down: the relist does not list it.
        for ev in [watcher::Event::Init, watcher::Event::InitApply(pod("p2")), watcher::Event::InitDone] {
            written.forget_gone(&ev);
        }
        assert_eq!((written.len(), written.newer_than(Some("p2"), Some("6"))), (1, Some(PodKeys::default())));
    }

    #[test]
    fn a_pod_just_promoted_is_seen_as_leader_even_from_an_older_copy() {
        let written: Expectations<PodKeys> = Expectations::default();
        let leader = PodKeys { annotations: [("leaderlock.dev/ledger".to_string(), "leader".to_string())].into(), ..Default::default() };
        written.record(Some("p1"), Some("7"), leader.clone());
        assert_eq!(written.newer_than(Some("p1"), Some("6")), Some(leader), "the watch still shows version 6");
        assert_eq!(written.newer_than(Some("p2"), Some("6")), None, "another pod");
        assert_eq!(written.newer_than(Some("p1"), Some("7")), None);
        assert_eq!(written.newer_than(Some("p1"), Some("6")), None, "forgotten once caught up");
    }
}
