//! The reconciler (docs/contract.md §2–§4): for each LeaderLock, make etcd hold one key per
//! candidate pod and lock, then make the pods' `leaderlock.dev/*` keys and the status say who
//! holds.
//!
//! ```text
//!  LeaderLock ─┐                        ┌─▶ pods pass (demotions first)   ─▶ apiserver (SSA)
//!  Pod ────────┼─▶ reconcile(LeaderLock)┼─▶ etcd ops (create / delete)    ─▶ etcd
//!  etcd mirror ┘     (idempotent)       ├─▶ pods pass (promotions)        ─▶ apiserver (SSA)
//!                                       └─▶ status + Event on holder change
//! ```
//!
//! Nothing here polls: every reconcile is triggered by a LeaderLock, a pod or an etcd change.
//! One concern per module: [`plan`] decides (pure), [`reconcile`] applies, [`status`] builds the
//! status (pure), [`expectations`] remembers our writes until the watch shows them, [`wiring`] feeds the streams, [`lease_risk`]
//! demotes the holders of a lease at risk.

mod cleanup;
mod error;
mod events;
pub mod expectations;
pub mod handover;
mod lease_risk;
pub mod node_leases;
pub mod placement;
pub mod plan;
mod pod_writes;
mod reconcile;
mod requests;
pub mod resyncs;
pub mod snapshot;
pub mod status;
mod wiring;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

pub use error::{Error, Result};
pub use expectations::Expectations;
pub use lease_risk::demote_before_exit;
pub use wiring::{Settings, run};

use crate::etcd::engine::Engine;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::pods::PodKeys;
use crate::resource::handover::{Handover, HandoverStatus};
use crate::resource::{LeaderLock, LeaderLockStatus};

/// The one field manager for every status and pod write.
pub const FIELD_MANAGER: &str = "leaderlock";
/// Holds a LeaderLock until its etcd keys and pod keys are gone.
pub const FINALIZER: &str = "leaderlock.dev/cleanup";

/// Shared state of all reconciles.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client for pods, status and events.
    pub client: kube::Client,
    /// The lock engine: etcd writes and the mirror holders are read from.
    pub engine: Arc<Engine>,
    /// Every LeaderLock and pod, indexed: candidacy, lock-name conflicts and a pod's keys are
    /// decided without API reads, touching only the objects concerned.
    pub index: Arc<Index>,
    /// This replica's name, the `reportingInstance` of its Events.
    pub instance: String,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Our status writes the watch has not delivered yet: a reconcile reading an older copy
    /// would announce a holder change twice.
    pub expected_status: Arc<Expectations<LeaderLockStatus>>,
    /// Our pod key writes the watch has not delivered yet: a reconcile reading an older copy
    /// could skip the demotion of a pod it just promoted.
    pub expected_pods: Arc<Expectations<PodKeys>>,
    /// Every Handover request, as the watch delivered them.
    pub requests: kube::runtime::reflector::Store<Handover>,
    /// Our Handover status writes the watch has not delivered yet: a reconcile reading an older
    /// copy could carry out a request twice.
    pub expected_requests: Arc<Expectations<HandoverStatus>>,
    /// How long after a pod's leadership changes its resync is written (None: never), and when
    /// each pending one is due (docs/contract.md §3.1).
    pub resync_after: Option<Duration>,
    pub resyncs: Arc<resyncs::Resyncs>,
    /// The node Leases' renewals: pods on a lost node are not candidates (docs/contract.md §3.2).
    pub node_loss: Arc<node_leases::NodeLoss>,
}

impl Context {
    /// The index's view of `ll`, with each node's silence now.
    pub fn view(&self, ll: &Arc<LeaderLock>) -> crate::index::View {
        let mut view = self.index.view(ll);
        view.nodes = self.node_loss.silence();
        view
    }
}

/// The controller's maps that live as long as the objects they track, so that their sizes can
/// be exported (`leaderlock_map_entries{map=...}`) and watched under churn.
#[derive(Clone, Default)]
pub struct Maps {
    /// See [`Context::expected_status`].
    pub expected_status: Arc<Expectations<LeaderLockStatus>>,
    /// See [`Context::expected_pods`].
    pub expected_pods: Arc<Expectations<PodKeys>>,
    /// See [`Context::expected_requests`].
    pub expected_requests: Arc<Expectations<HandoverStatus>>,
    /// See [`Context::resyncs`].
    pub resyncs: Arc<resyncs::Resyncs>,
    /// Set once the controller runs: its index holds the lock claims.
    pub index: Arc<OnceLock<Arc<Index>>>,
}

impl Maps {
    /// `(map name, entries)` of each map, cheap enough to sample at every scrape.
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        let claims = self.index.get().map_or(0, |i| i.claims_len());
        [
            ("expected_status", self.expected_status.len()),
            ("expected_pods", self.expected_pods.len()),
            ("expected_requests", self.expected_requests.len()),
            ("pending_resyncs", self.resyncs.len()),
            ("lock_claims", claims),
        ]
    }
}

/// Entry point of every reconcile: finalizer handling, then [`reconcile::apply`] or
/// [`cleanup::cleanup`].
pub async fn reconcile(ll: Arc<LeaderLock>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ll.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LeaderLock> = Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{ns}/{}", ll.name_any());
    tracing::debug!(leaderlock = %name, "reconcile: start");
    finalizer(&api, FINALIZER, ll, |event| async {
        match event {
            Finalizer::Apply(ll) => reconcile::apply(ll, &ctx).await,
            Finalizer::Cleanup(ll) => cleanup::cleanup(ll, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer { name: name.clone(), source: Box::new(other) },
    })
}

/// Logs the failure and retries with backoff; etcd outages are also visible in the status.
pub fn error_policy(ll: Arc<LeaderLock>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(leaderlock = %ll.name_any(), namespace = ll.namespace().unwrap_or_default(), error = %err, kind = err.label(), "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}
