//! Only the controller writes a pod's role (docs/contract.md §9): the chart's
//! ValidatingAdmissionPolicy, as `helm template` renders it, on the real apiserver. A user with
//! every pod right is refused — annotation and label, create and update, through `kubectl
//! annotate`/`label`, JSON patch, server-side apply and `pods/status` — with the policy's
//! message, while their other edits pass; the break-glass group passes; the controller, running as
//! the chart's ServiceAccount, elects and hands over with the policy on; and with the policy off
//! a forged `leader` is reverted by the controller, in a window this test measures.
//!
//! The control plane is shared by every test binary of a run: the binding is narrowed to the
//! test's namespace (the policy itself is applied as rendered) and both go when the test ends.
mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::chart::render;
use common::checker::Checker;
use common::etcd::EtcdServer;
use common::k8s::*;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

/// The start of every refusal.
const MESSAGE: &str = "leaderlock.dev/ annotations and labels are written only by the LeaderLock controller";
const KEY: &str = "leaderlock.dev/ledger";
/// Someone with pod rights in the namespace, but not the controller.
const MALLORY: [&str; 2] = ["--as=mallory", "--as-group=system:authenticated"];
const BREAK_GLASS: &str = "leaderlock:break-glass";
const T: Duration = Duration::from_secs(30);

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn stream<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    docs.into_iter().map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap())).collect()
}

/// The chart's policy and binding, applied; the binding narrowed to one namespace. Both are
/// deleted on drop.
struct Policy {
    name: String,
}

impl Policy {
    fn install(docs: &[Value], ns: &str) -> Policy {
        let policy = one(docs, "ValidatingAdmissionPolicy");
        let mut binding = one(docs, "ValidatingAdmissionPolicyBinding").clone();
        assert!(binding["spec"]["matchResources"].is_null(), "the chart binds every namespace");
        binding["spec"]["matchResources"] = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}});
        kubectl_ok(&["apply", "-f", "-"], Some(&stream([policy, &binding])));
        Policy { name: policy["metadata"]["name"].as_str().unwrap().to_string() }
    }

    /// Replaces the policy with another rendering of it (same name).
    fn update(&self, docs: &[Value]) {
        let policy = one(docs, "ValidatingAdmissionPolicy");
        assert_eq!(policy["metadata"]["name"], self.name.as_str());
        kubectl_ok(&["apply", "-f", "-"], Some(&stream([policy])));
    }

    fn unbind(&self) {
        kubectl_ok(&["delete", "validatingadmissionpolicybinding", &self.name], None);
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "validatingadmissionpolicybinding", &self.name, "--ignore-not-found"], None);
        let _ = kubectl(&["delete", "validatingadmissionpolicy", &self.name, "--ignore-not-found"], None);
    }
}

/// kube-controller-manager's type checker of admission policies (the test control plane runs
/// only the garbage collector and the namespace controller), killed on drop; its log stays in
/// the temp dir only when the test fails.
struct TypeChecker(std::process::Child, std::path::PathBuf);

impl TypeChecker {
    fn start() -> TypeChecker {
        let path = std::env::temp_dir().join(format!("leaderlock-vap-typecheck-{}.log", std::process::id()));
        let log = std::fs::File::create(&path).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", &format!("{}/kube-controller-manager", env("LEADERLOCK_K8S_BIN_DIR"))])
            .args(["--kubeconfig", &env("KUBECONFIG"), "--controllers", "validatingadmissionpolicy-status-controller"])
            .args(["--leader-elect=false", "--secure-port", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        TypeChecker(child, path)
    }

    /// Waits until the policy's current generation is type-checked; returns the warnings.
    fn warnings(&self, policy: &str) -> Value {
        wait_until(&format!("type checking of {policy}"), T, || {
            let out = kubectl_ok(&["get", "validatingadmissionpolicy", policy, "-o", "json"], None);
            let p: Value = serde_json::from_str(&out).unwrap();
            (p["status"]["observedGeneration"] == p["metadata"]["generation"] && p["status"]["typeChecking"].is_object())
                .then(|| p["status"]["typeChecking"]["expressionWarnings"].clone())
        })
    }
}

impl Drop for TypeChecker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.1);
        }
    }
}

/// kubectl in `ns` as mallory (plus `groups`).
fn as_mallory(ns: &str, groups: &[&str], args: &[&str], stdin: Option<&str>) -> Output {
    let groups: Vec<String> = groups.iter().map(|g| format!("--as-group={g}")).collect();
    let mut all: Vec<&str> = vec!["-n", ns];
    all.extend(MALLORY);
    all.extend(groups.iter().map(String::as_str));
    all.extend(args);
    kubectl(&all, stdin)
}

/// Gives mallory every pod right in `ns`, and waits until the authorizer agrees.
fn grant_mallory(ns: &str) {
    kubectl_ok(
        &["create", "role", "pod-editor", "-n", ns, "--verb=get,list,watch,create,update,patch,delete", "--resource=pods,pods/status"],
        None,
    );
    kubectl_ok(&["create", "rolebinding", "pod-editor", "-n", ns, "--role=pod-editor", "--user=mallory"], None);
    wait_until("mallory's pod rights", T, || {
        let out = kubectl(&["auth", "can-i", "patch", "pods", "-n", ns, "--as=mallory", "--as-group=system:authenticated"], None);
        (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
    });
}

/// Asserts `out` is the policy's refusal naming `key`, and returns its message.
#[track_caller]
fn assert_refused(out: &Output, key: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "admitted, expected a refusal naming {key}: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("Forbidden") && err.contains("ValidatingAdmissionPolicy") && err.contains(MESSAGE), "{err}");
    assert!(err.contains(key), "the refusal names {key}: {err}");
    err
}

#[track_caller]
fn assert_admitted(out: &Output) {
    assert!(out.status.success(), "refused: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits until the policy is enforced in `ns` (or, with `on` false, no longer is): mallory sets
/// `leaderlock.dev/probe` on the pod `probe` to a new value each try until refused (admitted)
/// three times in a row — the apiserver's admission caches follow the policy's objects on their
/// own time, and one answer alone was seen to be followed by the opposite one.
fn wait_enforced(ns: &str, on: bool) {
    let (mut n, mut in_a_row) = (0, 0);
    wait_until(&format!("the policy to be {} in {ns}", if on { "enforced" } else { "lifted" }), T, || {
        n += 1;
        let out = as_mallory(ns, &[], &["annotate", "--overwrite", "pod", "probe", &format!("leaderlock.dev/probe={n}")], None);
        let refused = String::from_utf8_lossy(&out.stderr).contains(MESSAGE);
        assert!(out.status.success() || refused, "{}", String::from_utf8_lossy(&out.stderr));
        in_a_row = if refused == on { in_a_row + 1 } else { 0 };
        (in_a_row >= 3).then_some(())
    });
}

fn pod_yaml(name: &str, annotations: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\n  labels: {{{labels}}}\nspec:\n  containers: [{{name: app, image: busybox:1.36}}]\n"
    )
}

/// Every leaderlock.dev/ annotation and label of a pod.
async fn role_keys(c: &kube::Client, ns: &str, pod: &str) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let p = Api::<Pod>::namespaced(c.clone(), ns).get(pod).await.unwrap();
    let ours = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().filter(|(k, _)| k.starts_with("leaderlock.dev/")).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    (ours(p.annotations()), ours(p.labels()))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_controller_may_add_change_or_remove_role_keys() {
    let ns = namespace("admission-policy");
    let c = client().await;
    let release = format!("adm1-{}", std::process::id());
    // Pods carrying role keys, as the controller leaves them, made before the policy exists.
    let seeded = pod_yaml("w-1", &format!("{KEY}: standby, team: a"), &format!("app: worker, {KEY}: standby"));
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&seeded));
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&pod_yaml("probe", "", "")));
    grant_mallory(&ns);

    let docs = render(&release, &ns, &[]);
    let type_checker = TypeChecker::start();
    let policy = Policy::install(&docs, &ns);
    let warnings = type_checker.warnings(&policy.name);
    assert!(warnings.is_null(), "the apiserver's type checker warns: {warnings}");
    wait_enforced(&ns, true);
    let before = role_keys(&c, &ns, "w-1").await;

    // Updates: add, change, remove; annotation and label; every way of writing.
    let json_patch = r#"[{"op":"replace","path":"/metadata/annotations/leaderlock.dev~1ledger","value":"leader"}]"#;
    let apply = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: w-1\n  annotations: {{{KEY}: leader}}\n");
    let status = format!(r#"{{"metadata":{{"annotations":{{"{KEY}":"leader"}}}}}}"#);
    let forgeries: Vec<(&str, Vec<&str>, Option<&str>, &str)> = vec![
        ("annotate: change", vec!["annotate", "--overwrite", "pod", "w-1", "leaderlock.dev/ledger=leader"], None, KEY),
        ("annotate: add", vec!["annotate", "pod", "w-1", "leaderlock.dev/ledger.token=7"], None, "leaderlock.dev/ledger.token"),
        ("annotate: remove", vec!["annotate", "pod", "w-1", "leaderlock.dev/ledger-"], None, KEY),
        ("JSON patch", vec!["patch", "pod", "w-1", "--type=json", "-p", json_patch], None, KEY),
        (
            "server-side apply",
            vec!["apply", "--server-side", "--force-conflicts", "--field-manager=mallory", "-f", "-"],
            Some(apply.as_str()),
            KEY,
        ),
        ("label: change", vec!["label", "--overwrite", "pod", "w-1", "leaderlock.dev/ledger=leader"], None, KEY),
        ("label: add", vec!["label", "pod", "w-1", "leaderlock.dev/other=leader"], None, "leaderlock.dev/other"),
        ("label: remove", vec!["label", "pod", "w-1", "leaderlock.dev/ledger-"], None, KEY),
        ("pods/status", vec!["patch", "pod", "w-1", "--subresource=status", "--type=merge", "-p", &status], None, KEY),
    ];
    for (what, args, stdin, key) in &forgeries {
        let err = assert_refused(&as_mallory(&ns, &[], args, *stdin), key);
        assert!(err.contains("request a handover"), "{what}: an update's refusal says how to move leadership: {err}");
        if what.starts_with("label") {
            assert!(err.contains("refused label(s)"), "{what}: {err}");
        }
    }
    // Not even system:masters (the admin's certificate) is exempt: admission applies to it.
    assert_refused(&kubectl(&["annotate", "-n", &ns, "--overwrite", "pod", "w-1", "leaderlock.dev/ledger=leader"], None), KEY);
    assert_eq!(role_keys(&c, &ns, "w-1").await, before, "nothing of the forgeries landed");

    // Creates: a pod (as a Deployment's would be) whose template carries a key is refused, with
    // what to do; one without is created.
    for (name, ann, lab) in [("c-ann", format!("{KEY}: leader"), String::new()), ("c-lab", String::new(), format!("{KEY}: leader"))] {
        let err = assert_refused(&as_mallory(&ns, &[], &["create", "-f", "-"], Some(&pod_yaml(name, &ann, &lab))), KEY);
        assert!(err.contains("remove them from the pod template"), "{err}");
    }
    assert_admitted(&as_mallory(&ns, &[], &["create", "-f", "-"], Some(&pod_yaml("plain", "team: a", "app: worker"))));

    // The same user's other edits of a pod carrying role keys pass, whatever the verb.
    assert_admitted(&as_mallory(&ns, &[], &["annotate", "--overwrite", "pod", "w-1", "team=b"], None));
    assert_admitted(&as_mallory(&ns, &[], &["label", "pod", "w-1", "tier=backend"], None));
    assert_admitted(&as_mallory(&ns, &[], &["label", "pod", "w-1", "tier-"], None));
    assert_admitted(&as_mallory(
        &ns,
        &[],
        &["patch", "pod", "w-1", "--type=json", "-p", r#"[{"op":"add","path":"/metadata/annotations/note","value":"x"}]"#],
        None,
    ));
    let other = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: w-1\n  annotations: {owner: mallory}\n";
    assert_admitted(&as_mallory(&ns, &[], &["apply", "--server-side", "--field-manager=mallory", "-f", "-"], Some(other)));
    // As the kubelet writes status: metadata untouched.
    let ready = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
    assert_admitted(&as_mallory(&ns, &[], &["patch", "pod", "w-1", "--subresource=status", "--type=merge", "-p", ready], None));
    assert_eq!(role_keys(&c, &ns, "w-1").await, before);

    // Break-glass: with `admissionPolicy.breakGlassGroup` set, that group's members pass.
    policy.update(&render(&release, &ns, &[&format!("admissionPolicy.breakGlassGroup={BREAK_GLASS}")]));
    assert!(type_checker.warnings(&policy.name).is_null());
    wait_until("the break-glass group to pass", T, || {
        as_mallory(&ns, &[BREAK_GLASS], &["annotate", "pod", "w-1", "leaderlock.dev/ledger-"], None).status.success().then_some(())
    });
    assert_refused(&as_mallory(&ns, &[], &["annotate", "pod", "w-1", "leaderlock.dev/ledger=standby"], None), KEY);
    assert_admitted(&as_mallory(&ns, &[BREAK_GLASS], &["label", "pod", "w-1", "leaderlock.dev/ledger-"], None));
    assert_eq!(role_keys(&c, &ns, "w-1").await, (vec![], vec![]));

    drop(policy);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// The chart's ServiceAccount, ClusterRole and ClusterRoleBinding (named after the release)
/// applied, and a kubeconfig acting as that ServiceAccount through a TokenRequest token.
fn service_account_kubeconfig(ns: &str, docs: &[Value]) -> tempfile::TempPath {
    let rbac: Vec<&Value> =
        docs.iter().filter(|d| matches!(d["kind"].as_str(), Some("ServiceAccount" | "ClusterRole" | "ClusterRoleBinding"))).collect();
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&stream(rbac)));
    let sa = one(docs, "ServiceAccount")["metadata"]["name"].as_str().unwrap();
    service_account_kubeconfig_for(ns, sa)
}

/// Forges `leader` (annotation and label, one merge patch) on `pod` and returns how long each
/// survives: from sending the patch to seeing the controller's revert on a watch opened before it.
async fn forge_and_time(c: &kube::Client, ns: &str, pod: &str) -> (Duration, Duration) {
    let api = Api::<Pod>::namespaced(c.clone(), ns);
    let rv = api.get(pod).await.unwrap().resource_version().unwrap();
    let mut events = api.watch(&WatchParams::default().fields(&format!("metadata.name={pod}")), &rv).await.unwrap().boxed();
    let forged = json!({"metadata": {"annotations": {KEY: "leader"}, "labels": {KEY: "leader"}}});
    // The apiserver's admission caches learn of the deleted binding on their own time: a forgery
    // may still be refused for a moment after a probe got through. Retried until admitted.
    let sent = eventually("the forgery to be admitted with the policy off", T, || async {
        let sent = Instant::now();
        match api.patch(pod, &PatchParams::default(), &Patch::Merge(&forged)).await {
            Ok(_) => Some(sent),
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(MESSAGE) => None,
            Err(e) => panic!("forging leader on {pod}: {e}"),
        }
    })
    .await;
    let (mut annotation, mut label, mut seen) = (None, None, false);
    while annotation.is_none() || label.is_none() {
        let event = tokio::time::timeout(T, events.next()).await.expect("a revert within 30 s").expect("the watch to go on");
        let WatchEvent::Modified(p) = event.unwrap() else { continue };
        let is_leader = |m: &std::collections::BTreeMap<String, String>| m.get(KEY).map(String::as_str) == Some("leader");
        let (a, l) = (is_leader(p.annotations()), is_leader(p.labels()));
        seen |= a && l;
        if !seen {
            continue; // a write from before the forgery
        }
        if annotation.is_none() && !a {
            annotation = Some(sent.elapsed());
        }
        if label.is_none() && !l {
            label = Some(sent.elapsed());
        }
    }
    (annotation.unwrap(), label.unwrap())
}

fn summary(what: &str, mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("{what}: n={} min={:.0} ms p50={:.0} ms max={:.0} ms", d.len(), ms(d[0]), ms(d[d.len() / 2]), ms(d[d.len() - 1]))
}

const LL: &str = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n  podLabels: true\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_elects_with_the_policy_on_and_reverts_forgeries_without_it() {
    install_crd();
    let etcd = EtcdServer::start();
    let ns = namespace("admission-controller");
    let c = client().await;
    let release = format!("adm2-{}", std::process::id());
    let docs = render(&release, &ns, &[]);
    let kubeconfig = service_account_kubeconfig(&ns, &docs);
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&pod_yaml("probe", "", "")));
    grant_mallory(&ns);
    let policy = Policy::install(&docs, &ns);
    wait_enforced(&ns, true);

    // With the policy on, the controller (the chart's ServiceAccount) elects, and hands over.
    let checker = Checker::start(c.clone(), &ns, &etcd.endpoint(), ROOT, &[]).await;
    let ctl = ControllerProcess::start_with_env(&["--etcd-endpoints", &etcd.endpoint()], &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    ready_pods(&c, &ns, &["w-1", "w-2", "w-3"], &[("app", "worker")]).await;
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(LL));
    let (holder, token) = elected(&c, &ns, "payments", "ledger", 3).await;
    let standby = ["w-1", "w-2", "w-3"].into_iter().find(|p| *p != holder).unwrap();
    assert_eq!(role_keys(&c, &ns, &holder).await.1, [(KEY.to_string(), "leader".to_string())], "podLabels: the label too");
    assert_refused(&as_mallory(&ns, &[], &["annotate", "--overwrite", "pod", standby, "leaderlock.dev/ledger=leader"], None), KEY);
    assert_refused(&as_mallory(&ns, &[], &["label", "--overwrite", "pod", standby, "leaderlock.dev/ledger=leader"], None), KEY);
    delete_pod(&c, &ns, &holder).await;
    let (next, next_token) = elected(&c, &ns, "payments", "ledger", 2).await;
    assert!(next != holder && next_token > token);
    let standby = ["w-1", "w-2", "w-3"].into_iter().find(|p| *p != holder && *p != next).unwrap();
    checker.assert_clean();
    // The forgeries below make two `leader` pods for a moment, which the checker would flag.
    drop(checker);

    // With the policy off, the controller's revert is the fallback: measure how long a forged
    // `leader` survives on a standby.
    policy.unbind();
    wait_enforced(&ns, false);
    let (mut annotations, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (a, l) = forge_and_time(&c, &ns, standby).await;
        annotations.push(a);
        labels.push(l);
        assert_eq!(elected(&c, &ns, "payments", "ledger", 2).await, (next.clone(), next_token), "the forgery moved nothing");
    }
    let report = format!(
        "forged leader on a standby, policy off, until the controller's revert is seen:\n  {}\n  {}",
        summary("annotation", annotations.clone()),
        summary("label", labels.clone())
    );
    println!("{report}");
    assert!(annotations.iter().chain(&labels).all(|d| *d < Duration::from_secs(5)), "{report}");
    ctl.assert_no_panic();

    drop(policy);
    let _ = kubectl(&["delete", "clusterrolebinding,clusterrole", "-l", &format!("app.kubernetes.io/instance={release}")], None);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
