//! LeaderLock: leader election for Kubernetes pods on etcd locks.
//!
//! ```text
//!  LeaderLock + Pods ──watch──▶ controller ──decide (lock, pure)──▶ etcd ops ─▶ etcd
//!        ▲                          ▲                                            │
//!        └── status + pod annotations (SSA)      etcd mirror (one watch) ◀───────┘
//! ```
//!
//! One module per concern; SPEC.md sections in brackets.
#![forbid(unsafe_code)]

/// The `LeaderLock` custom resource and its CRD [§2].
pub mod resource;
/// The lock decision (pure): holder, fencing token, etcd operations [§4].
pub mod lock;
/// etcd access: connection, leases, the one-watch mirror, the lock engine [§4].
pub mod etcd;
/// The pod contract (pure): candidacy, role and token keys, demote-before-promote [§3].
pub mod pods;
/// What only the controller can judge (pure): lock-name conflicts, allowed etcd keys, selectors [§2].
pub mod resolve;
/// Where LeaderLock's keys live in etcd (pure): lock prefixes, allowed `etcdKey`s [§4].
pub mod keyspace;
/// In-memory indexes over LeaderLocks and pods: what one reconcile or one pod event concerns.
pub mod index;
/// The reconciler: LeaderLocks, pods and etcd changes in; etcd keys, pod keys, status out [§2–§4].
pub mod controller;
/// A controller whose etcd root belongs to another cluster: says so on every LeaderLock [§5].
pub mod refusal;
/// Prometheus metrics [§5].
pub mod metrics;
/// `/metrics`, `/healthz`, `/readyz` [§5].
pub mod http;
/// The pod-side helper: role, wait, run [§3].
pub mod podside;
