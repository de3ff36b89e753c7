//! Deleting a LeaderLock: demote and unlabel its pods, then delete its candidate keys in etcd,
//! before the finalizer lets it go.

use std::sync::Arc;

use kube::runtime::controller::Action;

use super::error::{Error, Result};
use super::reconcile::{execute, report_failure, snapshot};
use super::{Context, plan};
use crate::resource::{LeaderLock, reasons};

/// Runs [`plan::cleanup`]; an etcd failure is reported in the status and retried.
pub async fn cleanup(ll: Arc<LeaderLock>, ctx: &Context) -> Result<Action> {
    let view = ctx.view(&ll); // this LeaderLock, being deleted, assigns no roles
    let snapshot = snapshot(ctx, &ll, &view);
    if let Err(e) = execute(ctx, &ll, &plan::cleanup(&snapshot)).await {
        if let Error::Etcd(etcd) = &e {
            let message = format!("cannot delete the etcd keys of this LeaderLock: {etcd}; retrying");
            report_failure(ctx, &ll, reasons::ETCD_UNAVAILABLE, &message).await;
        }
        return Err(e);
    }
    // Lock names it held go to a newer neighbour once it is gone: its Delete event reconciles
    // them (the index resolves against it until then).
    Ok(Action::await_change())
}
