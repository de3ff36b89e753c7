//! Who may read `/metrics` (docs/contract.md §5.3): the apiserver decides, as it does for the
//! kubelet's and for controller-runtime's metrics endpoints.
//!
//! ```text
//!  Authorization: Bearer <token> ──▶ cache (by SHA-256 of the token) ──hit──▶ verdict
//!                                        │ miss
//!                                        ▼
//!                      TokenReview ──▶ who is it? ──▶ SubjectAccessReview: may they `get` /metrics?
//! ```
//!
//! Verdicts are cached so that a scrape costs no API call most of the time: an allowed caller for
//! [`ALLOWED_TTL`], a refused one for [`REFUSED_TTL`], both the kubelet's defaults for the same
//! job. A failed review (apiserver unreachable) is never cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// How long an allowed caller is let in without asking the apiserver again: the kubelet's token
/// cache (`authentication.webhook.cacheTTL`, 2 min). With the chart's 30 s scrape interval, 3 of
/// 4 scrapes cost no API call; revoking the role or deleting the ServiceAccount takes effect
/// within this long.
pub const ALLOWED_TTL: Duration = Duration::from_secs(120);
/// How long a refused caller (bad token, or no `get` on /metrics) stays refused without asking
/// again: the kubelet's `cacheUnauthorizedTTL` (30 s). Short, so a role just granted works soon,
/// yet a scraper retrying with a bad token costs the apiserver two calls a minute at most.
pub const REFUSED_TTL: Duration = Duration::from_secs(30);
/// Bound for each review call; within the 10 s a request may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(4);
/// Cached verdicts at most: scrapers are few (one token each, two while a token rotates).
const CACHE_CAPACITY: usize = 256;
/// Reviews in flight at most: a burst of callers with fresh tokens waits here rather than
/// sending the apiserver a burst of reviews.
const CONCURRENT_REVIEWS: usize = 4;

/// The permission a caller needs: `get` on the non-resource URL `/metrics`.
pub const PATH: &str = "/metrics";
pub const VERB: &str = "get";

/// The answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated, and allowed to `get` /metrics.
    Allowed { user: String },
    /// No bearer token, or the apiserver does not recognise it: 401.
    Unauthenticated { reason: String },
    /// Authenticated, but not allowed: 403.
    Forbidden { user: String, reason: String },
    /// The apiserver could not be asked: 503, the caller may retry.
    Unavailable { reason: String },
}

impl Verdict {
    /// How long the verdict may be reused; `None`: not at all.
    fn ttl(&self) -> Option<Duration> {
        match self {
            Verdict::Allowed { .. } => Some(ALLOWED_TTL),
            Verdict::Unauthenticated { .. } | Verdict::Forbidden { .. } => Some(REFUSED_TTL),
            Verdict::Unavailable { .. } => None,
        }
    }
}

/// Authenticates and authorizes callers of `/metrics` through the apiserver.
pub struct Gate {
    /// The controller's own client: its ServiceAccount needs `create` on `tokenreviews` and
    /// `subjectaccessreviews` (the chart's `<fullname>-metrics-auth` ClusterRole).
    client: kube::Client,
    cache: Mutex<Cache>,
    reviews: tokio::sync::Semaphore,
}

impl Gate {
    pub fn new(client: kube::Client) -> Gate {
        Gate { client, cache: Mutex::new(Cache::new(CACHE_CAPACITY)), reviews: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS) }
    }

    /// The verdict for a request carrying `authorization` (the header's value, if any).
    pub async fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Verdict::Unauthenticated { reason: "no bearer token".into() };
        };
        let key = Digest::of(token);
        if let Some(verdict) = self.cache().get(&key, Instant::now()) {
            return verdict;
        }
        let verdict = {
            // Never closed: acquiring fails only after `close()`.
            let _permit = self.reviews.acquire().await;
            // A caller with the same token may have been reviewed while this one waited.
            if let Some(verdict) = self.cache().get(&key, Instant::now()) {
                return verdict;
            }
            match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(e)) => Verdict::Unavailable { reason: e.to_string() },
                Err(_) => Verdict::Unavailable { reason: format!("no answer from the apiserver within {REVIEW_TIMEOUT:?}") },
            }
        };
        self.cache().insert(key, verdict.clone(), Instant::now());
        verdict
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn review(&self, token: &str) -> Result<Verdict, ReviewError> {
        let review = TokenReview { spec: TokenReviewSpec { token: token.to_string(), audiences: None }, ..Default::default() };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError { what: "TokenReview", source })?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                let reason = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "the token is not valid".into());
                return Ok(Verdict::Unauthenticated { reason });
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview { spec: access_spec(user), ..Default::default() };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(|source| ReviewError { what: "SubjectAccessReview", source })?;
        let status = reviewed.status.unwrap_or_default();
        Ok(if status.allowed {
            Verdict::Allowed { user: name }
        } else {
            let reason = status.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "no RBAC rule allows it".into());
            Verdict::Forbidden { user: name, reason }
        })
    }
}

/// A review call that failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot check the caller: the {what} failed: {source}; the controller's ServiceAccount needs `create` on tokenreviews and subjectaccessreviews"
)]
struct ReviewError {
    what: &'static str,
    source: kube::Error,
}

/// The question for the authorizer: may this user `get` /metrics?
fn access_spec(user: UserInfo) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: user.username,
        groups: user.groups,
        uid: user.uid,
        extra: user.extra,
        non_resource_attributes: Some(NonResourceAttributes { path: Some(PATH.into()), verb: Some(VERB.into()) }),
        resource_attributes: None,
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// SHA-256 of a token: the cache holds no token itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Digest([u8; 32]);

impl Digest {
    fn of(token: &str) -> Digest {
        let mut d = [0; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        Digest(d)
    }
}

/// Verdicts by token digest, each until it expires; at most `capacity` of them.
struct Cache {
    entries: HashMap<Digest, (Verdict, Instant)>,
    capacity: usize,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache { entries: HashMap::new(), capacity }
    }

    /// The cached verdict for `key` if it has not expired at `now`.
    fn get(&mut self, key: &Digest, now: Instant) -> Option<Verdict> {
        match self.entries.get(key) {
            Some((verdict, expires)) if now < *expires => Some(verdict.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `verdict` for its time to live from `now`; a full cache first drops what has
    /// expired, then the entry that would expire first.
    fn insert(&mut self, key: Digest, verdict: Verdict, now: Instant) {
        let Some(ttl) = verdict.ttl() else { return };
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.capacity
                && let Some(first) = self.entries.iter().min_by_key(|(_, (_, expires))| *expires).map(|(k, _)| *k)
            {
                self.entries.remove(&first);
            }
        }
        self.entries.insert(key, (verdict, now + ttl));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Verdict {
        Verdict::Allowed { user: "system:serviceaccount:monitoring:prometheus".into() }
    }

    #[test]
    fn only_a_bearer_header_with_a_token_gives_a_token() {
        assert_eq!(bearer_token(b"Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        for bad in [&b"Basic dXNlcjpwYXNz"[..], b"Bearer", b"Bearer ", b"abc", b"Bearer \xff"] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_allowed_caller_is_cached_for_two_minutes_and_a_refused_one_for_thirty_seconds() {
        let mut cache = Cache::new(8);
        let t0 = Instant::now();
        let (a, b) = (Digest::of("a"), Digest::of("b"));
        cache.insert(a, allowed(), t0);
        let forbidden = Verdict::Forbidden { user: "u".into(), reason: "no".into() };
        cache.insert(b, forbidden.clone(), t0);
        assert_eq!(cache.get(&a, t0 + ALLOWED_TTL - Duration::from_millis(1)), Some(allowed()));
        assert_eq!(cache.get(&b, t0 + REFUSED_TTL - Duration::from_millis(1)), Some(forbidden));
        assert_eq!(cache.get(&b, t0 + REFUSED_TTL), None);
        assert_eq!(cache.get(&a, t0 + ALLOWED_TTL), None);
        assert_eq!(cache.len(), 0, "expired entries are dropped when read");
    }

    #[test]
    fn a_failed_review_is_never_cached() {
        let mut cache = Cache::new(8);
        let now = Instant::now();
        cache.insert(Digest::of("a"), Verdict::Unavailable { reason: "down".into() }, now);
        assert_eq!(cache.get(&Digest::of("a"), now), None);
    }

    #[test]
    fn a_full_cache_drops_the_expired_then_the_soonest_to_expire() {
        let mut cache = Cache::new(2);
        let t0 = Instant::now();
        let refused = Verdict::Unauthenticated { reason: "bad".into() };
        cache.insert(Digest::of("refused"), refused, t0);
        cache.insert(Digest::of("allowed"), allowed(), t0);
        cache.insert(Digest::of("new"), allowed(), t0 + Duration::from_secs(1));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&Digest::of("refused"), t0), None, "the soonest to expire went");
        assert!(cache.get(&Digest::of("allowed"), t0).is_some() && cache.get(&Digest::of("new"), t0).is_some());
        // Past the first two's expiry, a newcomer replaces expired entries, not the live one.
        let later = t0 + ALLOWED_TTL + Duration::from_millis(500);
        cache.insert(Digest::of("newer"), allowed(), later);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&Digest::of("new"), later).is_some() && cache.get(&Digest::of("newer"), later).is_some());
    }

    #[test]
    fn the_access_review_asks_for_get_on_metrics_as_the_reviewed_user() {
        let user = UserInfo {
            username: Some("system:serviceaccount:monitoring:prometheus".into()),
            uid: Some("42".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            extra: None,
        };
        let spec = access_spec(user);
        assert_eq!(spec.user.as_deref(), Some("system:serviceaccount:monitoring:prometheus"));
        assert_eq!(spec.groups, Some(vec!["system:serviceaccounts".to_string()]));
        let attrs = spec.non_resource_attributes.unwrap();
        assert_eq!((attrs.path.as_deref(), attrs.verb.as_deref()), (Some("/metrics"), Some("get")));
    }
}
