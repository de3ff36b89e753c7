//! Where LeaderLock's keys live in etcd (docs/contract.md §4), pure: the lock prefixes under the
//! root, the lease records, the replica election's keys, and which `etcdKey` overrides are
//! allowed. The etcd layer only does I/O on what this module names, so the judgement "may the
//! controller touch this key" is unit-tested without an etcd.

/// An `etcdKey` the operator has not allowed. Becomes a `Ready=False` condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "etcdKey {key} is not allowed: use a key under {own} or under an --allowed-key-prefix (now: [{allowed}]); ask the operator to allow its prefix"
)]
pub struct KeyNotAllowed {
    pub key: String,
    /// This namespace's own lock area, `<root>locks/<ns>/`.
    pub own: String,
    /// The allowed prefixes, comma-separated.
    pub allowed: String,
}

/// The root prefix and the prefixes outside it that `etcdKey` overrides may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyspace {
    root: String,
    allowed: Vec<String>,
}

impl Keyspace {
    /// `root` ends in `/` (the `--etcd-prefix` flag checks it); `allowed` are the
    /// `--allowed-key-prefix` values.
    pub fn new(root: impl Into<String>, allowed: Vec<String>) -> Self {
        Keyspace { root: root.into(), allowed }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn allowed_prefixes(&self) -> &[String] {
        &self.allowed
    }

    /// Every prefix the controller reads: the root and the allowed prefixes (the mirror watches
    /// them all; the controller never touches a key anywhere else).
    pub fn watched(&self) -> Vec<String> {
        std::iter::once(self.root.clone()).chain(self.allowed.iter().cloned()).collect()
    }

    /// The record of the controller-owned lease for `ttl` seconds: `<root>leases/<ttl>`.
    pub fn lease_record(&self, ttl: i64) -> String {
        format!("{}leases/{ttl}", self.root)
    }

    /// The directory of every lease record, `<root>leases/`.
    pub fn lease_records(&self) -> String {
        format!("{}leases/", self.root)
    }

    /// The root's registration, `<root>cluster`: the cluster whose controller owns this root,
    /// created once with a guarded create. Another cluster's controller finding it serves nothing.
    pub fn registration(&self) -> String {
        format!("{}cluster", self.root)
    }

    /// The directory of the replica election's keys: `<root>controller/`.
    pub fn election_dir(&self) -> String {
        format!("{}controller/", self.root)
    }

    /// The etcd prefix of lock `lock` of a LeaderLock in `namespace`: `<root>locks/<ns>/<lock>`,
    /// or `etcd_key` when it lies in this namespace's own lock area or under an allowed prefix.
    /// Inside the root nothing else is allowed: not another namespace's locks, not the
    /// controller's own `leases/` and `controller/` keys.
    pub fn lock_prefix(&self, namespace: &str, lock: &str, etcd_key: Option<&str>) -> Result<String, KeyNotAllowed> {
        let own = format!("{}locks/{namespace}/", self.root);
        match etcd_key {
            None => Ok(format!("{own}{lock}")),
            Some(key) if self.allows(&own, key) => Ok(key.to_string()),
            Some(key) => Err(KeyNotAllowed { key: key.to_string(), own, allowed: self.allowed.join(", ") }),
        }
    }

    fn allows(&self, own: &str, key: &str) -> bool {
        let inside = if key.starts_with(self.root.as_str()) {
            key.starts_with(own) && key.len() > own.len()
        } else {
            self.allowed.iter().any(|p| key.starts_with(p.as_str()))
        };
        // No `..` or `.` segment: etcd does not resolve them, but a reader of the key would.
        inside && !key.split('/').any(|seg| seg == ".." || seg == ".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyspace() -> Keyspace {
        Keyspace::new("/ll/", vec!["/legacy/locks/".into()])
    }

    #[test]
    fn a_lock_without_etcd_key_lives_in_its_namespace_area() {
        assert_eq!(keyspace().lock_prefix("shop", "ledger", None), Ok("/ll/locks/shop/ledger".into()));
    }

    #[test]
    fn etcd_keys_in_the_own_area_or_under_an_allowed_prefix_are_accepted() {
        let ks = keyspace();
        assert_eq!(ks.lock_prefix("shop", "a", Some("/legacy/locks/a")), Ok("/legacy/locks/a".into()));
        assert_eq!(ks.lock_prefix("shop", "a", Some("/ll/locks/shop/custom")), Ok("/ll/locks/shop/custom".into()));
    }

    #[test]
    fn etcd_keys_elsewhere_are_refused_with_what_to_do() {
        let ks = keyspace();
        for bad in [
            "/legacy/other",
            "/legacy/locks/../../registry",
            "/legacy/locks/./a",
            "/registry/pods",
            "/ll/locks/other/a",
            "/ll/locks/shop/",
            "/ll/leases/15",
            "/ll/controller/x",
        ] {
            let err = ks.lock_prefix("shop", "a", Some(bad)).expect_err(bad);
            assert_eq!(err.key, bad);
            let message = err.to_string();
            assert!(message.contains("/ll/locks/shop/") && message.contains("[/legacy/locks/]"), "{message}");
            assert!(message.contains("--allowed-key-prefix"), "{message}");
        }
    }

    #[test]
    fn without_allowed_prefixes_only_the_own_area_is_accepted() {
        let ks = Keyspace::new("/ll/", vec![]);
        assert!(ks.lock_prefix("shop", "a", Some("/legacy/locks/a")).is_err());
        assert_eq!(ks.watched(), vec!["/ll/".to_string()]);
    }

    #[test]
    fn the_controllers_own_keys_live_under_the_root() {
        let ks = keyspace();
        assert_eq!(ks.lease_record(15), "/ll/leases/15");
        assert_eq!(ks.election_dir(), "/ll/controller/");
        assert_eq!(ks.lease_records(), "/ll/leases/");
        assert_eq!(ks.registration(), "/ll/cluster");
        assert!(ks.lock_prefix("shop", "a", Some("/ll/cluster")).is_err());
        assert_eq!(ks.watched(), vec!["/ll/".to_string(), "/legacy/locks/".to_string()]);
    }
}
