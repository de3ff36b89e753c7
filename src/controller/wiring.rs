//! Stream wiring: the LeaderLock and pod watches feeding the index, etcd mirror changes and
//! index triggers mapped to reconciles, the watches' backoff, and the controller's run loop.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Context, Error, Maps, error_policy, reconcile};
use crate::etcd::engine::Engine;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::resource::LeaderLock;
use crate::resource::handover::Handover;

/// Everything the controller needs from the command line.
pub struct Settings {
    /// Identifies this replica in Events.
    pub instance: String,
    pub metrics: Arc<Metrics>,
    /// Watch only this namespace (None: every namespace).
    pub namespace: Option<String>,
    /// How many reconciles may run at once.
    pub concurrency: u16,
    /// The controller's maps, shared with whoever reports their sizes.
    pub maps: Maps,
    /// How long after a pod's leadership changes its resync is written (None: never).
    pub resync_after: Option<Duration>,
    /// How long a node's Lease may go unrenewed before its pods stop being candidates (None: off
    /// unless a LeaderLock sets its own).
    pub node_lost_after: Option<Duration>,
}

/// Runs the controller until `shutdown` is cancelled, then lets running reconciles finish.
pub async fn run(client: kube::Client, engine: Arc<Engine>, settings: Settings, shutdown: CancellationToken) {
    let (lls, pods_api): (Api<LeaderLock>, Api<Pod>) = match &settings.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let prefix_engine = engine.clone();
    let (reader, writer) = reflector::store();
    let prefix_of = move |ns: &str, lock: &crate::resource::LockSpec| {
        prefix_engine.lock_prefix(ns, &lock.name, lock.etcd_key.as_deref()).map_err(|e| e.to_string())
    };
    let index = Arc::new(Index::new(prefix_of, reader.clone()));
    let maps = settings.maps;
    maps.index.get_or_init(|| index.clone());

    // Reconciles wait for the first complete list of both kinds: an empty pod index would look
    // like every candidate left, and change every holder. (Not `Store::wait_until_ready`: it
    // wakes only the last of several concurrent waiters, which left LeaderLocks unreconciled
    // forever after a takeover; a watch channel wakes them all.)
    let (pods_synced_tx, pods_synced) = tokio::sync::watch::channel(false);
    // Reconciles the index asks for beyond an object's own event (relists, deletions).
    let (trigger, triggers) = mpsc::unbounded_channel();
    let risk_trigger = trigger.clone();
    let node_trigger = trigger.clone();
    let (lls_synced_tx, lls_synced) = tokio::sync::watch::channel(false);
    // The pod watch only feeds the index, which names the LeaderLocks each event concerns.
    let (pod_index, expected_pods, resyncs) = (index.clone(), maps.expected_pods.clone(), maps.resyncs.clone());
    let mut pod_indexing = indexing(
        move |ev| {
            expected_pods.forget_gone(ev);
            resyncs.forget_gone(ev);
            pod_index.on_pod_event(ev)
        },
        pods_synced_tx,
    );
    let pod_triggers = watcher(pods_api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .flat_map(move |ev| futures::stream::iter(pod_indexing(&ev)));

    // Paginated lists (not `any_semantic`, which returns every LeaderLock in one response).
    // Only Apply events trigger their object directly: a relist's objects are indexed when it
    // completes, and the index then names what changed (a reconcile run on a relisted object
    // before that would read the previous table).
    let (ll_index, written) = (index.clone(), maps.expected_status.clone());
    let mut ll_indexing = indexing(
        move |ev| {
            written.forget_gone(ev);
            ll_index.on_leaderlock_event(ev)
        },
        lls_synced_tx,
    );
    let ll_events = watcher(lls, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|ll: &mut LeaderLock| ll.managed_fields_mut().clear()) // never read
        .reflect(writer)
        .inspect(move |ev| ll_indexing(ev).into_iter().for_each(|r| drop(trigger.send(r))))
        .filter_map(|ev| {
            futures::future::ready(match ev {
                Ok(watcher::Event::Apply(ll)) => Some(Ok(ll)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        });
    let (requests, requests_synced, request_triggers) =
        watch_requests(client.clone(), settings.namespace.as_deref(), reader.clone(), lls_synced.clone(), &maps);
    let controller = Controller::for_stream(ll_events, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency));
    let ctx = Arc::new(Context {
        client: client.clone(),
        engine: engine.clone(),
        index: index.clone(),
        instance: settings.instance,
        metrics: settings.metrics.clone(),
        expected_status: maps.expected_status.clone(),
        expected_pods: maps.expected_pods.clone(),
        requests,
        expected_requests: maps.expected_requests.clone(),
        resync_after: settings.resync_after,
        resyncs: maps.resyncs.clone(),
        node_loss: Arc::new(super::node_leases::NodeLoss::new(settings.node_lost_after)),
    });

    // Detached: when the election is lost this future is dropped, and the demotions must
    // still be written before the process exits (the caller waits on `Engine::demoted`).
    tokio::spawn(super::lease_risk::run(ctx.clone(), reader.clone(), risk_trigger, settings.concurrency.into()));
    // Dropped with the controller: it only triggers reconciles.
    let node_watch = super::node_leases::run(client.clone(), ctx.node_loss.clone(), index.clone(), node_trigger);
    let etcd_changes = etcd_triggers(engine.clone(), index);
    let extra = tokio_stream::wrappers::UnboundedReceiverStream::new(triggers);

    let controller = controller
        .reconcile_on(pod_triggers)
        .reconcile_on(request_triggers)
        .reconcile_on(futures::stream::select(etcd_changes, extra))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            move |ll, ctx| {
                let (mut pods_synced, mut lls_synced, mut requests_synced) =
                    (pods_synced.clone(), lls_synced.clone(), requests_synced.clone());
                async move {
                    let _ = pods_synced.wait_for(|synced| *synced).await;
                    let _ = lls_synced.wait_for(|synced| *synced).await;
                    let _ = requests_synced.wait_for(|synced| *synced).await;
                    ctx.node_loss.wait_listed().await;
                    let start = std::time::Instant::now();
                    let result = reconcile(ll, ctx.clone()).await;
                    ctx.metrics.observe_reconcile(start.elapsed(), result.as_ref().err().map(Error::label));
                    result
                }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile result");
            }
        });
    tokio::select! {
        () = controller => {}
        () = node_watch => {}
    }
}

/// The Handover watch: a store of every request, and a reconcile of its LeaderLock for each
/// open one. A request naming no LeaderLock is refused here (no reconcile would judge it).
fn watch_requests(
    client: kube::Client,
    namespace: Option<&str>,
    lls: reflector::Store<LeaderLock>,
    lls_synced: tokio::sync::watch::Receiver<bool>,
    maps: &Maps,
) -> (reflector::Store<Handover>, tokio::sync::watch::Receiver<bool>, impl futures::Stream<Item = ObjectRef<LeaderLock>> + Send + 'static) {
    let api: Api<Handover> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let written = maps.expected_requests.clone();
    // Reconciles wait for the first complete list: a request half carried out before a restart
    // must be found, or its demoted holder would be promoted back for a moment.
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let triggers = watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|r: &mut Handover| r.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |ev| match ev {
            Ok(ev) => {
                written.forget_gone(ev);
                if matches!(ev, watcher::Event::InitDone) {
                    let _ = synced_tx.send(true);
                }
            }
            Err(e) => {
                // Without the Handover CRD or the right to read it, elections still run.
                tracing::warn!(error = %e, "Handover watch failed (is the Handover CRD installed and readable?); retrying within 5 s");
                let _ = synced_tx.send(true);
            }
        })
        .filter_map(move |ev| {
            let (lls, client, mut lls_synced) = (lls.clone(), client.clone(), lls_synced.clone());
            async move {
                let Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) = ev else { return None };
                if super::handover::is_final(&r) {
                    return None;
                }
                let ns = r.namespace()?;
                let ll = ObjectRef::<LeaderLock>::new(&r.spec.leader_lock).within(&ns);
                // Judged against the complete list of LeaderLocks, not a partial one.
                let _ = lls_synced.wait_for(|synced| *synced).await;
                if lls.get(&ll).is_none() {
                    super::requests::refuse_orphan(&client, &r).await;
                    return None;
                }
                Some(ll)
            }
        });
    (reader, synced, triggers)
}

/// Retry delays of the watches: 200 ms doubling up to 5 s. kube's default grows to 30 s plus
/// jitter, and every decision waits for the watches: after a 30 s apiserver cut the pod watch
/// came back 84 s after the cut began, then replayed all that pod history at once.
pub(super) struct WatchBackoff(backon::ExponentialBackoff);

impl WatchBackoff {
    fn start() -> backon::ExponentialBackoff {
        let b = backon::ExponentialBuilder::new().with_min_delay(Duration::from_millis(200)).with_max_delay(Duration::from_secs(5));
        backon::BackoffBuilder::build(b.without_max_times())
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff(Self::start())
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = Self::start();
    }
}

/// Feeds each watch event to the index and returns the LeaderLocks it concerns; says when a
/// (re)list is complete.
fn indexing<K>(
    index: impl Fn(&watcher::Event<K>) -> Vec<ObjectRef<LeaderLock>>,
    synced: tokio::sync::watch::Sender<bool>,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) -> Vec<ObjectRef<LeaderLock>> {
    move |ev| match ev {
        Ok(ev) => {
            let concerned = index(ev);
            if matches!(ev, watcher::Event::InitDone) {
                let _ = synced.send(true);
            }
            concerned
        }
        Err(e) => {
            tracing::warn!(error = %e, "watch failed; retrying within 5 s");
            vec![]
        }
    }
}

/// Maps etcd mirror changes to the LeaderLocks owning the changed lock prefixes (ours or an
/// external client's keys). A lagging subscriber reconciles every LeaderLock rather than miss one.
fn etcd_triggers(engine: Arc<Engine>, index: Arc<Index>) -> impl futures::Stream<Item = ObjectRef<LeaderLock>> + Send + 'static {
    let rx = engine.mirror().subscribe();
    tokio_stream::wrappers::BroadcastStream::new(rx).flat_map(move |batch| {
        let refs: Vec<ObjectRef<LeaderLock>> = match batch {
            Ok(keys) => {
                let prefixes: BTreeSet<&str> = keys.iter().filter_map(|k| k.rfind('/').map(|i| &k[..i])).collect();
                prefixes.into_iter().flat_map(|p| index.leaderlocks_with_prefix(p)).collect()
            }
            Err(_) => index.all_leaderlocks(),
        };
        futures::stream::iter(refs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_retry_within_five_seconds_and_start_over_after_a_success() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(7).map(|d| (d.as_secs_f64() * 1000.0).round() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }
}
