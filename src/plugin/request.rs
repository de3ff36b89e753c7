//! `handover` and `step-down`: create a `Handover` (docs/contract.md §5.8) for one lock of a
//! LeaderLock and, with `--wait`, watch it until the controller gives its verdict.
//!
//! The LeaderLock is read first: a typo in its name or lock fails at once (exit 2) instead of
//! leaving a request the controller can only refuse, and its UID becomes the Handover's
//! ownerReference, so requests are garbage-collected with their LeaderLock.

use std::io::Write;
use std::time::Duration;

use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Resource, ResourceExt};

use super::connect::Connection;
use super::{PluginError, print};
use crate::resource::LeaderLock;
use crate::resource::handover::{Handover, HandoverSpec, HandoverStatus, Phase, reasons};

/// One request: `to` absent is a step-down; `wait` is `--wait` with its `--timeout`.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub leaderlock: String,
    pub lock: Option<String>,
    pub to: Option<String>,
    pub if_holder: Option<String>,
    pub wait: Option<Duration>,
}

pub async fn run(conn: &Connection, req: &Request, out: &mut dyn Write) -> Result<(), PluginError> {
    let ll = get_leaderlock(conn, &req.leaderlock).await?;
    let lock = choose_lock(&ll, req.lock.as_deref())?;
    let api: Api<Handover> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let created = api
        .create(&PostParams::default(), &handover(&ll, &lock, req))
        .await
        .map_err(|e| PluginError::api(format!("creating a Handover of {}/{lock}", req.leaderlock), e))?;
    let name = created.name_any();
    print(out, &format!("{name}\n"))?;
    let Some(timeout) = req.wait else { return Ok(()) };
    let done = wait_for_verdict(api, &name, &conn.namespace, timeout).await?;
    print(out, &format!("{}\n", verdict(&lock, done.status.unwrap_or_default())?))
}

/// The LeaderLock, or exit 2 when it does not exist.
pub(crate) async fn get_leaderlock(conn: &Connection, name: &str) -> Result<LeaderLock, PluginError> {
    let api: Api<LeaderLock> = Api::namespaced(conn.client.clone(), &conn.namespace);
    api.get_opt(name)
        .await
        .map_err(|e| PluginError::api(format!("reading LeaderLock {}/{name}", conn.namespace), e))?
        .ok_or_else(|| PluginError::LeaderLockNotFound { namespace: conn.namespace.clone(), name: name.to_string() })
}

/// `--lock`, checked against the spec; without it, the LeaderLock's only lock.
pub fn choose_lock(ll: &LeaderLock, lock: Option<&str>) -> Result<String, PluginError> {
    let specs = ll.spec.lock_specs();
    let names: Vec<&str> = specs.iter().map(|l| l.name.as_str()).collect();
    let namespace = ll.namespace().unwrap_or_default();
    match (lock, names.as_slice()) {
        (Some(want), _) if names.contains(&want) => Ok(want.to_string()),
        (Some(want), _) => {
            Err(PluginError::LockNotFound { namespace, name: ll.name_any(), lock: want.to_string(), locks: names.join(", ") })
        }
        (None, [only]) => Ok(only.to_string()),
        (None, _) => Err(PluginError::LockNotGiven { namespace, name: ll.name_any(), count: names.len(), locks: names.join(", ") }),
    }
}

/// The request object: named `<leaderlock>-<lock>-<random>` by the apiserver, owned by the
/// LeaderLock.
pub fn handover(ll: &LeaderLock, lock: &str, req: &Request) -> Handover {
    Handover {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-{lock}-", ll.name_any())),
            namespace: ll.namespace(),
            owner_references: ll.owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: HandoverSpec { leader_lock: ll.name_any(), lock: lock.to_string(), to: req.to.clone(), if_holder: req.if_holder.clone() },
        status: None,
    }
}

/// Watches the Handover until its phase is final (or it is deleted, e.g. with its LeaderLock).
async fn wait_for_verdict(api: Api<Handover>, name: &str, namespace: &str, timeout: Duration) -> Result<Handover, PluginError> {
    let is_final = |h: Option<&Handover>| h.is_none_or(|h| h.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_final));
    match tokio::time::timeout(timeout, await_condition(api, name, is_final)).await {
        Err(_) => Err(PluginError::TimedOut {
            timeout,
            what: format!("Handover {namespace}/{name} to reach a final phase"),
            hint: format!(
                "the request stays and the controller may still carry it out (`kubectl get handovers.leaderlock.dev -n {namespace} {name}`); is the controller running?"
            ),
        }),
        Ok(Err(e)) => Err(PluginError::Api { action: format!("watching Handover {namespace}/{name}"), source: watch_error(e) }),
        Ok(Ok(None)) => Err(PluginError::Refused {
            phase: "deleted".into(),
            reason: "HandoverDeleted".into(),
            message: format!("Handover {namespace}/{name} was deleted before the controller decided (was its LeaderLock deleted?)"),
        }),
        Ok(Ok(Some(h))) => Ok(h),
    }
}

/// kube-runtime's wait error carries the watcher's; the plugin reports it as an API failure.
pub(crate) fn watch_error(e: kube::runtime::wait::Error) -> kube::Error {
    match e {
        kube::runtime::wait::Error::ProbeFailed(kube::runtime::watcher::Error::InitialListFailed(e))
        | kube::runtime::wait::Error::ProbeFailed(kube::runtime::watcher::Error::WatchStartFailed(e))
        | kube::runtime::wait::Error::ProbeFailed(kube::runtime::watcher::Error::WatchFailed(e)) => e,
        kube::runtime::wait::Error::ProbeFailed(kube::runtime::watcher::Error::WatchError(status)) => kube::Error::Api(status),
        other => kube::Error::Service(Box::new(other)),
    }
}

/// The line printed for `Done` (exit 0), or the verdict as an error (exit 1).
pub fn verdict(lock: &str, st: HandoverStatus) -> Result<String, PluginError> {
    let reason = st.reason.clone().unwrap_or_default();
    let message = st.message.clone().unwrap_or_default();
    match st.phase {
        Some(Phase::Done) => {
            let reason = if reason.is_empty() { reasons::HANDED_OVER.to_string() } else { reason };
            let holder = st.holder.as_deref().unwrap_or("<none>");
            let token = st.fencing_token.as_deref().unwrap_or("<none>");
            let from = match (&st.from, &st.from_token) {
                (Some(from), Some(t)) if reason != reasons::ALREADY_HOLDER => format!(", was {from} with {t}"),
                _ => String::new(),
            };
            Ok(format!("done: {reason}: lock {lock} held by {holder} (fencing token {token}{from})"))
        }
        Some(Phase::Superseded) => Err(PluginError::Refused { phase: "superseded".into(), reason, message }),
        _ => Err(PluginError::Refused { phase: "refused".into(), reason, message }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ll(locks: &[&str]) -> LeaderLock {
        let locks: Vec<_> = locks.iter().map(|l| json!({"name": l})).collect();
        serde_json::from_value(json!({
            "apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock",
            "metadata": {"name": "payments", "namespace": "shop", "uid": "u-1"},
            "spec": {"selector": {"matchLabels": {"app": "w"}}, "locks": locks},
        }))
        .unwrap()
    }

    #[test]
    fn the_lock_may_be_left_out_only_when_there_is_one() {
        assert_eq!(choose_lock(&ll(&["ledger"]), None).unwrap(), "ledger");
        assert_eq!(choose_lock(&ll(&["a", "b"]), Some("b")).unwrap(), "b");
        let none = choose_lock(&ll(&["a", "b"]), None).unwrap_err();
        assert_eq!(none.to_string(), "LeaderLock shop/payments has 2 locks (a, b): name one with --lock");
        let typo = choose_lock(&ll(&["a", "b"]), Some("c")).unwrap_err();
        assert_eq!((typo.exit_code(), typo.to_string().as_str()), (2, "LeaderLock shop/payments has no lock \"c\": its locks are a, b"));
    }

    #[test]
    fn the_request_is_named_after_its_lock_and_owned_by_the_leaderlock() {
        let req = Request { leaderlock: "payments".into(), to: Some("w-2".into()), if_holder: Some("w-1".into()), ..Request::default() };
        let h = handover(&ll(&["ledger"]), "ledger", &req);
        assert_eq!(h.metadata.generate_name.as_deref(), Some("payments-ledger-"));
        let owner = &h.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("LeaderLock", "payments", "u-1"));
        assert_eq!(owner.controller, None, "the controller of a Handover is not the LeaderLock");
        let spec = serde_json::to_value(&h.spec).unwrap();
        assert_eq!(spec, json!({"leaderLock": "payments", "lock": "ledger", "to": "w-2", "ifHolder": "w-1"}));
        let step_down = handover(&ll(&["ledger"]), "ledger", &Request { leaderlock: "payments".into(), ..Request::default() });
        assert_eq!(serde_json::to_value(&step_down.spec).unwrap(), json!({"leaderLock": "payments", "lock": "ledger"}));
    }

    #[test]
    fn verdicts_print_the_new_holder_or_the_reason() {
        let done = HandoverStatus {
            phase: Some(Phase::Done),
            reason: Some("HandedOver".into()),
            from: Some("w-1".into()),
            from_token: Some("7".into()),
            holder: Some("w-2".into()),
            fencing_token: Some("12".into()),
            ..HandoverStatus::default()
        };
        assert_eq!(verdict("ledger", done).unwrap(), "done: HandedOver: lock ledger held by w-2 (fencing token 12, was w-1 with 7)");
        let refused = HandoverStatus {
            phase: Some(Phase::Refused),
            reason: Some("NotHolder".into()),
            message: Some("w-3 does not hold ledger".into()),
            ..HandoverStatus::default()
        };
        assert_eq!(verdict("ledger", refused).unwrap_err().stderr_line(), "refused: NotHolder: w-3 does not hold ledger");
        let superseded = HandoverStatus { phase: Some(Phase::Superseded), reason: Some("Superseded".into()), ..HandoverStatus::default() };
        let e = verdict("ledger", superseded).unwrap_err();
        assert_eq!((e.exit_code(), e.stderr_line().as_str()), (1, "superseded: Superseded: "));
    }
}
