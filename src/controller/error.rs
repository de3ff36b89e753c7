//! Failures of one reconcile, and the ones users can act on surfaced as a `Ready=False` reason.

use crate::resource::reasons;

/// Failures of one reconcile. Messages say what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd: {0}")]
    Etcd(#[from] crate::etcd::Error),
    #[error("Kubernetes API call {what} failed: {source}")]
    Kube { what: &'static str, source: kube::Error },
    /// Adding or removing the finalizer failed (not the reconcile it wraps).
    #[error("cannot update the finalizer of LeaderLock {name}: {source}")]
    Finalizer { name: String, source: Box<kube::runtime::finalizer::Error<Error>> },
    #[error("LeaderLock has no namespace")]
    NoNamespace,
}

impl Error {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Etcd(_) => "etcd",
            Error::Kube { .. } => "kube",
            Error::Finalizer { .. } => "finalizer",
            Error::NoNamespace => "no_namespace",
        }
    }

    /// The condition a failed reconcile leaves on the LeaderLock, for failures users can act on.
    pub fn condition(&self) -> Option<(&'static str, String)> {
        match self {
            // A handover raced another change of the lock: judged again, nothing to report.
            Error::Etcd(crate::etcd::Error::Raced { .. }) => None,
            Error::Etcd(e) => Some((reasons::ETCD_UNAVAILABLE, format!("{e}; retrying with backoff"))),
            Error::Kube { what, source: kube::Error::Api(s) } if s.code == 403 => Some((
                reasons::FORBIDDEN,
                format!(
                    "{what}: {}; grant the missing permission to the controller's ServiceAccount (see the Helm chart's ClusterRole)",
                    s.message
                ),
            )),
            _ => None,
        }
    }
}

/// Wraps a failed Kubernetes call, naming it.
pub(super) fn kube_err(what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
