//! The `LeaderLock` custom resource (docs/contract.md §2): what users `kubectl apply`, and the status the
//! controller reports. The CRD YAML under `crds/` is generated from these types.
//!
//! Everything the API server can judge is in the schema (patterns, bounds, list-map keys, CEL),
//! so a bad spec is refused at `kubectl apply` with a message naming the field; what only the
//! controller can judge becomes a `Ready=False` condition (see [`reasons`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};

pub mod handover;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group lives in the contract; the `group` literal below is checked against it there.
pub use crate::contract::GROUP;

/// Desired state: which pods compete, for which locks.
// `printcolumn(.., type_ = "string", ..)` repeats per column by design; clippy takes the repeats
// for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "leaderlock.dev",
    version = "v1alpha1",
    kind = "LeaderLock",
    plural = "leaderlocks",
    shortname = "ll",
    namespaced,
    status = "LeaderLockStatus",
    printcolumn(name = "Locks", type_ = "integer", json_path = ".status.lockCount", description = "Number of locks"),
    doc = "Leader election among the selected pods, one holder per lock, through etcd locks.",
    printcolumn(name = "Holder", type_ = "string", json_path = ".status.locks[0].holder", description = "Holder of the first lock"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.locks) != has(self.shards)").message(
    "give exactly one of spec.locks (named locks) and spec.shards (locks shard-0 … shard-N-1)"
))]
#[serde(rename_all = "camelCase")]
pub struct LeaderLockSpec {
    /// Pods in this namespace that are candidates for every lock. Must not be empty: an empty
    /// selector would make every pod of the namespace a candidate.
    #[x_kube(validation = Rule::new(
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)"
    ).message("selector must have matchLabels or matchExpressions; an empty selector would select every pod in the namespace"))]
    pub selector: LabelSelector,

    /// The locks to elect a holder for, each independently (1 to 256, unique names). Exactly
    /// one of `locks` and `shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub locks: Option<Vec<LockSpec>>,

    /// N identical locks named `shard-0` … `shard-{N-1}` (1 to 256), instead of listing them in
    /// `locks`: the shorthand for a program split into shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    // schemars calls a u32 `format: uint32`, which the apiserver does not know (it warns
    // "unrecognized format" at install); 1 to 256 is an int32.
    #[schemars(extend("format" = "int32"))]
    pub shards: Option<u32>,

    /// How the locks are placed on the candidates. Absent: etcd's order (policy `Queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,

    /// How long candidate keys survive in etcd when every controller replica is gone.
    #[serde(default = "default_ttl_seconds")]
    #[schemars(range(min = 5, max = 3600))]
    pub ttl_seconds: i64,

    /// Also mirror each pod's role into the label `leaderlock.dev/<lock>` (for Service selectors).
    #[serde(default)]
    pub pod_labels: bool,

    /// How long a node's Lease (in kube-node-lease) may go unrenewed before the node counts as
    /// lost and all its pods stop being candidates at once. 0 turns it off for this LeaderLock;
    /// absent: the controller's `--node-lost-after` (15 s by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub node_lost_after_seconds: Option<i64>,
    /// Opt-in: the controller renews each leading pod every third of this many seconds
    /// (`leaderlock.dev/roles.renewed`), and a leader whose file shows no renewal for this long
    /// stops acting as leader — a leader the controller cannot reach (frozen or cut-off node,
    /// dead kubelet or controller) stops on its own. Costs pod writes while idle. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 3600))]
    pub renew_deadline_seconds: Option<i64>,
    /// Freeze every holder (maintenance): no failover, no handover, candidate keys stay as they
    /// are until set back to false. The `Paused` condition says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// One lock: a name unique in the LeaderLock and, optionally, the etcd prefix it lives under.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LockSpec {
    /// DNS-1123 label of at most 50 characters; it becomes part of the pod annotation key.
    #[schemars(length(min = 1, max = crate::contract::MAX_LOCK_NAME_LEN), regex(pattern = crate::contract::LOCK_NAME_PATTERN))]
    pub name: String,

    /// Share the lock with non-Kubernetes etcd clients (e.g. `etcdctl lock`) by using this etcd
    /// prefix instead of the default one. Must be absolute and under an operator-allowed prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 512))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("etcdKey must be an absolute etcd key starting with '/'"))]
    #[x_kube(validation = Rule::new("!self.endsWith('/')").message("etcdKey must not end with '/'; candidate keys are created under <etcdKey>/"))]
    pub etcd_key: Option<String>,
}

fn default_ttl_seconds() -> i64 {
    15
}

impl LeaderLockSpec {
    /// The locks to serve, in order: `locks` as given, or the `shards` names (no etcd key, so
    /// always the default prefix). A `shards` value the schema would refuse gives none.
    pub fn lock_specs(&self) -> std::borrow::Cow<'_, [LockSpec]> {
        match (&self.locks, self.shards) {
            (Some(locks), _) => std::borrow::Cow::Borrowed(locks),
            (None, Some(n)) => crate::placement::shard_names(n)
                .unwrap_or_default()
                .into_iter()
                .map(|name| LockSpec { name, etcd_key: None })
                .collect::<Vec<_>>()
                .into(),
            (None, None) => std::borrow::Cow::Borrowed(&[]),
        }
    }

    /// The placement in force: `spec.placement`, or the defaults (Queue).
    pub fn placement(&self) -> PlacementSpec {
        self.placement.clone().unwrap_or_default()
    }
}

/// Where the locks go (docs/contract.md §8). The defaults keep etcd's order, so LeaderLocks
/// written before placement existed, and `etcdctl lock` peers, see no change.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.preferred) || self.policy == 'Spread'").message(
    "placement.preferred needs policy Spread: under Queue etcd's order decides who leads"
))]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// `Queue` (default): the oldest key in etcd holds, as with `etcdctl lock`. `Spread`:
    /// balance the locks over the candidates, each leading ⌊L/C⌋ or ⌈L/C⌉, moving the fewest.
    #[serde(default)]
    pub policy: PlacementPolicy,

    /// Under Spread, candidates matching this selector lead every lock while any of them may
    /// (e.g. a zone label); the others lead only when none of them can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<LabelSelector>,

    /// Candidates matching this selector never lead (no etcd key): they stay `standby`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_lead: Option<LabelSelector>,

    /// Under Spread, how long a candidate must have been Ready before it takes locks from
    /// others (and counts as preferred), so a flapping pod does not bounce leadership.
    #[serde(default = "default_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_seconds: i64,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        PlacementSpec {
            policy: PlacementPolicy::Queue,
            preferred: None,
            never_lead: None,
            stabilization_seconds: default_stabilization_seconds(),
        }
    }
}

fn default_stabilization_seconds() -> i64 {
    10
}

/// The placement policies (see [`crate::placement::Policy`]).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementPolicy {
    #[default]
    Queue,
    Spread,
}

/// What the controller observed: one entry per lock plus conditions.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderLockStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of locks in the spec; printer columns cannot count a list, so it is reported here.
    #[serde(default)]
    pub lock_count: i32,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub locks: Vec<LockStatus>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the locks are: the policy and how many locks each candidate leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementStatus>,
}

/// The placement as observed: locks per candidate, and whether it is where the policy wants it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// `Queue` or `Spread`.
    pub policy: String,
    /// Every candidate (oldest first, zero included), then pods still holding a lock after they
    /// stopped being candidates.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub distribution: Vec<PodLocks>,
    /// Locks held outside this LeaderLock (`etcd:<key>`, another cluster's pod).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub external: i32,
    /// Locks with no holder.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vacant: i32,
    /// True when placement plans no move and no candidate waits out its stabilisation delay.
    pub settled: bool,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// How many locks one pod leads.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodLocks {
    pub pod: String,
    pub locks: i32,
}

/// The observed state of one lock.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockStatus {
    pub name: String,
    /// Pod name of the holder, `etcd:<key>` for a holder outside Kubernetes, absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Create revision of the holder's etcd key (an int64 as a string); strictly increases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<String>,
    /// When the current holder took the lock (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Pods currently competing for the lock.
    #[serde(default)]
    pub candidates: i32,
    /// Holder changes observed since the LeaderLock was created.
    #[serde(default)]
    pub transitions: i64,
    /// The first 16 in line, in etcd's order, holder first (same naming as `holder`): who takes
    /// over next. `kubectl leaderlock status -o wide` shows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
}

/// Condition types and reasons users can match on.
pub mod reasons {
    pub const READY: &str = "Ready";
    /// Every lock has a holder or is waiting for one, nothing rejected.
    pub const ELECTED: &str = "Elected";
    /// The selector matches no candidate pod; not an error.
    pub const NO_CANDIDATES: &str = "NoCandidates";
    /// A lock name is already used by an older LeaderLock in the namespace.
    pub const LOCK_NAME_CONFLICT: &str = "LockNameConflict";
    /// An `etcdKey` is outside every `--allowed-key-prefix`.
    pub const ETCD_KEY_NOT_ALLOWED: &str = "EtcdKeyNotAllowed";
    /// etcd could not be reached; the controller retries with backoff.
    pub const ETCD_UNAVAILABLE: &str = "EtcdUnavailable";
    /// The selector cannot be evaluated (e.g. an unknown matchExpressions operator).
    pub const INVALID_SELECTOR: &str = "InvalidSelector";
    /// The apiserver refused a write the controller needs (RBAC); the message names it.
    pub const FORBIDDEN: &str = "Forbidden";
    /// The etcd root is registered to another cluster: this controller serves nothing there.
    pub const ROOT_OWNED_BY_OTHER_CLUSTER: &str = "RootOwnedByOtherCluster";
    /// Condition type: `True` while `spec.paused` freezes the holders.
    pub const PAUSED: &str = "Paused";
    /// `Paused=True`: frozen by `spec.paused`.
    pub const SPEC_PAUSED: &str = "SpecPaused";
    /// `Paused=False` after a pause ended.
    pub const RESUMED: &str = "Resumed";
    /// Condition type, and its reason when `True`: a node of a selected pod stopped renewing its
    /// Lease; its pods are not candidates.
    pub const NODE_LOST: &str = "NodeLost";
    /// `NodeLost=False`: every candidate's node renews its Lease again.
    pub const NODES_RENEWING: &str = "NodesRenewing";
    /// `NodeLost=False`: `nodeLostAfterSeconds: 0` turned node loss off.
    pub const NODE_LOSS_OFF: &str = "NodeLossOff";
    /// `NodeLost=Unknown`: the controller cannot read the node Leases (RBAC).
    pub const NODE_LEASES_UNREADABLE: &str = "NodeLeasesUnreadable";
    /// `NodeLost=Unknown`: a candidate's node has no Lease.
    pub const NO_NODE_LEASE: &str = "NoNodeLease";
}

/// The CRD as YAML, exactly as checked in under `crds/`. Printed with serde-saphyr, the YAML
/// library kube itself uses; it quotes every string that Go's YAML readers (kubectl, helm)
/// would take for another type. Long strings are never folded: a CEL rule or a description
/// reads as written, and a one-word change is a one-line diff.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    crd_yaml_of::<LeaderLock>()
}

/// The CRD of any of our kinds as YAML, printed like [`crd_yaml`].
pub fn crd_yaml_of<K: CustomResourceExt>() -> Result<String, serde_saphyr::ser::Error> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(&K::crd(), options)
}

/// Every CRD the controller serves, by plural: what `leaderlock crd [PLURAL]` prints.
pub fn crds() -> Vec<(&'static str, Result<String, serde_saphyr::ser::Error>)> {
    vec![("leaderlocks", crd_yaml()), ("handovers", crd_yaml_of::<handover::Handover>())]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The printed YAML must carry exactly the CRD the types describe: nothing folded, quoted or
    /// typed differently on the way (a CEL rule or a `'/'` literal read back as something else
    /// would reach the apiserver changed).
    #[test]
    fn printed_crd_reads_back_as_the_same_crd() {
        let yaml = crd_yaml().unwrap();
        let read_back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(read_back, serde_json::to_value(LeaderLock::crd()).unwrap());
        let yaml = crd_yaml_of::<handover::Handover>().unwrap();
        let read_back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(read_back, serde_json::to_value(handover::Handover::crd()).unwrap());
    }

    /// Every `format` in the CRDs is one the apiserver knows (apiextensions-apiserver's
    /// `GetUnrecognizedFormats`): `int32`/`int64` for integers, `float`/`double` for numbers and
    /// its list for strings. Any other draws an "unrecognized format" warning when a user installs
    /// the chart, and the apiserver drops it. schemars' `uint32`, `uint64`, `uint8`… come from
    /// unsigned Rust types.
    #[test]
    fn every_schema_format_is_one_kubernetes_knows() {
        const STRING_FORMATS: &str = "bsonobjectid uri email hostname ipv4 ipv6 cidr mac uuid uuid3 uuid4 uuid5 isbn isbn10 \
            isbn13 creditcard ssn hexcolor rgbcolor byte password date duration datetime k8s-short-name k8s-long-name";
        fn unknown(at: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(format)) = map.get("format") {
                        let known = match map.get("type").and_then(|t| t.as_str()) {
                            Some("integer") => ["int32", "int64"].contains(&format.as_str()),
                            Some("number") => ["float", "double"].contains(&format.as_str()),
                            None | Some("string") => {
                                // go-openapi drops dashes before it looks a string format up.
                                let normalized = format.replace('-', "");
                                STRING_FORMATS.split_whitespace().any(|f| f.replace('-', "") == normalized)
                            }
                            Some(_) => false,
                        };
                        if !known {
                            out.push(format!("{at}: {format}"));
                        }
                    }
                    for (key, child) in map {
                        unknown(&format!("{at}/{key}"), child, out);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        unknown(&format!("{at}/{i}"), child, out);
                    }
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        unknown("leaderlocks", &serde_json::to_value(LeaderLock::crd()).unwrap(), &mut found);
        unknown("handovers", &serde_json::to_value(handover::Handover::crd()).unwrap(), &mut found);
        assert!(found.is_empty(), "formats the apiserver does not know: {found:#?}");
    }
}
