//! Demote-before-expiry (docs/contract.md §4.5, §4.7): when a lock lease of ours goes unrenewed
//! for half its TTL (etcd unreachable), its holders stop being leaders at once — through the
//! apiserver, before etcd could expire the lease and another cluster promote the next
//! candidate. When renewals resume, every LeaderLock is reconciled again and the same holders
//! are promoted with the same tokens: etcd saw no change. A replica that lost its election
//! waits for these demotions before it exits ([`demote_before_exit`]).
//!
//! Woken by the lease pool's risk signal (a deadline derived from each lease), never a timer.
//!
//! Why a task beside the reconciles rather than a step of their plans: it must write while
//! reconciles cannot make progress (etcd unreachable makes their syncs fail and back off), and
//! within half a lease TTL, whatever the reconcile queue holds. It writes only what
//! [`plan::demotions`] plans from a fresh snapshot, never a promotion. A reconcile that read its
//! holders before the risk began may still promote one after this task demoted it; that is why
//! the task then asks for a reconcile of every LeaderLock: the engine reports no holder on a
//! lease at risk, so those reconciles demote again, and the window is one reconcile long.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;

use super::reconcile::{execute, snapshot};
use super::{Context, plan};
use crate::etcd::engine::Engine;
use crate::resource::LeaderLock;

/// How long a replica that lost its election waits for its last demotions to be written.
const DEMOTION_BOUND: Duration = Duration::from_secs(5);

/// Demotes on every risk change until the engine is dropped, then asks for a reconcile of every
/// LeaderLock (the status, and promotions once a lease is safe again).
pub async fn run(ctx: Arc<Context>, lls: Store<LeaderLock>, reconcile: UnboundedSender<ObjectRef<LeaderLock>>, concurrency: usize) {
    let mut changes = ctx.engine.risk_changes();
    while changes.changed().await.is_ok() {
        let generation = *changes.borrow_and_update();
        demote_at_risk(&ctx, &lls, concurrency).await;
        ctx.engine.mark_demoted(generation);
        for r in ctx.index.all_leaderlocks() {
            let _ = reconcile.send(r);
        }
    }
}

/// Writes the demotions every LeaderLock calls for now that holders on a lease at risk count as none; a
/// failed write is logged (the reconcile that follows retries it).
async fn demote_at_risk(ctx: &Context, lls: &Store<LeaderLock>, concurrency: usize) {
    futures::stream::iter(lls.state())
        .for_each_concurrent(concurrency, |ll| async move {
            let view = ctx.view(&ll);
            let steps = plan::demotions(&snapshot(ctx, &ll, &view));
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

/// For a replica that lost its election, before it exits. Once it exits nobody renews its lock
/// leases until a standby adopts them, which one cut off from etcd too never does: its holders
/// must not stay `leader` past the leases' expiry. So it lingers, reconciling nothing, until
/// its lock leases are either renewed past their risk window (etcd answers: a successor can
/// adopt them, nothing to demote) or all at risk, and their demotions are written (at most
/// [`DEMOTION_BOUND`]).
pub async fn demote_before_exit(engine: &Engine) {
    let leases = engine.leases();
    // Past this, a lease not at risk was renewed after the election was lost (with a margin
    // against a tie with the risk deadline itself).
    let renewed_through = tokio::time::Instant::now() + leases.longest_risk_window() + Duration::from_millis(500);
    let mut changes = engine.risk_changes();
    let all_at_risk = loop {
        if leases.all_at_risk() {
            break true;
        }
        tokio::select! {
            () = tokio::time::sleep_until(renewed_through) => break false,
            changed = changes.changed() => if changed.is_err() { break leases.all_at_risk() },
        }
    };
    let written = tokio::time::timeout(DEMOTION_BOUND, engine.demoted(engine.risk_generation())).await.is_ok();
    match (all_at_risk, written) {
        (true, true) => tracing::warn!("election lost: demoted this cluster's holders before exiting"),
        (false, true) => tracing::info!("election lost, lock leases still renewed: exiting without demotions, a successor adopts them"),
        (_, false) => {
            tracing::error!(bound = ?DEMOTION_BOUND, "election lost: could not demote this cluster's holders in time; exiting anyway")
        }
    }
}
