//! Prometheus metrics (docs/contract.md §5), in the text exposition format at `/metrics`.
//!
//! Counters are incremented where things happen (reconciler, engine calls). Values another
//! component already keeps — the etcd watch's restart count, the sizes of its maps — are read
//! at scrape time through registered samplers, so `/metrics` is current even when nothing
//! reconciles, and no component pushes numbers it already holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    pub namespace: String,
    pub leaderlock: String,
    pub lock: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

/// Reads a number another component holds; called on every scrape, so it must be cheap (a
/// `len()` or an atomic load) and must not block.
pub type Sampler = Box<dyn Fn() -> u64 + Send + Sync>;

/// Every metric the controller exports.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub holder_changes: Family<LockLabels, Counter>,
    /// Holder key deleted in etcd → new holder annotated on its pod.
    pub failover_latency: Histogram,
    pub etcd_operations: Family<KindLabels, Counter>,
    /// Resync writes sent: the second pod update after a leadership change (contract §3.1).
    pub role_resyncs: Counter,
    pub active: Gauge,
    is_active: AtomicBool,
    sampled: Arc<Sampled>,
    /// Why this controller serves nothing (e.g. its root belongs to another cluster): /readyz.
    not_ready: std::sync::Mutex<Option<String>>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            holder_changes: Family::default(),
            failover_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            etcd_operations: Family::default(),
            role_resyncs: Counter::default(),
            active: Gauge::default(),
            is_active: AtomicBool::new(false),
            sampled: Arc::default(),
            not_ready: std::sync::Mutex::default(),
            registry: Registry::with_prefix("leaderlock"),
        };
        m.register()
    }
}

impl Metrics {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register("reconciles", "Reconciles run", self.reconciles.clone());
        r.register("reconcile_failures", "Reconciles failed, by reason", self.failures.clone());
        r.register("reconcile_duration_seconds", "Duration of one reconcile", self.reconcile_duration.clone());
        r.register("holder_changes", "Holder changes, by lock", self.holder_changes.clone());
        r.register(
            "failover_latency_seconds",
            "Time from the holder's etcd key being deleted to the new holder being annotated",
            self.failover_latency.clone(),
        );
        r.register("etcd_operations", "etcd writes issued, by kind", self.etcd_operations.clone());
        r.register("role_resyncs", "Pod writes sent only to make the kubelet project a leadership change again", self.role_resyncs.clone());
        r.register("active", "1 if this replica is the active controller, 0 if standby", self.active.clone());
        r.register_collector(Box::new(self.sampled.clone()));
        self
    }

    /// Exports `leaderlock_watch_restarts` from `sampler`, read at every scrape (0 until set).
    /// Registering again replaces the previous sampler.
    pub fn sample_watch_restarts(&self, sampler: Sampler) {
        *lock(&self.sampled.watch_restarts) = Some(sampler);
    }

    /// Exports `leaderlock_map_entries{map="<map>"}` from `sampler`, read at every scrape: how
    /// many entries a component's long-lived map holds, so a map that only grows shows up on a
    /// dashboard. Registering the same name again replaces its sampler.
    pub fn sample_map(&self, map: &str, sampler: Box<dyn Fn() -> usize + Send + Sync>) {
        let as_u64: Sampler = Box::new(move || u64::try_from(sampler()).unwrap_or(u64::MAX));
        lock(&self.sampled.maps).insert(map.to_string(), as_u64);
    }

    pub fn set_active(&self, active: bool) {
        self.is_active.store(active, Ordering::Relaxed);
        self.active.set(i64::from(active));
    }

    pub fn is_active(&self) -> bool {
        self.is_active.load(Ordering::Relaxed)
    }

    /// Marks this controller not ready for good, with the reason /readyz shows.
    pub fn set_not_ready(&self, reason: String) {
        *self.not_ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }

    /// Why this controller is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn observe_reconcile(&self, took: Duration, failure: Option<&str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
        }
    }

    pub fn etcd_op(&self, kind: &str) {
        self.etcd_operations.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

/// The samplers, encoded by the registry on every scrape.
#[derive(Default)]
struct Sampled {
    watch_restarts: Mutex<Option<Sampler>>,
    /// By map name: the exposition lists them in a stable order.
    maps: Mutex<BTreeMap<String, Sampler>>,
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled").field("maps", &lock(&self.maps).keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let restarts = lock(&self.watch_restarts).as_ref().map_or(0, |sample| sample());
        let metric = encoder.encode_descriptor("watch_restarts", "Times the etcd watch was re-established", None, MetricType::Gauge)?;
        gauge(restarts).encode(metric)?;

        let maps = lock(&self.maps);
        let mut family = encoder.encode_descriptor(
            "map_entries",
            "Entries in a long-lived in-memory map, by map; flat under steady churn",
            None,
            MetricType::Gauge,
        )?;
        for (map, sample) in maps.iter() {
            let labels = MapLabels { map: map.clone() };
            gauge(sample()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A sampler that panicked poisoned nothing we rely on: the guarded data is only replaced whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_the_leaderlock_prefix() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3), Some("etcd"));
        m.etcd_op("create");
        m.set_active(true);
        let text = m.render();
        for name in [
            "leaderlock_reconciles_total 1",
            "leaderlock_reconcile_failures_total{reason=\"etcd\"} 1",
            "leaderlock_etcd_operations_total{kind=\"create\"} 1",
            "leaderlock_active 1",
            "leaderlock_reconcile_duration_seconds_count 1",
            "leaderlock_failover_latency_seconds_count 0",
            "leaderlock_watch_restarts 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn watch_restarts_is_read_at_scrape_time() {
        let m = Metrics::default();
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source = restarts.clone();
        m.sample_watch_restarts(Box::new(move || source.load(Ordering::Relaxed)));
        assert!(m.render().contains("leaderlock_watch_restarts 0\n"));
        // The watch restarts twice while nothing reconciles: the next scrape shows it.
        restarts.store(2, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE leaderlock_watch_restarts gauge\nleaderlock_watch_restarts 2\n"), "{text}");
    }

    #[test]
    fn map_sizes_are_exported_per_map_and_read_at_scrape_time() {
        let m = Metrics::default();
        let written = Arc::new(Mutex::new(vec![1, 2, 3]));
        let source = written.clone();
        m.sample_map("expected_pods", Box::new(move || lock(&source).len()));
        m.sample_map("last_holder", Box::new(|| 0));
        let text = m.render();
        assert!(text.contains("# TYPE leaderlock_map_entries gauge\n"), "{text}");
        assert!(text.contains("leaderlock_map_entries{map=\"last_holder\"} 0\n"), "{text}");
        assert!(text.contains("leaderlock_map_entries{map=\"expected_pods\"} 3\n"), "{text}");
        lock(&written).clear();
        assert!(m.render().contains("leaderlock_map_entries{map=\"expected_pods\"} 0\n"));
        // A second sampler under the same name replaces the first rather than adding a series.
        m.sample_map("expected_pods", Box::new(|| 7));
        let text = m.render();
        assert_eq!(text.matches("map=\"expected_pods\"").count(), 1, "{text}");
        assert!(text.contains("leaderlock_map_entries{map=\"expected_pods\"} 7\n"), "{text}");
    }
}
