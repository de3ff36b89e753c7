//! The `Handover` custom resource (docs/contract.md §7): a request to move one lock of a
//! LeaderLock on purpose — to a named candidate, or away from its holder to the next in line
//! (step-down) — and, in its status, what became of it.
//!
//! A resource rather than an annotation on the LeaderLock: it can be granted on its own (RBAC
//! `create handovers` without `patch leaderlocks`, which would also allow editing the spec), it
//! survives controller restarts and replica takeovers like any object, each request keeps its
//! own outcome for `kubectl get`, and garbage collection removes it with its LeaderLock.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the requester asks for. Immutable: a request is judged once.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "leaderlock.dev",
    version = "v1alpha1",
    kind = "Handover",
    plural = "handovers",
    shortname = "llh",
    namespaced,
    status = "HandoverStatus",
    doc = "A request to move one lock of a LeaderLock to a named candidate, or away from its holder (step-down).",
    printcolumn(name = "LeaderLock", type_ = "string", json_path = ".spec.leaderLock"),
    printcolumn(name = "Lock", type_ = "string", json_path = ".spec.lock"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.to", description = "Requested holder; empty for a step-down"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(name = "Holder", type_ = "string", json_path = ".status.holder", description = "Holder once done"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Handover's spec is immutable: create a new Handover instead"))]
#[serde(rename_all = "camelCase")]
pub struct HandoverSpec {
    /// The LeaderLock (same namespace) whose lock moves.
    #[schemars(length(min = 1, max = 253))]
    pub leader_lock: String,

    /// The lock to move (a name in the LeaderLock's `spec.locks`).
    #[schemars(length(min = 1, max = crate::contract::MAX_LOCK_NAME_LEN), regex(pattern = crate::contract::LOCK_NAME_PATTERN))]
    pub lock: String,

    /// The candidate pod to hand the lock to. Absent: step down, the next in line takes over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub to: Option<String>,

    /// Compare-and-swap guard: move the lock only if this pod holds it when the request is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub if_holder: Option<String>,
}

/// Where a request stands. `Done`, `Refused` and `Superseded` are final.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted: the holder it moves away from is recorded in `from`; the move is under way.
    Pending,
    /// The lock moved (or already was where the request wanted it); `holder` holds it now.
    Done,
    /// Not carried out; `reason` and `message` say why.
    Refused,
    /// A newer request for the same lock arrived before this one was carried out.
    Superseded,
}

impl Phase {
    pub fn is_final(self) -> bool {
        self != Phase::Pending
    }
}

/// The outcome of a request, written only by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoverStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why it was refused, superseded or done (a word from [`reasons`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The holder when the request was accepted, and its fencing token: a move already made is
    /// never made again (after a controller restart, a step-down must not step down twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_token: Option<String>,
    /// The holder once done, and its fencing token (larger than `fromToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<String>,
    /// When the request reached its final phase (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// Reasons in a Handover's status (and in its Events).
pub mod reasons {
    /// Done: the lock moved.
    pub const HANDED_OVER: &str = "HandedOver";
    /// Done without a move: the requested pod already holds the lock.
    pub const ALREADY_HOLDER: &str = "AlreadyHolder";
    /// Superseded by a newer request for the same lock.
    pub const SUPERSEDED: &str = "Superseded";
    /// Refusals.
    pub const LEADER_LOCK_NOT_FOUND: &str = "LeaderLockNotFound";
    pub const LOCK_NOT_FOUND: &str = "LockNotFound";
    pub const LOCK_NOT_SERVED: &str = "LockNotServed";
    pub const PAUSED: &str = "Paused";
    /// The LeaderLock places its locks with policy Spread, which would undo the move.
    pub const PLACED_BY_SPREAD: &str = "PlacedBySpread";
    pub const NO_HOLDER: &str = "NoHolder";
    pub const NOT_HOLDER: &str = "NotHolder";
    pub const EXTERNAL_HOLDER: &str = "ExternalHolder";
    pub const NOT_CANDIDATE: &str = "NotCandidate";
    /// `to` matches placement.neverLead: a candidate that never leads (docs/contract.md §8.1).
    pub const NEVER_LEAD: &str = "NeverLead";
    pub const EXTERNAL_AHEAD: &str = "ExternalAhead";
    pub const NO_OTHER_CANDIDATE: &str = "NoOtherCandidate";
}
