//! Prometheus metrics (SPEC §5), in the text exposition format at `/metrics`.
//!
//! Counters are incremented where things happen (reconciler, engine calls); the watch-restart
//! count and active/standby state are sampled at scrape time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Every metric the controller exports.
pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub holder_changes: Family<LockLabels, Counter>,
    /// Holder key deleted in etcd → new holder annotated on its pod.
    pub failover_latency: Histogram,
    pub etcd_operations: Family<KindLabels, Counter>,
    pub watch_restarts: Gauge,
    pub active: Gauge,
    is_active: AtomicBool,
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
            watch_restarts: Gauge::default(),
            active: Gauge::default(),
            is_active: AtomicBool::new(false),
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
        r.register("watch_restarts", "Times the etcd watch was re-established", self.watch_restarts.clone());
        r.register("active", "1 if this replica is the active controller, 0 if standby", self.active.clone());
        self
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
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
