//! What only the controller can judge about LeaderLocks (docs/contract.md §2), pure: which lock
//! of which LeaderLock gets which etcd prefix when names or prefixes collide in a namespace (the
//! older LeaderLock keeps it), and whether a selector can be evaluated. Which `etcdKey`s are
//! allowed at all is [`crate::keyspace`]'s judgement, passed in as `prefix_of`.
//! Rejections become `Ready=False` conditions with a reason users can match on.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use kube::core::Selector;

use crate::resource::{LeaderLock, LockSpec, reasons};

/// How one lock of a LeaderLock resolved: its etcd prefix, or why it is rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Accepted(String),
    Rejected { reason: &'static str, message: String },
}

fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (format!("{a}/"), format!("{b}/"));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Which of two LeaderLocks keeps a contested lock name or prefix: the older one. Creation times
/// have one-second granularity, so within the same second the one established on that lock wins
/// (a newcomer never takes a lock away), then the name decides. Established: its status reports
/// a holder of the lock (survives restarts), or `claimed` says this process last accepted the
/// lock for it (the status lags the reconcile that wrote it, and a reconcile may read an older
/// copy).
fn seniority(ll: &LeaderLock, lock: &str, claimed: &impl Fn(&LeaderLock, &str) -> bool) -> (Option<jiff::Timestamp>, bool, String, String) {
    let holds = ll.status.as_ref().is_some_and(|s| s.locks.iter().any(|l| l.name == lock && l.holder.is_some())) || claimed(ll, lock);
    (ll.metadata.creation_timestamp.clone().map(|t| t.0), !holds, ll.namespace().unwrap_or_default(), ll.name_any())
}

/// Resolves every lock of every LeaderLock in one namespace, most senior claim first, so the
/// senior LeaderLock keeps a contested lock name or etcd prefix. `foreign` are LeaderLocks of
/// other namespaces with `etcdKey` overrides: their prefixes are contested too (names are not).
/// Pure: `prefix_of(namespace, lock)` maps a lock to its etcd prefix or a rejection (e.g. an
/// etcdKey outside the allowed prefixes); `claimed` see [`seniority`].
pub fn resolve_namespace(
    lls: &[Arc<LeaderLock>],
    foreign: &[Arc<LeaderLock>],
    prefix_of: impl Fn(&str, &LockSpec) -> Result<String, String>,
    claimed: impl Fn(&LeaderLock, &str) -> bool,
) -> BTreeMap<String, Vec<(String, Resolution)>> {
    // One claim per (LeaderLock, lock), in seniority order; ties within a LeaderLock keep spec order.
    let mut claims: Vec<(&Arc<LeaderLock>, bool, usize, Cow<LockSpec>)> = Vec::new();
    for (ll, local) in lls.iter().map(|l| (l, true)).chain(foreign.iter().map(|l| (l, false))) {
        let specs: Vec<Cow<LockSpec>> = match ll.spec.lock_specs() {
            Cow::Borrowed(specs) => specs.iter().map(Cow::Borrowed).collect(),
            Cow::Owned(specs) => specs.into_iter().map(Cow::Owned).collect(),
        };
        let locks = specs.into_iter().enumerate().filter(|(_, l)| local || l.etcd_key.is_some());
        claims.extend(locks.map(|(i, lock)| (ll, local, i, lock)));
    }
    claims.sort_by_cached_key(|(ll, _, i, lock)| (seniority(ll, &lock.name, &claimed), *i));
    let mut names: HashMap<String, String> = HashMap::new();
    let mut taken: Vec<(String, String)> = Vec::new(); // (prefix, owner)
    let mut out: BTreeMap<String, Vec<(usize, String, Resolution)>> = BTreeMap::new();
    for (ll, local, i, lock) in claims {
        let ns = ll.namespace().unwrap_or_default();
        let me = if local { ll.name_any() } else { format!("{ns}/{}", ll.name_any()) };
        let resolution = match prefix_of(&ns, &lock) {
            Err(message) => Resolution::Rejected { reason: reasons::ETCD_KEY_NOT_ALLOWED, message },
            Ok(prefix) => {
                if let Some(owner) = names.get(lock.name.as_str()).filter(|_| local) {
                    Resolution::Rejected {
                        reason: reasons::LOCK_NAME_CONFLICT,
                        message: format!(
                            "lock {:?} is already used by LeaderLock {owner:?} in this namespace (the older one keeps it); rename this lock",
                            lock.name
                        ),
                    }
                } else if let Some((p, owner)) = taken.iter().find(|(p, _)| overlaps(p, &prefix)) {
                    Resolution::Rejected {
                        reason: reasons::LOCK_NAME_CONFLICT,
                        message: format!(
                            "lock {:?} uses etcd prefix {prefix}, which overlaps {p} of LeaderLock {owner:?}; choose another etcdKey",
                            lock.name
                        ),
                    }
                } else {
                    Resolution::Accepted(prefix)
                }
            }
        };
        if let Resolution::Accepted(p) = &resolution {
            if local {
                names.insert(lock.name.clone(), me.clone());
            }
            taken.push((p.clone(), me.clone()));
        }
        if local {
            out.entry(me).or_default().push((i, lock.name.clone(), resolution));
        }
    }
    let spec_order = |mut v: Vec<(usize, String, Resolution)>| {
        v.sort_by_key(|(i, _, _)| *i);
        v.into_iter().map(|(_, n, r)| (n, r)).collect()
    };
    out.into_iter().map(|(ll, v)| (ll, spec_order(v))).collect()
}

/// Why a selector cannot be evaluated, naming the offending expression (the schema cannot
/// judge operators: LabelSelector's schema is Kubernetes' own).
pub fn selector_problem(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Option<String> {
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Some(format!("spec.selector.matchExpressions[{i}] (key {:?}): operator {} needs values", e.key, e.operator));
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Some(format!("spec.selector.matchExpressions[{i}] (key {:?}): operator {} takes no values", e.key, e.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Some(format!(
                    "spec.selector.matchExpressions[{i}].operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        }
    }
    Selector::try_from(sel.clone()).err().map(|e| format!("spec.selector is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, SpecBuilder};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn ll(name: &str, age_secs: i64, locks: &[(&str, Option<&str>)]) -> Arc<LeaderLock> {
        Arc::new(fixtures::named(name, age_secs, fixtures::spec().locks(locks)))
    }

    fn prefix_of(_ns: &str, lock: &LockSpec) -> Result<String, String> {
        match &lock.etcd_key {
            Some(k) if !k.starts_with("/legacy/") => Err(format!("{k} not allowed")),
            Some(k) => Ok(k.clone()),
            None => Ok(format!("/ll/locks/ns/{}", lock.name)),
        }
    }

    #[test]
    fn the_older_leaderlock_keeps_a_contested_lock_name() {
        let r =
            resolve_namespace(&[ll("newer", 10, &[("a", None), ("b", None)]), ll("older", 0, &[("a", None)])], &[], prefix_of, |_, _| {
                false
            });
        assert_eq!(r["older"], vec![("a".into(), Resolution::Accepted("/ll/locks/ns/a".into()))]);
        assert!(
            matches!(&r["newer"][0].1, Resolution::Rejected { reason, message } if *reason == reasons::LOCK_NAME_CONFLICT && message.contains("\"older\""))
        );
        assert_eq!(r["newer"][1].1, Resolution::Accepted("/ll/locks/ns/b".into()));
    }

    #[test]
    fn overlapping_etcd_keys_conflict_and_disallowed_keys_are_rejected() {
        let r = resolve_namespace(
            &[ll("x", 0, &[("a", Some("/legacy/x"))]), ll("y", 1, &[("b", Some("/legacy/x/y")), ("c", Some("/etc/passwd"))])],
            &[],
            prefix_of,
            |_, _| false,
        );
        assert!(matches!(&r["y"][0].1, Resolution::Rejected { reason, .. } if *reason == reasons::LOCK_NAME_CONFLICT));
        assert!(matches!(&r["y"][1].1, Resolution::Rejected { reason, .. } if *reason == reasons::ETCD_KEY_NOT_ALLOWED));
    }

    #[test]
    fn sibling_prefixes_do_not_overlap() {
        assert!(!overlaps("/ll/locks/ns/a", "/ll/locks/ns/ab"));
        assert!(overlaps("/legacy/x", "/legacy/x/y"));
    }

    #[test]
    fn selector_problems_name_the_expression() {
        let sel = |op: &str, values: Option<Vec<String>>| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement { key: "app".into(), operator: op.into(), values }]),
            ..Default::default()
        };
        assert!(selector_problem(&sel("Near", None)).unwrap().contains("\"Near\" is not one of"));
        assert!(selector_problem(&sel("In", None)).unwrap().contains("needs values"));
        assert!(selector_problem(&sel("Exists", Some(vec!["x".into()]))).unwrap().contains("takes no values"));
        assert_eq!(selector_problem(&sel("In", Some(vec!["x".into()]))), None);
    }

    fn with_holder(ll: Arc<LeaderLock>) -> Arc<LeaderLock> {
        let mut l = (*ll).clone();
        l.status = Some(crate::resource::LeaderLockStatus {
            locks: vec![crate::resource::LockStatus { name: "a".into(), holder: Some("pod".into()), ..Default::default() }],
            ..Default::default()
        });
        Arc::new(l)
    }

    #[test]
    fn within_the_same_second_the_leaderlock_already_holding_keeps_the_name() {
        // "aa" sorts first by name, but "zz" was reconciled first and holds the lock.
        let r = resolve_namespace(&[ll("aa", 0, &[("a", None)]), with_holder(ll("zz", 0, &[("a", None)]))], &[], prefix_of, |_, _| false);
        assert_eq!(r["zz"][0].1, Resolution::Accepted("/ll/locks/ns/a".into()));
        assert!(matches!(&r["aa"][0].1, Resolution::Rejected { reason, .. } if *reason == reasons::LOCK_NAME_CONFLICT));
    }

    #[test]
    fn within_the_same_second_the_leaderlock_this_process_accepted_keeps_the_name() {
        let r = resolve_namespace(&[ll("aa", 0, &[("a", None)]), ll("zz", 0, &[("a", None)])], &[], prefix_of, |l, _| l.name_any() == "zz");
        assert_eq!(r["zz"][0].1, Resolution::Accepted("/ll/locks/ns/a".into()));
        // Not across seconds: the older one keeps it whatever was claimed.
        let r = resolve_namespace(&[ll("aa", 0, &[("a", None)]), ll("zz", 1, &[("a", None)])], &[], prefix_of, |l, _| l.name_any() == "zz");
        assert_eq!(r["aa"][0].1, Resolution::Accepted("/ll/locks/ns/a".into()));
    }

    #[test]
    fn establishment_on_one_lock_does_not_win_another() {
        // Same second; zz holds "a", aa holds "b" and also wants "a": zz keeps "a".
        let mut aa = (*ll("aa", 0, &[("b", None), ("a", None)])).clone();
        aa.status = Some(crate::resource::LeaderLockStatus {
            locks: vec![crate::resource::LockStatus { name: "b".into(), holder: Some("pod".into()), ..Default::default() }],
            ..Default::default()
        });
        let r = resolve_namespace(&[Arc::new(aa), with_holder(ll("zz", 0, &[("a", None)]))], &[], prefix_of, |_, _| false);
        assert_eq!(r["zz"][0].1, Resolution::Accepted("/ll/locks/ns/a".into()));
        assert_eq!(r["aa"][0].1, Resolution::Accepted("/ll/locks/ns/b".into()));
        assert!(matches!(&r["aa"][1].1, Resolution::Rejected { .. }), "results stay in spec order");
    }

    #[test]
    fn an_older_leaderlock_of_another_namespace_keeps_a_shared_etcd_key() {
        let mut theirs = (*ll("theirs", 0, &[("x", Some("/legacy/shared"))])).clone();
        theirs.metadata.namespace = Some("other".into());
        let r = resolve_namespace(&[ll("mine", 5, &[("y", Some("/legacy/shared"))])], &[Arc::new(theirs)], prefix_of, |_, _| false);
        assert!(matches!(&r["mine"][0].1, Resolution::Rejected { message, .. } if message.contains("other/theirs")));
        assert_eq!(r.len(), 1, "only this namespace's LeaderLocks are reported");
    }
}
