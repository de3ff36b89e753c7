//! Unit and property tests of the index: apply objects, assert the exact view that comes out.
use super::*;
use crate::fixtures::{self, SpecBuilder};
use crate::lock::LockKey;
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

fn prefix_of(ns: &str, l: &LockSpec) -> Result<String, String> {
    match &l.etcd_key {
        Some(k) if k.starts_with("/shared/") => Ok(k.clone()),
        Some(k) => Err(format!("{k} is not allowed")),
        None => Ok(format!("/ll/locks/{ns}/{}", l.name)),
    }
}

fn ll(ns: &str, name: &str, age: i64, app: &str, locks: &[(&str, Option<&str>)]) -> LeaderLock {
    let mut l = fixtures::named(name, age, fixtures::spec().selecting(app).locks(locks));
    l.metadata.namespace = Some(ns.into());
    l
}

fn pod(ns: &str, name: &str, app: &str, keys: &[&str]) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some(ns.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
    p.metadata.annotations = Some(keys.iter().map(|k| (k.to_string(), "standby".to_string())).collect());
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }]),
        ..Default::default()
    });
    p
}

/// An index and the store it shares LeaderLocks with, fed as the controller feeds them.
struct Fixture {
    idx: Index,
    writer: kube::runtime::reflector::store::Writer<LeaderLock>,
}

impl Fixture {
    fn ll_event(&mut self, ev: watcher::Event<LeaderLock>) -> Vec<ObjectRef<LeaderLock>> {
        self.writer.apply_watcher_event(&ev);
        self.idx.on_leaderlock_event(&ev)
    }
}

impl std::ops::Deref for Fixture {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.idx
    }
}

fn index(lls: &[LeaderLock], pods: &[Pod]) -> Fixture {
    let (reader, writer) = kube::runtime::reflector::store();
    let mut f = Fixture { idx: Index::new(prefix_of, reader), writer };
    for l in lls {
        f.ll_event(watcher::Event::Apply(l.clone()));
    }
    for p in pods {
        f.idx.on_pod_event(&watcher::Event::Apply(p.clone()));
    }
    f
}

#[test]
fn leaderlocks_are_shared_with_the_store_not_copied() {
    let idx = index(&[ll("a", "web", 0, "web", &[("w", None)])], &[]);
    let stored = idx.stored.state().pop().unwrap();
    assert!(Arc::ptr_eq(&idx.read().lls.by_key[&("a".to_string(), "web".to_string())].ll, &stored));
}

fn names(refs: Vec<ObjectRef<LeaderLock>>) -> Vec<String> {
    let mut v: Vec<String> = refs.into_iter().map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name)).collect();
    v.sort();
    v
}

#[test]
fn a_pod_concerns_the_leaderlocks_selecting_it_and_those_whose_keys_it_carries() {
    let idx = index(
        &[ll("a", "web", 0, "web", &[("w", None)]), ll("a", "db", 0, "db", &[("d", None)]), ll("b", "web", 0, "web", &[("w", None)])],
        &[],
    );
    let applied = |p: Pod| names(idx.on_pod_event(&watcher::Event::Apply(p)));
    assert_eq!(applied(pod("a", "p", "web", &[])), ["a/web"]);
    // Relabelled away from db, still carrying db's lock key: db must remove it.
    assert_eq!(applied(pod("a", "p", "web", &["leaderlock.dev/d.token"])), ["a/db", "a/web"]);
    assert_eq!(applied(pod("c", "p", "web", &[])), Vec::<String>::new());
    // A relabelled pod concerns the LeaderLock it leaves too.
    assert_eq!(applied(pod("c", "p", "db", &[])), Vec::<String>::new());
    assert_eq!(applied(pod("a", "p", "db", &[])), ["a/db", "a/web"]);
    assert_eq!(names(idx.on_pod_event(&watcher::Event::Delete(pod("a", "p", "db", &[])))), ["a/db"]);
}

#[test]
fn a_view_holds_the_selected_pods_and_the_leaderlocks_sharing_them() {
    let web = Arc::new(ll("a", "web", 0, "web", &[("w", None)]));
    let mut both = ll("a", "both", 1, "", &[("b", None)]);
    both.spec.selector = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement { key: "app".into(), operator: "Exists".into(), values: None }]),
        ..Default::default()
    };
    let idx =
        index(&[(*web).clone(), both, ll("a", "db", 2, "db", &[("d", None)])], &[pod("a", "w1", "web", &[]), pod("a", "d1", "db", &[])]);
    let v = idx.view(&web);
    assert_eq!(v.pods.keys().collect::<Vec<_>>(), ["w1"]);
    assert_eq!(v.selecting["w1"], ["both", "web"]);
    assert_eq!(v.candidates("web").len(), 1);
    let holder =
        |p: &str| (p == "/ll/locks/a/w").then(|| LockKey { key: format!("{p}/1"), token: 7, owner: Some("uid-w1".into()), name: None });
    let roles = v.roles_for(&v.pods["w1"], holder);
    assert_eq!(
        roles.iter().map(|r| (r.lock.as_str(), r.leader.clone())).collect::<Vec<_>>(),
        [("b", None), ("w", Some(("w1".to_string(), 7)))]
    );
    assert!(!v.leaderlocks.contains_key("db"), "db selects none of web's pods");
}

#[test]
fn views_resolve_conflicts_like_the_whole_namespace_would() {
    let older = ll("a", "older", 0, "x", &[("shared", None)]);
    let newer = Arc::new(ll("a", "newer", 5, "y", &[("shared", None), ("own", None)]));
    let mut idx = index(&[older.clone(), (*newer).clone()], &[]);
    let v = idx.view(&newer);
    assert!(matches!(&v.resolved["newer"][0].1, Resolution::Rejected { .. }));
    assert_eq!(v.resolved["newer"][1].1, Resolution::Accepted("/ll/locks/a/own".into()));
    assert_eq!(names(refs(idx.contenders(&idx.read().lls, &newer))), ["a/older"]);
    // Deleted: the name goes to the newer one.
    assert_eq!(names(idx.ll_event(watcher::Event::Delete(older))), ["a/newer"], "its contenders are reconciled");
    assert_eq!(idx.view(&newer).resolved["newer"][0].1, Resolution::Accepted("/ll/locks/a/shared".into()));
}

#[test]
fn etcd_key_overlaps_reach_across_namespaces_and_chains_resolve_in_order() {
    // x (oldest) claims /shared/p/x; y claims /shared/p (overlaps x: rejected); z claims
    // /shared/p/z: overlaps only the rejected y, so it is accepted.
    let x = ll("one", "x", 0, "x", &[("l", Some("/shared/p/x"))]);
    let y = ll("two", "y", 1, "y", &[("l", Some("/shared/p"))]);
    let z = Arc::new(ll("three", "z", 2, "z", &[("l", Some("/shared/p/z"))]));
    let idx = index(&[x, y, (*z).clone()], &[]);
    assert_eq!(idx.view(&z).resolved["z"][0].1, Resolution::Accepted("/shared/p/z".into()));
    let y = Arc::new(ll("two", "y", 1, "y", &[("l", Some("/shared/p"))]));
    assert!(matches!(&idx.view(&y).resolved["y"][0].1, Resolution::Rejected { message, .. } if message.contains("one/x")));
    assert_eq!(names(idx.leaderlocks_with_prefix("/shared/p")), ["two/y"]);
}

fn reporting(mut l: LeaderLock, locks: &[&str]) -> LeaderLock {
    let locks = locks.iter().map(|n| crate::resource::LockStatus { name: n.to_string(), ..Default::default() }).collect();
    l.status = Some(crate::resource::LeaderLockStatus { locks, ..Default::default() });
    l.metadata.uid = Some(format!("uid-{}", l.name_any()));
    l
}

#[test]
fn a_lock_no_longer_in_the_spec_is_released_at_the_prefix_it_held_unless_another_lock_covers_it() {
    let before = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None), ("x", Some("/shared/x")), ("y", None)]), &[]));
    let mut idx = index(&[(*before).clone()], &[]);
    let resolved = idx.view(&before).resolved["web"].clone();
    idx.record_claims(&before, &resolved);
    // w stays; x and y are removed, and another LeaderLock now has a lock named y.
    let after = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None)]), &["w", "x", "y"]));
    idx.ll_event(watcher::Event::Apply((*after).clone()));
    idx.ll_event(watcher::Event::Apply(ll("a", "db", 1, "db", &[("y", None)])));
    assert_eq!(idx.view(&after).released, [("x".to_string(), "/shared/x".to_string())]);
    // Claims once the release succeeded: only the status still names x and y; x's prefix
    // is then unknown, its default one holds nothing of ours.
    idx.record_claims(&after, &idx.view(&after).resolved["web"].clone());
    assert_eq!(idx.view(&after).released, [("x".to_string(), "/ll/locks/a/x".to_string())]);
    let settled = Arc::new(reporting(ll("a", "web", 0, "web", &[("w", None)]), &["w"]));
    assert!(idx.view(&settled).released.is_empty(), "nothing more once the status no longer names them");
}

#[test]
fn a_lock_whose_etcd_key_moved_releases_the_old_prefix() {
    let before = Arc::new(reporting(ll("a", "web", 0, "web", &[("x", Some("/shared/old"))]), &["x"]));
    let idx = index(&[(*before).clone()], &[]);
    idx.record_claims(&before, &idx.view(&before).resolved["web"].clone());
    let moved = Arc::new(reporting(ll("a", "web", 0, "web", &[("x", Some("/shared/new"))]), &["x"]));
    assert_eq!(idx.view(&moved).released, [("x".to_string(), "/shared/old".to_string())]);
    assert!(idx.view(&before).released.is_empty(), "nothing while the spec still has it there");
}

#[test]
fn a_relist_replaces_everything_at_once() {
    let mut idx = index(&[ll("a", "gone", 0, "web", &[("w", None)])], &[pod("a", "p", "web", &[])]);
    idx.ll_event(watcher::Event::Init);
    idx.ll_event(watcher::Event::InitApply(ll("a", "new", 0, "web", &[("w", None)])));
    assert_eq!(names(idx.all_leaderlocks()), ["a/gone"], "the old table serves until InitDone");
    assert_eq!(names(idx.ll_event(watcher::Event::InitDone)), ["a/new"]);
    assert_eq!(names(idx.all_leaderlocks()), ["a/new"]);
    assert_eq!(names(idx.on_pod_event(&watcher::Event::Apply(pod("a", "p", "web", &[])))), ["a/new"]);
}

fn versioned<K: kube::Resource>(mut o: K, rv: &str) -> K {
    o.meta_mut().resource_version = Some(rv.into());
    o
}

#[test]
fn a_pod_relist_concerns_the_leaderlocks_of_the_pods_that_changed_appeared_or_vanished() {
    let lls: Vec<LeaderLock> = ["a", "b", "c", "d"].iter().map(|x| ll("ns", x, 0, x, &[(x, None)])).collect();
    let pods = ["a", "b", "c"].map(|x| versioned(pod("ns", &format!("p{x}"), x, &[]), "1"));
    let idx = index(&lls, &pods);
    for ev in [
        watcher::Event::Init,
        watcher::Event::InitApply(versioned(pod("ns", "pa", "a", &[]), "1")), // unchanged
        watcher::Event::InitApply(versioned(pod("ns", "pb", "b", &[]), "2")), // changed
        watcher::Event::InitApply(versioned(pod("ns", "pd", "d", &[]), "3")), // new; pc vanished
    ] {
        assert!(idx.on_pod_event(&ev).is_empty(), "nothing before the relist is complete");
    }
    let c = Arc::new(lls[2].clone());
    assert_eq!(idx.view(&c).pods.keys().collect::<Vec<_>>(), ["pc"], "the old table serves until InitDone");
    assert_eq!(names(idx.on_pod_event(&watcher::Event::InitDone)), ["ns/b", "ns/c", "ns/d"]);
    assert!(idx.view(&c).pods.is_empty());
}

#[test]
fn a_leaderlock_relist_concerns_those_that_changed_or_appeared_and_the_contenders_of_those_that_vanished() {
    let x = versioned(ll("ns", "x", 0, "x", &[("x", None)]), "1");
    let y = versioned(ll("ns", "y", 0, "y", &[("y", None)]), "1");
    let z = versioned(ll("ns", "z", 0, "z", &[("shared", None)]), "1");
    let w = versioned(ll("ns", "w", 5, "w", &[("shared", None)]), "1");
    let mut idx = index(&[x.clone(), y, z, w.clone()], &[]);
    idx.ll_event(watcher::Event::Init);
    for l in [x, versioned(ll("ns", "y", 0, "y", &[("y", None)]), "2"), w, versioned(ll("ns", "v", 9, "v", &[("v", None)]), "3")] {
        assert!(idx.ll_event(watcher::Event::InitApply(l)).is_empty());
    }
    // y changed, v is new, z vanished: w may now hold "shared". x is as it was.
    assert_eq!(names(idx.ll_event(watcher::Event::InitDone)), ["ns/v", "ns/w", "ns/y"]);
}

#[test]
fn updates_and_deletions_leave_no_stale_entries() {
    let mut idx = index(&[ll("a", "l", 0, "web", &[("w", None)])], &[pod("a", "p", "web", &["leaderlock.dev/w"])]);
    idx.ll_event(watcher::Event::Apply(ll("a", "l", 0, "db", &[("d", None)])));
    assert!(idx.leaderlocks_with_prefix("/ll/locks/a/w").is_empty());
    assert_eq!(names(idx.leaderlocks_with_prefix("/ll/locks/a/d")), ["a/l"]);
    idx.on_pod_event(&watcher::Event::Apply(pod("a", "p", "db", &[])));
    let l = Arc::new(ll("a", "l", 0, "db", &[("d", None)]));
    assert_eq!(idx.view(&l).pods.keys().collect::<Vec<_>>(), ["p"]);
    idx.on_pod_event(&watcher::Event::Delete(pod("a", "p", "db", &[])));
    assert!(idx.view(&l).pods.is_empty());
    let inner = idx.read();
    assert!(inner.pods.by_label.0.is_empty() && inner.pods.by_namespace.0.is_empty() && inner.pods.by_lock.0.is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// (namespace, age, locks as (name, etcdKey)) from small alphabets, so that names and
    /// prefixes collide often (including disallowed keys and nested prefixes).
    fn arb_ll() -> impl Strategy<Value = (u8, i64, Vec<(u8, Option<u8>)>)> {
        let key = prop_oneof![Just(None), (0u8..6).prop_map(Some)];
        (0u8..2, 0i64..4, proptest::collection::vec((0u8..4, key), 1..3))
    }

    const KEYS: [&str; 6] = ["/shared/p", "/shared/p/x", "/shared/p/x/y", "/shared/q", "/elsewhere", "/shared/p-x"];

    proptest! {
        #[test]
        fn each_view_resolves_its_leaderlock_as_the_whole_namespace_does(specs in proptest::collection::vec(arb_ll(), 1..12)) {
            let lls: Vec<Arc<LeaderLock>> = specs
                .iter()
                .enumerate()
                .map(|(i, (ns, age, locks))| {
                    let mut locks: Vec<(String, Option<&str>)> = locks.iter().map(|(n, k)| (format!("l{n}"), k.map(|k| KEYS[k as usize]))).collect();
                    locks.sort_by(|a, b| a.0.cmp(&b.0));
                    locks.dedup_by(|a, b| a.0 == b.0);
                    let locks: Vec<(&str, Option<&str>)> = locks.iter().map(|(n, k)| (n.as_str(), *k)).collect();
                    Arc::new(ll(&format!("ns{ns}"), &format!("ll{i}"), *age, "x", &locks))
                })
                .collect();
            let idx = index(&lls.iter().map(|l| (**l).clone()).collect::<Vec<_>>(), &[]);
            for l in &lls {
                let ns = l.namespace().unwrap();
                let (local, foreign): (Vec<_>, Vec<_>) = lls.iter().cloned().partition(|o| o.namespace().unwrap() == ns);
                let foreign: Vec<_> = foreign.into_iter().filter(|o| o.spec.lock_specs().iter().any(|k| k.etcd_key.is_some())).collect();
                let whole = resolve_namespace(&local, &foreign, prefix_of, |_, _| false);
                let view = idx.view(l);
                prop_assert_eq!(&view.resolved[&l.name_any()], &whole[&l.name_any()], "LeaderLock {}/{}", ns, l.name_any());
            }
        }
    }
}
