//! Fixtures of the chaos scenarios: a seeded RNG, a fleet of LeaderLocks × pods, the churn
//! driver (pod deletions with replacement, readiness flips, scale changes) and the report.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::Api;

use crate::common::checker::{Checker, Summary};
use crate::common::k8s::{create_pod, try_delete_pod, try_set_ready};

/// Full run (`LEADERLOCK_CHAOS=full`, hack/chaos.sh) or the fast subset of `make test`.
pub fn full() -> bool {
    std::env::var("LEADERLOCK_CHAOS").as_deref() == Ok("full")
}

/// xorshift64*: reproducible from the seed printed by each scenario.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn seed() -> u64 {
        std::env::var("LEADERLOCK_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1eade7)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

pub fn leaderlock_yaml(name: &str, locks: &[&str], ttl: u32) -> String {
    let locks = locks.iter().map(|l| format!("{{name: {l}}}")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  locks: [{locks}]\n  ttlSeconds: {ttl}\n"
    )
}

/// N LeaderLocks `ll-<i>` (one lock `lk-<i>` each), each selecting its own pods `ll-<i>-<gen>`
/// (label `app: ll-<i>`: the group). [`Fleet::replace_leaderlock`] swaps a group's LeaderLock
/// for a new one with a new name and lock.
pub struct Fleet {
    pub ns: String,
    /// The groups `ll-<i>`.
    pub lls: Vec<String>,
    /// group → (pod name, ready)
    pub pods: BTreeMap<String, Vec<(String, bool)>>,
    /// group → its current (LeaderLock, lock) names; absent while still `(ll-<i>, lk-<i>)`.
    renamed: BTreeMap<String, (String, String)>,
    /// Prepended to pod names: pods of fleets in different clusters never share a name.
    pod_prefix: String,
    ttl: u32,
    generation: u64,
    pub actions: BTreeMap<&'static str, u64>,
}

impl Fleet {
    pub async fn create(c: &kube::Client, ns: &str, n: usize, pods_each: usize, ttl: u32) -> Fleet {
        Fleet::create_in(c, ns, n, pods_each, ttl, None, "").await
    }

    /// A fleet whose lock `lk-<i>` is the etcdKey `<shared>lk-<i>` (`shared` ends with '/'):
    /// fleets of several clusters with the same `shared` share their locks. Pods are named
    /// `<pod_prefix>ll-<i>-<gen>`.
    pub async fn create_shared(c: &kube::Client, ns: &str, n: usize, pods_each: usize, ttl: u32, shared: &str, pod_prefix: &str) -> Fleet {
        Fleet::create_in(c, ns, n, pods_each, ttl, Some(shared), pod_prefix).await
    }

    async fn create_in(c: &kube::Client, ns: &str, n: usize, pods_each: usize, ttl: u32, shared: Option<&str>, pod_prefix: &str) -> Fleet {
        let mut f = Fleet {
            ns: ns.to_string(),
            lls: Vec::new(),
            pods: BTreeMap::new(),
            renamed: BTreeMap::new(),
            pod_prefix: pod_prefix.to_string(),
            ttl,
            generation: 0,
            actions: BTreeMap::new(),
        };
        let mut lls = Vec::new();
        for i in 0..n {
            let ll = format!("ll-{i}");
            let mut lock = serde_json::json!({"name": format!("lk-{i}")});
            if let Some(shared) = shared {
                lock["etcdKey"] = format!("{shared}lk-{i}").into();
            }
            let obj: leaderlock::resource::LeaderLock = serde_json::from_value(serde_json::json!({
                "apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock", "metadata": {"name": ll},
                "spec": {"selector": {"matchLabels": {"app": ll}}, "locks": [lock], "ttlSeconds": ttl},
            }))
            .expect("a valid LeaderLock");
            lls.push(obj);
            f.lls.push(ll.clone());
            f.pods.insert(ll.clone(), Vec::new());
            for _ in 0..pods_each {
                f.add_pod(c, &ll).await;
            }
        }
        // The first LeaderLock alone, until it has a status: its reconcile grants the lease for
        // this TTL. Concurrent first reconciles race to grant it (two leases granted and
        // recorded at once), which precedes the reconcile stall reported in CHAOS.md; the
        // scenarios study other faults, so they avoid that race.
        let api = Api::<leaderlock::resource::LeaderLock>::namespaced(c.clone(), ns);
        for (i, obj) in lls.iter().enumerate() {
            api.create(&Default::default(), obj).await.expect("the fleet's LeaderLock is created");
            let deadline = Instant::now() + Duration::from_secs(60);
            while i == 0 && api.get("ll-0").await.ok().and_then(|l| l.status).is_none() {
                assert!(Instant::now() < deadline, "ll-0 got no status");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        f
    }

    /// Whether `pod` is one of this fleet's.
    pub fn has_pod(&self, pod: &str) -> bool {
        self.pods.values().flatten().any(|(p, _)| p == pod)
    }

    async fn add_pod(&mut self, c: &kube::Client, ll: &str) {
        self.generation += 1;
        let name = format!("{}{ll}-{}", self.pod_prefix, self.generation);
        create_pod(c, &self.ns, &name, &[("app", ll)]).await;
        let _ = try_set_ready(c, &self.ns, &name, true).await;
        self.pods.get_mut(ll).unwrap().push((name, true));
    }

    /// One random disturbance: delete a pod and create its replacement, flip a pod's
    /// readiness, or scale a LeaderLock's pods to 3..=7.
    pub async fn step(&mut self, c: &kube::Client, rng: &mut Rng) {
        let ll = self.lls[rng.below(self.lls.len())].clone();
        let n = self.pods[&ll].len();
        match rng.below(10) {
            0..=3 if n > 0 => {
                let (name, _) = self.pods.get_mut(&ll).unwrap().remove(rng.below(n));
                let _ = try_delete_pod(c, &self.ns, &name).await;
                self.add_pod(c, &ll).await;
                *self.actions.entry("pod deleted and replaced").or_default() += 1;
            }
            4..=7 if n > 0 => {
                let i = rng.below(n);
                let (name, ready) = self.pods[&ll][i].clone();
                let _ = try_set_ready(c, &self.ns, &name, !ready).await;
                self.pods.get_mut(&ll).unwrap()[i].1 = !ready;
                *self.actions.entry("readiness flipped").or_default() += 1;
            }
            _ => {
                let want = 3 + rng.below(5);
                while self.pods[&ll].len() < want {
                    self.add_pod(c, &ll).await;
                }
                while self.pods[&ll].len() > want {
                    let (name, _) = self.pods.get_mut(&ll).unwrap().pop().unwrap();
                    let _ = try_delete_pod(c, &self.ns, &name).await;
                }
                *self.actions.entry("scaled").or_default() += 1;
            }
        }
    }

    /// The (LeaderLock, lock) names a group is elected under now.
    pub fn names(&self, group: &str) -> (String, String) {
        self.renamed.get(group).cloned().unwrap_or_else(|| (group.to_string(), format!("lk-{}", group.trim_start_matches("ll-"))))
    }

    /// Deletes a random group's LeaderLock and creates a new one over the same pods, with a new
    /// name and lock name: new etcd prefixes, new objects, the old ones retired (the checker is
    /// told first, so the removal of the old keys counts as caused).
    pub async fn replace_leaderlock(&mut self, c: &kube::Client, rng: &mut Rng, checker: &Checker) {
        let group = self.lls[rng.below(self.lls.len())].clone();
        let (old_ll, old_lock) = self.names(&group);
        self.generation += 1;
        let (ll, lock) =
            (format!("{group}-r{}", self.generation), format!("{}-r{}", old_lock.split("-r").next().unwrap_or(&old_lock), self.generation));
        checker.retire_lock(&old_lock);
        let api = Api::<leaderlock::resource::LeaderLock>::namespaced(c.clone(), &self.ns);
        let _ = api.delete(&old_ll, &Default::default()).await;
        let obj: leaderlock::resource::LeaderLock = serde_json::from_value(serde_json::json!({
            "apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock", "metadata": {"name": ll},
            "spec": {"selector": {"matchLabels": {"app": group}}, "locks": [{"name": lock}], "ttlSeconds": self.ttl},
        }))
        .expect("a valid LeaderLock");
        if api.create(&Default::default(), &obj).await.is_ok() {
            self.renamed.insert(group, (ll, lock));
            *self.actions.entry("LeaderLock replaced").or_default() += 1;
        }
    }

    /// Makes the pod the checker last saw leading a random group's lock leave: deleted and
    /// replaced, or not Ready. Falls back to [`Fleet::step`] when that lock has no leader now.
    pub async fn knock_out_holder(&mut self, c: &kube::Client, rng: &mut Rng, checker: &Checker) {
        let group = self.lls[rng.below(self.lls.len())].clone();
        let (_, lock) = self.names(&group);
        let Some(pod) = checker.leader_of(&lock) else { return self.step(c, rng).await };
        if !self.knock_out(c, rng, &group, &pod).await {
            self.step(c, rng).await;
        }
    }

    /// Makes `pod` of `group` leave: deleted and replaced, or not Ready. False (and nothing
    /// done) when it is not one of the group's Ready pods.
    pub async fn knock_out(&mut self, c: &kube::Client, rng: &mut Rng, group: &str, pod: &str) -> bool {
        let Some(i) = self.pods.get(group).and_then(|pods| pods.iter().position(|(n, ready)| n == pod && *ready)) else {
            return false;
        };
        let group = group.to_string();
        if rng.chance(60) {
            let (name, _) = self.pods.get_mut(&group).unwrap().remove(i);
            let _ = try_delete_pod(c, &self.ns, &name).await;
            self.add_pod(c, &group).await;
            *self.actions.entry("holder deleted and replaced").or_default() += 1;
        } else {
            let name = self.pods[&group][i].0.clone();
            let _ = try_set_ready(c, &self.ns, &name, false).await;
            self.pods.get_mut(&group).unwrap()[i].1 = false;
            *self.actions.entry("holder made not Ready").or_default() += 1;
        }
        true
    }

    /// Churns for `duration`, one step every `every`; `during(elapsed)` runs between steps
    /// (faults are injected from it). Returns the number of steps.
    pub async fn churn(&mut self, c: &kube::Client, rng: &mut Rng, duration: Duration, every: Duration) -> u64 {
        let start = Instant::now();
        let mut steps = 0;
        while start.elapsed() < duration {
            let t = Instant::now();
            self.step(c, rng).await;
            steps += 1;
            tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
        }
        steps
    }

    /// Every pod Ready again, so every LeaderLock has candidates at the end.
    pub async fn heal(&mut self, c: &kube::Client) {
        for ll in self.lls.clone() {
            for i in 0..self.pods[&ll].len() {
                let (name, ready) = self.pods[&ll][i].clone();
                if !ready {
                    let _ = try_set_ready(c, &self.ns, &name, true).await;
                    self.pods.get_mut(&ll).unwrap()[i].1 = true;
                }
            }
        }
    }

    pub fn actions(&self) -> String {
        self.actions.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
    }
}

/// One scenario's figures, printed and, with `LEADERLOCK_CHAOS_REPORT=<file>`, appended to it
/// as Markdown (hack/chaos.sh assembles CHAOS.md from it).
pub struct Report {
    pub name: String,
    pub setup: String,
    pub summary: Summary,
    pub convergence: Duration,
    pub convergence_bound: Duration,
    pub fault_holder_changes_target: Option<usize>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn emit(&self) {
        let s = &self.summary;
        let target = self.fault_holder_changes_target.map(|t| format!(" (target {t})")).unwrap_or_else(|| " (no target: expected)".into());
        let mut md = format!(
            "### {}\n\n{}\n\n| figure | value |\n|---|---|\n| leader transitions observed (apiserver) | {} |\n| holder changes observed (etcd) | {} |\n| checker violations | {} |\n| keys written outside root/allowed prefixes | {} |\n| holder changes caused by the fault itself | {}{} |\n| demote/promote window (leader annotation vs etcd holder), max | {:?} over {} windows |\n| convergence after the fault | {:?} (bound {:?}) |\n| events checked (pods / etcd), etcd re-lists | {} / {}, {} |\n",
            self.name,
            self.setup,
            s.transitions,
            s.holder_changes,
            s.violations.len(),
            s.outside_keys.len(),
            s.causeless.len(),
            target,
            s.max_window,
            s.windows,
            self.convergence,
            self.convergence_bound,
            s.pod_events,
            s.etcd_events,
            s.etcd_relists,
        );
        for n in &self.notes {
            md.push_str(&format!("\n{n}\n"));
        }
        for v in s.violations.iter().chain(&s.causeless).take(10) {
            md.push_str(&format!("\n* `{v}`"));
        }
        md.push('\n');
        println!("{md}");
        if let Ok(path) = std::env::var("LEADERLOCK_CHAOS_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{md}").unwrap();
        }
    }
}
