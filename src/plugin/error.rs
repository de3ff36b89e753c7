//! Everything that can go wrong in `kubectl leaderlock`, each with the exit status a script
//! can rely on (docs/contract.md §5.8) and a message that says what to do.

use std::time::Duration;

use super::exit;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot load the kubeconfig ({source}): check --kubeconfig, KUBECONFIG and --context, or run inside a pod")]
    Kubeconfig { source: Box<dyn std::error::Error + Send + Sync> },

    #[error("cannot build a Kubernetes client for {url}: {source}")]
    Client { url: String, source: kube::Error },

    #[error(
        "LeaderLock {namespace}/{name} not found: check the name and -n/--namespace (`kubectl leaderlock status -n {namespace}` lists them)"
    )]
    LeaderLockNotFound { namespace: String, name: String },

    #[error("LeaderLock {namespace}/{name} has no lock {lock:?}: its locks are {locks}")]
    LockNotFound { namespace: String, name: String, lock: String, locks: String },

    #[error("LeaderLock {namespace}/{name} has {count} locks ({locks}): name one with --lock")]
    LockNotGiven { namespace: String, name: String, count: usize, locks: String },

    /// The controller's verdict: `Refused` or `Superseded`, with its reason and message.
    #[error("{phase}: {reason}: {message}")]
    Refused { phase: String, reason: String, message: String },

    #[error("timed out after {} waiting for {what}: {hint}", humanize(*timeout))]
    TimedOut { timeout: Duration, what: String, hint: String },

    #[error("{action} failed: {}", api_hint(source))]
    Api { action: String, source: kube::Error },

    #[error("cannot print {what}: {detail}")]
    Output { what: String, detail: String },
}

impl PluginError {
    /// The exit status for this error (docs/contract.md §5.8).
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::Refused { .. } => exit::REFUSED,
            PluginError::LeaderLockNotFound { .. } | PluginError::LockNotFound { .. } | PluginError::LockNotGiven { .. } => exit::USAGE,
            PluginError::TimedOut { .. } => exit::TIMED_OUT,
            PluginError::Kubeconfig { .. } | PluginError::Client { .. } | PluginError::Api { .. } | PluginError::Output { .. } => exit::API,
        }
    }

    /// The line for stderr: a verdict as it is (`refused: <Reason>: <message>`, the form scripts
    /// match), anything else prefixed with `error: `.
    pub fn stderr_line(&self) -> String {
        match self {
            PluginError::Refused { .. } => self.to_string(),
            _ => format!("error: {self}"),
        }
    }

    pub(crate) fn api(action: impl Into<String>, source: kube::Error) -> PluginError {
        PluginError::Api { action: action.into(), source }
    }
}

/// The apiserver's answer, with what to do about the common ones.
fn api_hint(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            format!("{} (HTTP 403): ask for the chart's handover role (value rbac.handoverRole) or the equivalent RBAC rules", s.message)
        }
        kube::Error::Api(s) if s.code == 404 => {
            format!("{} (HTTP 404): the LeaderLock CRDs may be missing: `leaderlock crd | kubectl apply --server-side -f -`", s.message)
        }
        kube::Error::Api(s) => format!("{} (HTTP {}, {})", s.message, s.code, s.reason),
        other => format!("{other}: is the apiserver reachable? check --context, --kubeconfig and KUBECONFIG"),
    }
}

/// `30s`, `1m30s`, `250ms`: how `--timeout` values are echoed back.
pub(crate) fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_printed_bare_for_scripts_and_everything_else_as_an_error() {
        let refused = PluginError::Refused { phase: "refused".into(), reason: "NotHolder".into(), message: "w-2 holds ledger".into() };
        assert_eq!(refused.stderr_line(), "refused: NotHolder: w-2 holds ledger");
        assert_eq!(refused.exit_code(), exit::REFUSED);
        let missing = PluginError::LeaderLockNotFound { namespace: "shop".into(), name: "payments".into() };
        assert!(missing.stderr_line().starts_with("error: LeaderLock shop/payments not found"));
        assert_eq!(missing.exit_code(), exit::USAGE);
        let late = PluginError::TimedOut { timeout: Duration::from_secs(90), what: "x".into(), hint: "y".into() };
        assert_eq!((late.exit_code(), late.to_string().as_str()), (exit::TIMED_OUT, "timed out after 1m30s waiting for x: y"));
    }

    #[test]
    fn durations_read_back_as_they_are_written() {
        for (d, text) in [(250, "250ms"), (1500, "1500ms"), (30_000, "30s"), (60_000, "1m"), (90_000, "1m30s")] {
            assert_eq!(humanize(Duration::from_millis(d)), text);
        }
    }
}
