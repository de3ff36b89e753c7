//! LeaderLock: leader election for Kubernetes pods on etcd locks.
//!
//! ```text
//!  LeaderLock + Pods ──watch──▶ controller ──decide (lock, pure)──▶ etcd ops ─▶ etcd
//!        ▲                          ▲                                            │
//!        └── status + pod annotations (SSA)      etcd mirror (one watch) ◀───────┘
//! ```
//!
//! One module per concern; sections of docs/contract.md in brackets.
#![forbid(unsafe_code)]

/// Names and value syntaxes users depend on (pure): group, pod keys, lock names, durations [§2, §3, §5].
pub mod contract;
/// The reconciler: LeaderLocks, pods and etcd changes in; etcd keys, pod keys, status out [§2–§4].
pub mod controller;
/// etcd access: connection, leases, the one-watch mirror, the lock engine [§4].
pub mod etcd;
/// Test fixtures shared by every module's unit tests.
#[cfg(test)]
pub(crate) mod fixtures;
/// `/healthz` and `/readyz` in plain HTTP; `/metrics` over HTTPS to authorized callers [§5.3].
pub mod http;
/// In-memory indexes over LeaderLocks and pods: what one reconcile or one pod event concerns.
pub mod index;
/// Where LeaderLock's keys live in etcd (pure): lock prefixes, allowed `etcdKey`s [§4].
pub mod keyspace;
/// The lock decision (pure): holder, fencing token, etcd operations [§4].
pub mod lock;
/// Prometheus metrics [§5].
pub mod metrics;
/// Lost nodes (pure): judged from the kubelets' Leases in `kube-node-lease` [§3.2].
pub mod node_loss;
/// Placement (pure): which candidate should hold each lock (Queue or Spread, preference,
/// never-lead, stabilisation) and the planned handovers that get there; the `shards` shorthand.
pub mod placement;
/// The kubectl plugin `kubectl leaderlock`: status, handover, step-down, pause, resume [§5.8].
pub mod plugin;
/// The pod contract (pure): candidacy, role and token keys, demote-before-promote [§3].
pub mod pods;
/// The pod-side helper: role, wait, run [§3].
pub mod podside;
/// A controller whose etcd root belongs to another cluster: says so on every LeaderLock [§5].
pub mod refusal;
/// The opt-in leader renewal (pure): the `leaderlock.dev/roles.renewed` mark [§3.1].
pub mod renewal;
/// What only the controller can judge (pure): lock-name conflicts, allowed etcd keys, selectors [§2].
pub mod resolve;
/// The `LeaderLock` custom resource and its CRD [§2].
pub mod resource;
