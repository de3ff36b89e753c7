//! The resync of a pod's role keys (docs/contract.md §3.1): when each pod whose leadership we
//! changed may get its follow-up write. The kubelet sometimes drops a pod update when projecting
//! annotations into a downward-API volume (README, "When the kubelet loses a role change"); a
//! second update a little later makes it project them again, by then from the changed pod.
//!
//! ```text
//!  Step::Pod changes leadership ─▶ record(uid, now + delay) ─▶ snapshot: pod is "not yet"
//!  reconcile requeued at the due time ─▶ snapshot: due ─▶ plan writes the new digest ─▶ clear
//! ```
//!
//! One timer per pending follow-up (the reconcile's requeue), none while idle. Forgotten when
//! the follow-up is written or the pod is deleted, so entries are bounded by recent changes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::time::Instant;

/// When the follow-up write of each pod (by UID) is due.
#[derive(Default)]
pub struct Resyncs {
    due: Mutex<HashMap<String, Instant>>,
}

impl Resyncs {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write changed `uid`'s leadership now: its follow-up is due `after` from now.
    pub fn changed(&self, uid: &str, after: Duration) {
        self.map().insert(uid.to_string(), Instant::now() + after);
    }

    /// The follow-up of `uid` was written (or is no longer needed).
    pub fn done(&self, uid: &str) {
        self.map().remove(uid);
    }

    /// Whether `uid`'s follow-up must still wait.
    pub fn not_yet(&self, uid: &str) -> bool {
        self.map().get(uid).is_some_and(|due| *due > Instant::now())
    }

    /// How long until the earliest follow-up among `uids` (the pods a reconcile left waiting) is
    /// due; zero for one that fell due while that reconcile ran, so that its timer is not lost.
    pub fn next_due<'a>(&self, uids: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
        let (map, now) = (self.map(), Instant::now());
        uids.into_iter().filter_map(|u| map.get(u)).map(|due| due.saturating_duration_since(now)).min()
    }

    /// Forgets a deleted pod.
    pub fn forget_gone(&self, ev: &watcher::Event<Pod>) {
        if let watcher::Event::Delete(p) = ev
            && let Some(uid) = &p.metadata.uid
        {
            self.done(uid);
        }
    }

    /// How many follow-ups are pending (for `leaderlock_map_entries`).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_waits_for_its_delay_and_is_forgotten_once_done_or_deleted() {
        let r = Resyncs::default();
        r.changed("a", Duration::from_secs(60));
        r.changed("b", Duration::ZERO);
        assert!(r.not_yet("a") && !r.not_yet("b") && !r.not_yet("c"));
        let next = r.next_due(["a", "c"]).unwrap();
        assert!(next > Duration::from_secs(59) && next <= Duration::from_secs(60), "{next:?}");
        assert_eq!(r.next_due(["a", "b"]), Some(Duration::ZERO), "one that fell due meanwhile: at once");
        r.done("a");
        let mut gone = Pod::default();
        gone.metadata.uid = Some("b".into());
        r.forget_gone(&watcher::Event::Delete(gone));
        assert!(r.is_empty());
    }
}
