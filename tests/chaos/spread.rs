//! Chaos under placement Spread (docs/contract.md §8): pods join, leave and flap readiness while
//! placement keeps moving shards. The checker holds the usual promises (at most one leader per
//! lock, tokens increase); once settled, no candidate leads more than ⌈L/C⌉ locks, counted from
//! the pods' own annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;

use super::*;
use crate::common::k8s::{try_delete_pod, try_set_ready};

const GROUP: &str = "spread";

/// The pods of the scenario: name → Ready.
struct Pods {
    ns: String,
    live: BTreeMap<String, bool>,
    born: u64,
    actions: BTreeMap<&'static str, u64>,
}

impl Pods {
    async fn add(&mut self, c: &kube::Client) {
        self.born += 1;
        let name = format!("{GROUP}-{}", self.born);
        create_pod(c, &self.ns, &name, &[("app", GROUP)]).await;
        let _ = try_set_ready(c, &self.ns, &name, true).await;
        self.live.insert(name, true);
    }

    /// One random step, keeping between 2 and `max` pods.
    async fn step(&mut self, c: &kube::Client, rng: &mut Rng, max: usize) {
        let names: Vec<String> = self.live.keys().cloned().collect();
        let pick = names[rng.below(names.len())].clone();
        match rng.below(3) {
            0 if self.live.len() < max => {
                self.add(c).await;
                *self.actions.entry("joins").or_default() += 1;
            }
            1 if self.live.len() > 2 => {
                let _ = try_delete_pod(c, &self.ns, &pick).await;
                self.live.remove(&pick);
                *self.actions.entry("leaves").or_default() += 1;
            }
            _ => {
                let ready = !self.live[&pick];
                let _ = try_set_ready(c, &self.ns, &pick, ready).await;
                self.live.insert(pick, ready);
                *self.actions.entry("readiness flips").or_default() += 1;
            }
        }
    }

    async fn heal(&mut self, c: &kube::Client) {
        for (name, ready) in self.live.iter_mut().filter(|(_, r)| !**r) {
            let _ = try_set_ready(c, &self.ns, name, true).await;
            *ready = true;
        }
    }
}

/// Locks each pod leads, from the pods' annotations.
async fn led(c: &kube::Client, ns: &str) -> BTreeMap<String, usize> {
    let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&Default::default()).await.unwrap();
    pods.items
        .iter()
        .map(|p| (p.name_any(), p.annotations().iter().filter(|(k, v)| !k.ends_with(".token") && *v == "leader").count()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_under_spread_keeps_one_leader_per_lock_and_settles_balanced() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Stage { c, ns } = stage("spread").await;
    let etcd = EtcdServer::start();
    let ctl = controller(&etcd.endpoint(), &ns, &[]);
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let (shards, max_pods, secs) = (pick(16, 64), pick(5, 8), pick(15, 120));
    let mut pods = Pods { ns: ns.clone(), live: BTreeMap::new(), born: 0, actions: BTreeMap::new() };
    for _ in 0..3 {
        pods.add(&c).await;
    }
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {GROUP}}}\nspec:\n  selector: {{matchLabels: {{app: {GROUP}}}}}\n  shards: {shards}\n  placement: {{policy: Spread, stabilizationSeconds: 0}}\n"
    );
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&yaml));
    wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, Duration::from_secs(60)).await.unwrap();

    let mut rng = Rng::new(Rng::seed());
    let start = Instant::now();
    let mut steps = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        pods.step(&c, &mut rng, max_pods).await;
        steps += 1;
        tokio::time::sleep(Duration::from_millis(pick(300, 200)).saturating_sub(t.elapsed())).await;
    }
    pods.heal(&c).await;
    let bound = Duration::from_secs(pick(60, 120));
    let conv = wait_converged(&c, &ns, &etcd.endpoint(), ROOT, None, bound).await.unwrap_or_else(|e| panic!("no convergence: {e}"));
    let api: Api<LeaderLock> = Api::namespaced(c.clone(), &ns);
    let candidates = pods.live.len();
    let ceiling = (shards as usize).div_ceil(candidates);
    wait_until_async("a settled, balanced placement", bound, || async {
        let p = api.get(GROUP).await.ok()?.status?.placement?;
        let led = led(&c, &ns).await;
        (p.settled && led.values().sum::<usize>() == shards as usize && led.values().all(|n| *n <= ceiling)).then_some(())
    })
    .await;
    let counts = led(&c, &ns).await;
    checker.settle().await;
    let s = checker.summary();
    Report {
        name: "10. Churn under placement Spread".into(),
        setup: format!(
            "1 LeaderLock with {shards} shards, policy Spread, 3 to {max_pods} pods, {secs} s of churn ({steps} steps: {}), seed {}.",
            pods.actions.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
            Rng::seed()
        ),
        summary: s.clone(),
        convergence: conv,
        convergence_bound: bound,
        fault_holder_changes_target: None,
        notes: vec![format!(
            "Settled: {candidates} candidates lead {:?} locks (⌈L/C⌉ = {ceiling}); placement moves hold the lock without its pod leaving, so they count as holder changes without a fault.",
            counts.values().collect::<Vec<_>>()
        )],
    }
    .emit();
    assert_safe(&s, Some(Duration::from_secs(2)), None);
    assert_no_panic(&[&ctl]);
}

/// Polls an async `check` every 100 ms until it returns Some, or fails after `timeout`.
async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + timeout;
    while check().await.is_none() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
