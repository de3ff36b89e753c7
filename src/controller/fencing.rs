//! Demote-before-expiry (docs/contract.md §4.7): when a lock lease of ours goes unrenewed for
//! half its TTL (etcd unreachable), or this replica steps down, its holders stop being leaders
//! at once — through the apiserver, before etcd could expire the lease and another cluster (or
//! a standby replica) promote the next candidate. When renewals resume, every LeaderLock is
//! reconciled again and the same holders are promoted with the same tokens: etcd saw no change.
//!
//! Woken by the lease pool's risk signal (a deadline derived from each lease), never a timer.

use std::sync::Arc;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;

use super::reconcile::{execute, observe};
use super::{Context, plan};
use crate::resource::LeaderLock;

/// Demotes on every risk change until the engine is dropped, then asks for a reconcile of every
/// LeaderLock (the status, and promotions once a lease is safe again).
pub async fn run(ctx: Arc<Context>, lls: Store<LeaderLock>, reconcile: UnboundedSender<ObjectRef<LeaderLock>>, concurrency: usize) {
    let mut changes = ctx.engine.fence_changes();
    while changes.changed().await.is_ok() {
        let generation = *changes.borrow_and_update();
        demote_fenced(&ctx, &lls, concurrency).await;
        ctx.engine.mark_demoted(generation);
        for r in ctx.index.all_leaderlocks() {
            let _ = reconcile.send(r);
        }
    }
}

/// Writes the demotions every LeaderLock calls for now that fenced holders count as none; a
/// failed write is logged (the reconcile that follows retries it).
async fn demote_fenced(ctx: &Context, lls: &Store<LeaderLock>, concurrency: usize) {
    futures::stream::iter(lls.state())
        .for_each_concurrent(concurrency, |ll| async move {
            let view = ctx.index.view(&ll);
            let steps = plan::demotions(&observe(ctx, &ll, &view));
            if steps.is_empty() {
                return;
            }
            match execute(ctx, &ll, &steps).await {
                Ok(_) => tracing::warn!(leaderlock = %ll.name_any(), namespace = ll.namespace().unwrap_or_default(), pods = steps.len(), "demoted holders whose lock lease is at risk"),
                Err(e) => tracing::error!(leaderlock = %ll.name_any(), error = %e, "cannot demote holders whose lock lease is at risk"),
            }
        })
        .await;
}
