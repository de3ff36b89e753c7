//! Judging Handover requests (docs/contract.md §7), pure: from one reconcile's observations,
//! what becomes of each open request of the LeaderLock — superseded, refused, done, or a move to
//! make. [`super::plan`] turns a move into its writes: the request accepted (its holder recorded),
//! the holder demoted, one etcd transaction, the new holder promoted, the request done.

use std::sync::Arc;

use crate::lock::LockKey;
use crate::pods::PodInfo;
use crate::resolve::Resolution;
use crate::resource::LeaderLock;
use crate::resource::handover::{Handover, HandoverStatus, Phase, reasons};

/// What to do about one open request.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Final without a move: the status to write (Refused, Superseded, or Done).
    Settle(HandoverStatus),
    /// Move the lock at `prefix` from the holder with token `from_token` to `to` (a candidate
    /// id; None: the next in line). `accept`: the status recording the holder, written first.
    Move { lock: String, prefix: String, from_token: i64, to: Option<String>, accept: Option<HandoverStatus> },
}

/// A request and its verdict.
#[derive(Clone, Debug)]
pub struct Judged {
    pub request: Arc<Handover>,
    pub verdict: Verdict,
}

/// What judging reads.
pub struct Facts<'a> {
    pub ll: &'a LeaderLock,
    /// How the LeaderLock's locks resolve, in spec order.
    pub mine: &'a [(String, Resolution)],
    /// Its candidate pods (Ready, selected, not terminating).
    pub candidates: &'a [Arc<PodInfo>],
    /// Every pod of the view (to name a holder that is no longer a candidate).
    pub pods: &'a [Arc<PodInfo>],
    /// Each lock prefix's line, holder first.
    pub line: &'a dyn Fn(&str) -> Vec<LockKey>,
    /// Candidates (by UID) that placement.neverLead keeps out of every line.
    pub never_lead: &'a std::collections::BTreeSet<String>,
    pub now: jiff::Timestamp,
}

/// Judges every open request of the LeaderLock: the newest per lock (by creation, then name)
/// is judged, older open ones are superseded.
pub fn judge(requests: &[Arc<Handover>], f: &Facts) -> Vec<Judged> {
    let mut open: Vec<&Arc<Handover>> = requests.iter().filter(|r| !is_final(r)).collect();
    open.sort_by(|a, b| (&b.metadata.creation_timestamp, &b.metadata.name).cmp(&(&a.metadata.creation_timestamp, &a.metadata.name)));
    let mut seen_locks = Vec::new();
    let mut out = Vec::new();
    for r in open {
        let verdict = if seen_locks.contains(&r.spec.lock) {
            Verdict::Settle(settled(r, Phase::Superseded, reasons::SUPERSEDED, "a newer Handover for the same lock was made", f.now))
        } else {
            seen_locks.push(r.spec.lock.clone());
            judge_one(r, f)
        };
        out.push(Judged { request: r.clone(), verdict });
    }
    out
}

/// Whether a request reached its final phase.
pub fn is_final(r: &Handover) -> bool {
    r.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_final)
}

fn judge_one(r: &Handover, f: &Facts) -> Verdict {
    let refuse = |reason: &str, message: String| Verdict::Settle(settled(r, Phase::Refused, reason, &message, f.now));
    let lock = &r.spec.lock;
    if f.ll.spec.paused {
        return refuse(reasons::PAUSED, "the LeaderLock is paused (spec.paused): resume it, then ask again".into());
    }
    if super::placement::spreads(f.ll) {
        return refuse(
            reasons::PLACED_BY_SPREAD,
            "the LeaderLock places its locks with policy Spread, which would move the lock back; steer it with placement.preferred or placement.neverLead instead".into(),
        );
    }
    let prefix = match f.mine.iter().find(|(name, _)| name == lock) {
        None => return refuse(reasons::LOCK_NOT_FOUND, format!("the LeaderLock has no lock {lock:?} in spec.locks")),
        Some((_, Resolution::Rejected { message, .. })) => {
            return refuse(reasons::LOCK_NOT_SERVED, format!("lock {lock:?} is not served: {message}"));
        }
        Some((_, Resolution::Accepted(prefix))) => prefix.clone(),
    };
    let line = (f.line)(&prefix);
    let Some(holder) = line.first() else {
        return refuse(reasons::NO_HOLDER, format!("lock {lock:?} has no holder to move"));
    };
    let holder_pod = pod_of(holder, f.pods);
    let recorded = r.status.as_ref().and_then(|s| s.from_token.as_deref()).and_then(|t| t.parse::<i64>().ok());
    if let Some(from_token) = recorded
        && from_token != holder.token
    {
        // The holder changed since the request was accepted: by this move, or by a failover.
        let reached = match &r.spec.to {
            None => true,
            Some(to) => holder_pod.as_deref() == Some(to.as_str()),
        };
        if reached {
            return done(r, reasons::HANDED_OVER, holder, holder_pod, f.now);
        }
        if r.spec.if_holder.is_some() {
            return refuse(reasons::NOT_HOLDER, format!("the holder of lock {lock:?} changed before the handover was made"));
        }
    }
    if holder.owner.is_none() {
        let name = holder.outside_name();
        return refuse(
            reasons::EXTERNAL_HOLDER,
            format!("lock {lock:?} is held by {name}, outside this cluster's LeaderLock; only its owner can release it"),
        );
    }
    let holder_name = holder_pod.clone().unwrap_or_else(|| holder.owner.clone().unwrap_or_default());
    if let Some(want) = &r.spec.if_holder
        && want != &holder_name
    {
        return refuse(reasons::NOT_HOLDER, format!("lock {lock:?} is held by {holder_name}, not {want}"));
    }
    let to = match &r.spec.to {
        Some(to) if to == &holder_name => return done(r, reasons::ALREADY_HOLDER, holder, holder_pod, f.now),
        Some(to) => match f.candidates.iter().find(|p| &p.name == to) {
            Some(pod) if pod.uid.as_ref().is_some_and(|id| f.never_lead.contains(id)) => {
                return refuse(
                    reasons::NEVER_LEAD,
                    format!(
                        "pod {to} matches the LeaderLock's placement.neverLead and never leads; pick another pod, or change placement.neverLead"
                    ),
                );
            }
            Some(pod) => Some(pod.uid.clone().unwrap_or_default()),
            None => {
                let why = "it must exist, be selected by the LeaderLock, be Running and Ready, and not be terminating";
                return refuse(reasons::NOT_CANDIDATE, format!("pod {to} is not a candidate for lock {lock:?}: {why}"));
            }
        },
        None if line.len() < 2 => return refuse(reasons::NO_OTHER_CANDIDATE, format!("nobody else is in line for lock {lock:?}")),
        None => None,
    };
    if let Some(id) = &to
        && let Some(target_at) = line.iter().position(|h| h.owner.as_ref() == Some(id))
        && let Some(outside) = line[..target_at].iter().find(|h| h.owner.is_none())
    {
        let name = outside.outside_name();
        return refuse(
            reasons::EXTERNAL_AHEAD,
            format!("{name}, outside this cluster's LeaderLock, is in line ahead of the target and cannot be moved"),
        );
    }
    let accept = (recorded != Some(holder.token)).then(|| HandoverStatus {
        phase: Some(Phase::Pending),
        from: Some(holder_name),
        from_token: Some(holder.token.to_string()),
        ..Default::default()
    });
    Verdict::Move { lock: lock.clone(), prefix, from_token: holder.token, to, accept }
}

/// The pod (by name) whose key `h` is: a candidate's, or, for a pod no longer candidate, the name
/// its key records.
fn pod_of(h: &LockKey, pods: &[Arc<PodInfo>]) -> Option<String> {
    let id = h.owner.as_deref()?;
    let by_uid = pods.iter().find(|p| p.uid.as_deref() == Some(id)).map(|p| p.name.clone());
    by_uid.or_else(|| h.name.as_deref().and_then(|n| n.rsplit_once('/')).map(|(_, pod)| pod.to_string()))
}

/// `r`'s status (keeping what it recorded, e.g. `from`) in a final `phase`.
fn settled(r: &Handover, phase: Phase, reason: &str, message: &str, now: jiff::Timestamp) -> HandoverStatus {
    final_status(r.status.clone().unwrap_or_default(), phase, reason, message, now)
}

fn final_status(mut s: HandoverStatus, phase: Phase, reason: &str, message: &str, now: jiff::Timestamp) -> HandoverStatus {
    s.phase = Some(phase);
    s.reason = Some(reason.into());
    s.message = Some(message.into());
    s.completion_time = Some(rfc3339(now));
    s
}

/// A refusal decided outside judging (when the keys no longer allow the move, or no LeaderLock
/// exists), in the same form as the judged ones.
pub fn refused(reason: &str, message: &str, now: jiff::Timestamp) -> HandoverStatus {
    final_status(HandoverStatus::default(), Phase::Refused, reason, message, now)
}

/// `holder`'s name as the LeaderLock's status gives it: its pod, or (a step-down may hand the
/// lock to the next in line, whoever that is) a holder outside this cluster's LeaderLock.
fn done(r: &Handover, reason: &str, holder: &LockKey, pod: Option<String>, now: jiff::Timestamp) -> Verdict {
    let holder_name = pod.unwrap_or_else(|| match &holder.owner {
        Some(id) => id.clone(),
        None => holder.outside_name(),
    });
    let message = format!("{holder_name} holds lock {:?} with fencing token {}", r.spec.lock, holder.token);
    let mut s = settled(r, Phase::Done, reason, &message, now);
    s.holder = Some(holder_name);
    s.fencing_token = Some(holder.token.to_string());
    Verdict::Settle(s)
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
