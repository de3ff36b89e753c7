//! The `shards: N` shorthand: N identical locks `shard-0` … `shard-{N-1}` without listing them.
//!
//! The bound, [`MAX_SHARDS`] = 256, comes from what every lock costs on every object it touches
//! (the figures are checked by the tests below, with the longest names Kubernetes allows):
//!
//! * the LeaderLock's status carries one entry per lock and is rewritten on every holder
//!   change: 256 entries with 253-character pod names are about 101 KB, under a tenth of the
//!   1.5 MiB an etcd request (hence an object) may hold, and a rebalance after a join rewrites
//!   it once per move. A status that also lists each lock's whole queue would add 256 × C
//!   names: at 16 candidates with the longest names about 1 MB more, too close to the limit, so
//!   such a list must be capped (say, the next few in line) when a LeaderLock has many locks;
//! * every candidate pod carries one role annotation per lock, plus a token per lock it holds:
//!   a pod holding all 256 carries about 20 KB, under a tenth of the 256 KiB Kubernetes allows
//!   for all of a pod's annotations, leaving the rest to the user (and the downward-API file
//!   the pod reads stays as small);
//! * etcd holds one key per lock and candidate, 4,096 at 256 × 16, and a joining or leaving pod
//!   costs one create or delete per lock: 256 single-key transactions.
//!
//! Beyond a few hundred, the per-pod annotation patch and the joins' etcd transactions grow
//! with no benefit a sharded program could use: 256 shards over 16 pods already gives each 16.

/// The most shards a LeaderLock may declare.
pub const MAX_SHARDS: u32 = 256;

/// A `shards` value outside 1..=[`MAX_SHARDS`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "shards: {0} is out of range: give 1 to {MAX_SHARDS} (every shard costs a status entry, an annotation on every pod and an etcd key per pod)"
)]
pub struct InvalidShards(pub u32);

/// The lock names `shard-0` … `shard-{n-1}`, in that order.
pub fn shard_names(n: u32) -> Result<Vec<String>, InvalidShards> {
    if !(1..=MAX_SHARDS).contains(&n) {
        return Err(InvalidShards(n));
    }
    Ok((0..n).map(|i| format!("shard-{i}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{is_lock_name, role_key, token_key};
    use crate::resource::{LeaderLockStatus, LockStatus};

    #[test]
    fn n_shards_are_named_shard_0_to_n_minus_1_and_are_valid_lock_names() {
        assert_eq!(shard_names(3), Ok(vec!["shard-0".to_string(), "shard-1".into(), "shard-2".into()]));
        let all = shard_names(MAX_SHARDS).unwrap();
        assert_eq!(all.len(), 256);
        assert_eq!(all.last().map(String::as_str), Some("shard-255"));
        assert!(all.iter().all(|name| is_lock_name(name)));
    }

    #[test]
    fn zero_and_more_than_the_bound_are_refused_with_the_range() {
        assert_eq!(shard_names(0), Err(InvalidShards(0)));
        assert_eq!(shard_names(MAX_SHARDS + 1), Err(InvalidShards(257)));
        assert!(InvalidShards(1000).to_string().contains("give 1 to 256"));
    }

    /// The worst case the bound was chosen for: 256 entries, the longest pod names.
    #[allow(clippy::needless_update)]
    #[test]
    fn the_status_of_max_shards_stays_under_a_tenth_of_an_etcd_request() {
        let pod = "p".repeat(253);
        let locks = shard_names(MAX_SHARDS)
            .unwrap()
            .into_iter()
            .map(|name| LockStatus {
                name,
                holder: Some(pod.clone()),
                fencing_token: Some(i64::MAX.to_string()),
                since: Some("2026-12-01T17:00:00Z".into()),
                candidates: 16,
                transitions: i64::from(i32::MAX),
                // Fields added later (a per-lock queue) are left out here: see the module doc.
                ..Default::default()
            })
            .collect();
        let status = LeaderLockStatus { lock_count: 256, locks, ..Default::default() };
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 1_572_864 / 10, "status of {MAX_SHARDS} shards: {bytes} bytes");
        assert!(bytes > 90_000, "the doc comment's figure is about 101 KB, got {bytes}");
    }

    #[test]
    fn the_annotations_of_max_shards_stay_under_a_tenth_of_a_pods_limit() {
        // The worst case: one pod holds every shard (it is the only candidate), the longest tokens.
        let annotations: usize = shard_names(MAX_SHARDS)
            .unwrap()
            .iter()
            .map(|lock| role_key(lock).len() + "standby".len() + token_key(lock).len() + i64::MAX.to_string().len())
            .sum();
        assert!(annotations < 256 * 1024 / 10, "annotations of {MAX_SHARDS} shards: {annotations} bytes");
    }
}
