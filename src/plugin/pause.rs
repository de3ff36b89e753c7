//! `pause` and `resume`: merge-patch `spec.paused` of a LeaderLock and, with `--wait`, watch it
//! until the controller's `Paused` condition follows (docs/contract.md §5.8).

use std::io::Write;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use super::connect::Connection;
use super::request::watch_error;
use super::{PluginError, print};
use crate::resource::{LeaderLock, reasons};

/// `paused: true` for `pause`, `false` for `resume`; `wait` is `--wait` with its `--timeout`.
#[derive(Clone, Debug)]
pub struct Pause {
    pub leaderlock: String,
    pub paused: bool,
    pub wait: Option<Duration>,
}

pub async fn run(conn: &Connection, req: &Pause, out: &mut dyn Write) -> Result<(), PluginError> {
    let api: Api<LeaderLock> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let verb = if req.paused { "paused" } else { "resumed" };
    let patch = json!({"spec": {"paused": req.paused}});
    let patched = match api.patch(&req.leaderlock, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(ll) => ll,
        Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound" => {
            return Err(PluginError::LeaderLockNotFound { namespace: conn.namespace.clone(), name: req.leaderlock.clone() });
        }
        Err(e) => return Err(PluginError::api(format!("patching spec.paused of LeaderLock {}/{}", conn.namespace, req.leaderlock), e)),
    };
    print(out, &format!("leaderlock.leaderlock.dev/{} {verb}\n", req.leaderlock))?;
    let Some(timeout) = req.wait else { return Ok(()) };
    let generation = patched.metadata.generation.unwrap_or_default();
    let follows = move |ll: Option<&LeaderLock>| ll.is_none_or(|ll| condition_follows(ll, req.paused, generation));
    let what = format!("the Paused condition of LeaderLock {}/{} to be {}", conn.namespace, req.leaderlock, req.paused);
    let ll = match tokio::time::timeout(timeout, await_condition(api, &req.leaderlock, follows)).await {
        Err(_) => {
            let hint = "spec.paused is set; the controller applies it when it runs (is it running?)".to_string();
            return Err(PluginError::TimedOut { timeout, what, hint });
        }
        Ok(Err(e)) => return Err(PluginError::api(format!("watching LeaderLock {}/{}", conn.namespace, req.leaderlock), watch_error(e))),
        Ok(Ok(None)) => {
            return Err(PluginError::LeaderLockNotFound { namespace: conn.namespace.clone(), name: req.leaderlock.clone() });
        }
        Ok(Ok(Some(ll))) => ll,
    };
    print(out, &format!("{}\n", describe(&ll)))
}

/// Whether the controller has acted on `spec.paused == paused` as of `generation`: `Paused=True`
/// once paused; `Paused=False`, or no `Paused` condition at all (never paused), once resumed.
pub fn condition_follows(ll: &LeaderLock, paused: bool, generation: i64) -> bool {
    let Some(status) = &ll.status else { return false };
    let cond = status.conditions.iter().find(|c| c.type_ == reasons::PAUSED);
    let seen = |og: Option<i64>| og.or(status.observed_generation).is_some_and(|g| g >= generation);
    match cond {
        Some(c) => c.status == if paused { "True" } else { "False" } && seen(c.observed_generation),
        None => !paused && seen(status.observed_generation),
    }
}

/// `condition Paused=True: SpecPaused: <message>` as the controller wrote it.
fn describe(ll: &LeaderLock) -> String {
    let cond = ll.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == reasons::PAUSED));
    match cond {
        Some(c) => format!("condition Paused={}: {}: {}", c.status, c.reason, c.message),
        None => "condition Paused: absent (never paused)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(generation: i64, observed: i64, paused: Option<(&str, i64)>) -> LeaderLock {
        let conditions: Vec<_> = paused
            .map(|(status, og)| {
                json!({"type": "Paused", "status": status, "reason": "SpecPaused", "message": "m",
                       "lastTransitionTime": "2026-12-01T10:00:00Z", "observedGeneration": og})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "leaderlock.dev/v1alpha1", "kind": "LeaderLock",
            "metadata": {"name": "payments", "namespace": "shop", "generation": generation},
            "spec": {"selector": {"matchLabels": {"app": "w"}}, "locks": [{"name": "a"}]},
            "status": {"observedGeneration": observed, "conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn a_pause_is_followed_only_by_a_true_condition_of_the_patched_generation() {
        assert!(condition_follows(&ll(3, 3, Some(("True", 3))), true, 3));
        assert!(!condition_follows(&ll(3, 2, Some(("True", 2))), true, 3), "an older pause is not this one");
        assert!(!condition_follows(&ll(3, 3, Some(("False", 3))), true, 3));
        assert!(!condition_follows(&ll(3, 3, None), true, 3));
    }

    #[test]
    fn a_resume_is_followed_by_a_false_condition_or_by_none_at_all() {
        assert!(condition_follows(&ll(4, 4, Some(("False", 4))), false, 4));
        assert!(condition_follows(&ll(4, 4, None), false, 4), "never paused");
        assert!(!condition_follows(&ll(4, 3, Some(("True", 3))), false, 4));
        assert!(!condition_follows(&ll(4, 3, None), false, 4), "the controller has not seen the patch yet");
    }
}
