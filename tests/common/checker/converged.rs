//! The end-of-scenario checks, read fresh from the apiservers and etcd rather than from what the
//! watches delivered: [`converged`] for one cluster, [`converged_across`] for clusters sharing
//! locks through one etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use leaderlock::resource::LeaderLock;

use super::{Cluster, is_candidate, pod_in, pod_of};

/// The end-of-scenario check, read fresh from the apiserver and etcd: every LeaderLock that is
/// not being deleted and not rejected has, per lock, exactly one key per candidate pod (and none
/// for other pods), the holder in status is the lowest-create-revision key's pod with its create
/// revision as token, that pod is annotated `leader` with the token, every other candidate
/// `standby`, and non-candidates carry no key of the lock; every candidate's resync key
/// (contract §3.1) confirms what it leads. Returns what is still wrong.
pub async fn converged(client: &kube::Client, ns: &str, endpoint: &str, root: &str, only: Option<&[String]>) -> Result<(), String> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&Default::default()).await.map_err(|e| e.to_string())?;
    let lls = Api::<LeaderLock>::namespaced(client.clone(), ns).list(&Default::default()).await.map_err(|e| e.to_string())?;
    let mut etcd = etcd_client::Client::connect([endpoint], None).await.map_err(|e| e.to_string())?;
    let kvs = etcd.get(format!("{root}locks/{ns}/"), Some(GetOptions::new().with_prefix())).await.map_err(|e| e.to_string())?;
    let mut checked = BTreeSet::new();
    let keys: Vec<(String, i64, String)> = kvs
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()))
        .collect();
    for ll in &lls.items {
        if ll.metadata.deletion_timestamp.is_some() || only.is_some_and(|o| !o.contains(&ll.name_any())) {
            continue;
        }
        let sel = Selector::try_from(ll.spec.selector.clone()).map_err(|e| e.to_string())?;
        let cands: Vec<&Pod> =
            pods.items.iter().filter(|p| is_candidate(p) && sel.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))).collect();
        let st = ll.status.clone().unwrap_or_default();
        if st.observed_generation != ll.metadata.generation {
            return Err(format!("{}: status not observed yet", ll.name_any()));
        }
        checked.extend(cands.iter().map(|p| p.name_any()));
        let queued = queued(ll, &cands)?;
        for lock in ll.spec.lock_specs().iter() {
            let prefix = lock.etcd_key.clone().unwrap_or_else(|| format!("{root}locks/{ns}/{}", lock.name));
            let mine: Vec<&(String, i64, String)> =
                keys.iter().filter(|(k, _, _)| k.rsplit_once('/').is_some_and(|(p, _)| p == prefix)).collect();
            let mut want: Vec<String> = queued.iter().map(|p| format!("{prefix}/{}", p.uid().unwrap_or_default())).collect();
            let mut have: Vec<String> = mine.iter().map(|(k, _, _)| format!("{prefix}/{}", super::key_candidate(k))).collect();
            want.sort();
            have.sort();
            if want != have {
                return Err(format!("lock {}: etcd keys {have:?}, candidates' keys {want:?}", lock.name));
            }
            let ls = st.locks.iter().find(|l| l.name == lock.name).cloned().unwrap_or_default();
            let holder = mine.iter().min_by_key(|(_, r, _)| *r);
            let want_holder = holder.map(|(_, r, v)| (pod_of(v, ns).unwrap_or(v).to_string(), r.to_string()));
            if (ls.holder.clone(), ls.fencing_token.clone()) != (want_holder.clone().map(|h| h.0), want_holder.clone().map(|h| h.1)) {
                return Err(format!("lock {}: status says {:?}/{:?}, etcd {want_holder:?}", lock.name, ls.holder, ls.fencing_token));
            }
            for p in &pods.items {
                let a = p.annotations();
                let role = a.get(&format!("leaderlock.dev/{}", lock.name)).cloned();
                let token = a.get(&format!("leaderlock.dev/{}.token", lock.name)).cloned();
                let is_cand = cands.iter().any(|c| c.name_any() == p.name_any());
                let is_holder = want_holder.as_ref().is_some_and(|h| h.0 == p.name_any());
                let want = match (is_cand, is_holder) {
                    (true, true) => (Some("leader".to_string()), want_holder.clone().map(|h| h.1)),
                    (true, false) => (Some("standby".to_string()), None),
                    (false, _) => (None, None),
                };
                if (role.clone(), token.clone()) != want {
                    return Err(format!("lock {}: pod {} carries {role:?}/{token:?}, want {want:?}", lock.name, p.name_any()));
                }
            }
        }
    }
    resynced(pods.items.iter().filter(|p| checked.contains(&p.name_any())))
}

/// Every pod given carries the resync key that confirms what it leads (none when it leads
/// nothing): the controller's follow-up writes are done (contract §3.1).
fn resynced<'a>(pods: impl Iterator<Item = &'a Pod>) -> Result<(), String> {
    use leaderlock::pods::{PodKeys, RESYNC_KEY, leadership_digest};
    for p in pods {
        let keys = PodKeys::current(p);
        let (have, want) = (keys.annotations.get(RESYNC_KEY), leadership_digest(&keys));
        if have != want.as_ref() {
            return Err(format!("pod {}: resync {have:?}, want {want:?} for what it leads", p.name_any()));
        }
    }
    Ok(())
}

/// Polls [`converged`] until it holds; returns how long that took, or what was still wrong.
pub async fn wait_converged(
    client: &kube::Client,
    ns: &str,
    endpoint: &str,
    root: &str,
    only: Option<&[String]>,
    bound: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let r = converged(client, ns, endpoint, root, only).await;
        match r {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > bound => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The candidates that own an etcd key: all but those placement marks never to lead
/// (docs/contract.md §8).
fn queued<'a>(ll: &LeaderLock, cands: &[&'a Pod]) -> Result<Vec<&'a Pod>, String> {
    let never = match ll.spec.placement.as_ref().and_then(|p| p.never_lead.clone()) {
        Some(s) => Some(Selector::try_from(s).map_err(|e| e.to_string())?),
        None => None,
    };
    let labels = |p: &Pod| p.metadata.labels.clone().unwrap_or_default();
    Ok(cands.iter().copied().filter(|p| !never.as_ref().is_some_and(|s| s.matches(&labels(p)))).collect())
}

/// One lock of one served LeaderLock, with the pods that are its candidates and those of them
/// in line (owning a key).
struct UsedLock<'a> {
    ll: String,
    lock: String,
    prefix: String,
    cands: Vec<&'a Pod>,
    queued: Vec<&'a Pod>,
}

/// What one cluster shows: its pods and LeaderLocks, listed once.
struct Listed<'a> {
    cluster: &'a Cluster,
    pods: Vec<Pod>,
    lls: Vec<LeaderLock>,
}

impl Listed<'_> {
    /// Every lock of every served LeaderLock.
    fn locks(&self) -> Result<Vec<UsedLock<'_>>, String> {
        let mut out = Vec::new();
        for ll in self.lls.iter().filter(|l| l.metadata.deletion_timestamp.is_none()) {
            let st = ll.status.clone().unwrap_or_default();
            if st.observed_generation != ll.metadata.generation {
                return Err(format!("{}: status of {} not observed yet", self.cluster.label(), ll.name_any()));
            }
            let sel = Selector::try_from(ll.spec.selector.clone()).map_err(|e| e.to_string())?;
            let cands: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| is_candidate(p) && sel.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
                .collect();
            let queued = queued(ll, &cands)?;
            for lock in ll.spec.lock_specs().iter() {
                let prefix =
                    lock.etcd_key.clone().unwrap_or_else(|| format!("{}locks/{}/{}", self.cluster.root, self.cluster.ns, lock.name));
                out.push(UsedLock { ll: ll.name_any(), lock: lock.name.clone(), prefix, cands: cands.clone(), queued: queued.clone() });
            }
        }
        Ok(out)
    }
}

/// [`converged`] across clusters sharing locks through one etcd (every [`Cluster`] needs its
/// `id`): per lock prefix, etcd holds exactly one key per candidate pod of every cluster; the
/// lowest create revision's pod is `leader` with that revision as token in its cluster and every
/// other candidate in every cluster `standby`; each cluster's status names that holder — the pod
/// at home, `<cluster>/<namespace>/<pod>` elsewhere — with the same token.
pub async fn converged_across(clusters: &[Cluster], endpoint: &str) -> Result<(), String> {
    let mut listed = Vec::new();
    for cluster in clusters {
        let pods =
            Api::<Pod>::namespaced(cluster.client.clone(), &cluster.ns).list(&Default::default()).await.map_err(|e| e.to_string())?;
        let lls = Api::<LeaderLock>::namespaced(cluster.client.clone(), &cluster.ns)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        listed.push(Listed { cluster, pods: pods.items, lls: lls.items });
    }
    let mut etcd = etcd_client::Client::connect([endpoint], None).await.map_err(|e| e.to_string())?;
    let kvs = etcd.get("", Some(GetOptions::new().with_all_keys())).await.map_err(|e| e.to_string())?;
    let keys: Vec<(String, i64, String)> = kvs
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.create_revision(), String::from_utf8_lossy(kv.value()).into_owned()))
        .collect();
    // lock prefix → (cluster index, lock) of every cluster using it.
    let mut per_prefix: BTreeMap<String, Vec<(usize, UsedLock)>> = BTreeMap::new();
    for (i, l) in listed.iter().enumerate() {
        for used in l.locks()? {
            per_prefix.entry(used.prefix.clone()).or_default().push((i, used));
        }
    }
    for (prefix, users) in &per_prefix {
        let mine: Vec<&(String, i64, String)> =
            keys.iter().filter(|(k, _, _)| k.rsplit_once('/').is_some_and(|(p, _)| p == prefix)).collect();
        let want: BTreeSet<String> =
            users.iter().flat_map(|(_, u)| u.queued.iter().map(|p| format!("{prefix}/{}", p.uid().unwrap_or_default()))).collect();
        let have: BTreeSet<String> = mine.iter().map(|(k, _, _)| format!("{prefix}/{}", super::key_candidate(k))).collect();
        if want != have {
            return Err(format!("lock {prefix}: etcd keys {have:?}, candidates' keys {want:?}"));
        }
        // The holder: (cluster index, pod, token).
        let holder = mine.iter().min_by_key(|(_, r, _)| *r).map(|(_, r, v)| {
            let at = listed.iter().position(|l| pod_in(v, l.cluster).is_some());
            (at, at.and_then(|i| pod_in(v, listed[i].cluster)).unwrap_or(v).to_string(), *r)
        });
        for (i, UsedLock { ll, lock, cands, .. }) in users {
            let l = &listed[*i];
            let st = l.lls.iter().find(|x| x.name_any() == *ll).and_then(|x| x.status.clone()).unwrap_or_default();
            let ls = st.locks.iter().find(|s| s.name == *lock).cloned().unwrap_or_default();
            let want_status = holder.as_ref().map(|(at, pod, rev)| match at {
                Some(at) if at == i => (pod.clone(), rev.to_string()),
                Some(at) => {
                    (format!("{}/{}/{pod}", listed[*at].cluster.id.as_deref().unwrap_or(""), listed[*at].cluster.ns), rev.to_string())
                }
                None => (pod.clone(), rev.to_string()),
            });
            let got = ls.holder.clone().zip(ls.fencing_token.clone());
            if got != want_status {
                return Err(format!("{}: lock {lock}: status says {got:?}, etcd {want_status:?}", l.cluster.label()));
            }
            for p in &l.pods {
                let a = p.annotations();
                let got = (a.get(&format!("leaderlock.dev/{lock}")).cloned(), a.get(&format!("leaderlock.dev/{lock}.token")).cloned());
                let is_cand = cands.iter().any(|c| c.name_any() == p.name_any());
                let is_holder = holder.as_ref().is_some_and(|(at, pod, _)| *at == Some(*i) && *pod == p.name_any());
                let want = match (is_cand, is_holder) {
                    (true, true) => (Some("leader".to_string()), holder.as_ref().map(|h| h.2.to_string())),
                    (true, false) => (Some("standby".to_string()), None),
                    (false, _) => (None, None),
                };
                if got != want {
                    return Err(format!("{}: lock {lock}: pod {} carries {got:?}, want {want:?}", l.cluster.label(), p.name_any()));
                }
            }
        }
    }
    Ok(())
}

/// Polls [`converged_across`] until it holds; returns how long that took, or what was still wrong.
pub async fn wait_converged_across(clusters: &[Cluster], endpoint: &str, bound: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match converged_across(clusters, endpoint).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > bound => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
