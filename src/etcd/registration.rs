//! Roots are per cluster (docs/contract.md §4): the first controller to use a root registers it to
//! its cluster with one guarded create of `<root>cluster`. A controller of another cluster that
//! finds the root registered serves nothing there and writes nothing — not even its replica
//! election key — so two clusters pointed at one root never fight over its keys.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::ownership::ClusterId;
use super::{Result, call, retry};
use crate::keyspace::Keyspace;

/// Whose root it is, as the registration says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The root was registered to us by this call (a new root, or one from before registration).
    Registered,
    /// The root was already registered to us.
    Ours,
    /// The root belongs to another cluster; this controller must not serve it.
    Other(RootOwnedByOtherCluster),
}

/// The root is registered to another cluster. The message names both and the flags to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "etcd prefix {root} is registered to cluster {owner}, and this controller is cluster {me}: it serves nothing under it and writes nothing to etcd. Give this cluster its own root with --etcd-prefix (e.g. {sibling}), or, if this really is cluster {owner}, set --cluster-id {owner}"
)]
pub struct RootOwnedByOtherCluster {
    pub root: String,
    pub owner: String,
    pub me: String,
    /// A root for this cluster beside the taken one, not inside it: the owner's controller
    /// watches its whole root and would mirror every key of a root nested in it.
    pub sibling: String,
}

/// Registers the root to `me` unless it is registered already (one guarded create; no write when
/// it is), and says whose it is.
pub async fn register(client: &Client, keyspace: &Keyspace, me: &ClusterId, timeout: Duration) -> Result<Registration> {
    let key = keyspace.registration();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), me.as_str(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = retry(5, || {
        let (mut c, txn) = (client.clone(), txn.clone());
        async move { call("register the root", timeout, c.txn(txn)).await }
    })
    .await?;
    if resp.succeeded() {
        tracing::info!(root = keyspace.root(), cluster = %me, "registered the etcd prefix to this cluster");
        return Ok(Registration::Registered);
    }
    let owner = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    Ok(judge(keyspace.root(), &owner, me))
}

/// Whose the root is, given the cluster it is registered to.
fn judge(root: &str, owner: &str, me: &ClusterId) -> Registration {
    if owner == me.as_str() {
        Registration::Ours
    } else {
        let sibling = format!("{}-{me}/", root.trim_end_matches('/'));
        Registration::Other(RootOwnedByOtherCluster { root: root.into(), owner: owner.into(), me: me.to_string(), sibling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_registered_to_another_cluster_names_both_and_the_flags_to_change() {
        let me = ClusterId::new("west").unwrap();
        assert_eq!(judge("/ll/", "west", &me), Registration::Ours);
        let Registration::Other(refusal) = judge("/ll/", "east", &me) else { panic!("served another cluster's root") };
        let message = refusal.to_string();
        for part in ["/ll/", "cluster east", "cluster west", "--etcd-prefix", "/ll-west/", "--cluster-id east"] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }
}
