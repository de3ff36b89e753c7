//! Leader intervals in commit order. Two watches (two apiservers, or two namespaces) deliver
//! their events independently, so the checker may see a promotion in one before the demotion in
//! the other that was committed first. When every watched apiserver stores into one etcd (the
//! test harness's second apiserver shares the first one's storage under another prefix), a
//! pod's resourceVersion is that etcd's revision: one order over every cluster. Each pod's time
//! as `leader` is kept as an interval of resourceVersions, and two pods lead at once only if
//! their intervals overlap in that order.

use std::collections::HashMap;

/// One pod's uninterrupted time as leader of one lock with one token, in resourceVersions.
#[derive(Clone, Debug)]
pub struct Interval {
    /// The source (cluster view) the pod is in.
    pub source: usize,
    pub pod: String,
    pub token: Option<i64>,
    pub start: u64,
    /// None while it still leads.
    pub end: Option<u64>,
}

/// Every leader interval, per etcd lock prefix.
#[derive(Default)]
pub struct Intervals {
    by_lock: HashMap<String, Vec<Interval>>,
}

impl Intervals {
    pub fn open(&mut self, lock: &str, source: usize, pod: &str, token: Option<i64>, rv: u64) {
        let v = self.by_lock.entry(lock.to_string()).or_default();
        v.push(Interval { source, pod: pod.to_string(), token, start: rv, end: None });
    }

    pub fn close(&mut self, lock: &str, source: usize, pod: &str, rv: u64) {
        if let Some(i) =
            self.by_lock.get_mut(lock).and_then(|v| v.iter_mut().rev().find(|i| i.source == source && i.pod == pod && i.end.is_none()))
        {
            i.end = Some(rv.max(i.start));
        }
    }

    /// Pairs of pods of different sources that led one lock at once, and tokens that did not
    /// grow from one leader to the next, both in resourceVersion order. `name` labels a source
    /// and `lock_name` a lock prefix in messages.
    pub fn violations(&self, name: impl Fn(usize) -> String, lock_name: impl Fn(&str) -> String) -> Vec<String> {
        let mut out = Vec::new();
        for (lock, intervals) in &self.by_lock {
            let mut v = intervals.clone();
            v.sort_by_key(|i| i.start);
            let ends = |i: &Interval| i.end.unwrap_or(u64::MAX);
            for (a_idx, a) in v.iter().enumerate() {
                for b in v[a_idx + 1..].iter().take_while(|b| b.start < ends(a)) {
                    if a.source != b.source && b.start < ends(a) && a.start < ends(b) {
                        out.push(format!(
                            "lock {}: {}/{} (leader from resourceVersion {} to {:?}) and {}/{} (from {} to {:?}) led at once",
                            lock_name(lock),
                            name(a.source),
                            a.pod,
                            a.start,
                            a.end,
                            name(b.source),
                            b.pod,
                            b.start,
                            b.end
                        ));
                    }
                }
            }
            let mut max: Option<i64> = None;
            let mut prev: Option<&Interval> = None;
            for i in &v {
                let Some(token) = i.token else { continue };
                let same = prev.is_some_and(|p| p.source == i.source && p.pod == i.pod && p.token == i.token);
                if !same && max.is_some_and(|m| token <= m) {
                    out.push(format!(
                        "lock {}: {}/{} leads with token {token} from resourceVersion {}, not above the largest before it {max:?}",
                        lock_name(lock),
                        name(i.source),
                        i.pod,
                        i.start
                    ));
                }
                max = Some(max.map_or(token, |m| m.max(token)));
                prev = Some(i);
            }
        }
        out
    }
}
