//! The Helm chart `charts/leaderlock` (docs/contract.md §5): it lints clean, renders least-privilege RBAC,
//! a hardened Deployment wired to etcd (TLS Secret, auth Secret, allowed prefixes) and its
//! optional extras, secure metrics (the review and reader roles, an HTTPS ServiceMonitor) and the
//! admission policy that keeps role keys to the controller, ships the
//! checked-in CRD, and what it renders is accepted by the real apiserver (`kubectl apply
//! --dry-run=server`, `helm install --dry-run=server`).
//!
//! helm is the pinned build from `tests/cluster/helm`, found through `LEADERLOCK_HELM_BIN_DIR`
//! (set by `hack/cluster.sh run`).
mod common;
use common::*;

use std::process::{Command, Output};

use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/leaderlock");
const CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/leaderlock.dev_leaderlocks.yaml");
const CHART_CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/leaderlock/crds/leaderlock.dev_leaderlocks.yaml");

/// Every optional feature switched on: etcd TLS and auth Secrets, allowed prefixes, extras.
const FULL: &[&str] = &[
    "etcd.endpoints={https://etcd-0.etcd:2379,https://etcd-1.etcd:2379}",
    "etcd.tls.secretName=etcd-client-tls",
    "etcd.auth.secretName=etcd-auth",
    "etcd.allowedKeyPrefixes={/legacy/locks/,/team-a/}",
    "metrics.serviceMonitor.enabled=true",
    "metrics.tls.secretName=metrics-tls",
    "metrics.reader.subjects[0].kind=ServiceAccount",
    "metrics.reader.subjects[0].name=prometheus-k8s",
    "metrics.reader.subjects[0].namespace=monitoring",
    "networkPolicy.enabled=true",
    "log.format=json",
    "controller.maxConcurrentReconciles=32",
    "controller.resyncAfter=0",
    "controller.nodeLostAfter=11s",
];

/// Runs the pinned helm with its state dirs in a temp dir (it must not need or touch $HOME).
fn helm(args: &[&str]) -> Output {
    let bin = format!("{}/helm", env("LEADERLOCK_HELM_BIN_DIR"));
    let home = tempfile::tempdir().unwrap();
    Command::new(&bin)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"))
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` with `--set` values; returns the rendered text and its non-empty documents.
fn render(namespace: &str, sets: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["template", "ll", CHART, "--namespace", namespace];
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = helm_ok(&args);
    // Empty documents (a template switched off) are skipped.
    let docs = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{text}"));
    (text, docs)
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, rendered kinds: {:?}", kinds(docs));
    found[0]
}

/// The one document of `kind` named `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}, rendered kinds: {:?}", kinds(docs));
    found[0]
}

fn yaml(s: &str) -> Value {
    serde_saphyr::from_str(s).unwrap()
}

fn container(docs: &[Value]) -> &Value {
    let containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn args(docs: &[Value]) -> Vec<String> {
    container(docs)["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

fn env_names(docs: &[Value]) -> Vec<String> {
    container(docs)["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// Re-joins documents as a multi-document YAML stream for kubectl.
fn to_stream<'a>(docs: impl IntoIterator<Item = &'a Value>) -> String {
    docs.into_iter().map(|d| format!("---\n{}", serde_saphyr::to_string(d).unwrap())).collect()
}

#[test]
fn helm_is_the_pinned_build() {
    let v = helm_ok(&["version", "--short"]);
    assert!(v.starts_with("v3.22.0"), "helm version {v:?}; the pin is tests/cluster/helm/go.mod");
}

#[test]
fn chart_lints_without_errors() {
    let out = helm_ok(&["lint", "--strict", CHART]);
    assert!(out.contains("0 chart(s) failed") && !out.contains("[ERROR]"), "{out}");
    let mut full = vec!["lint", "--strict", CHART];
    for s in FULL {
        full.extend(["--set", s]);
    }
    let out = helm_ok(&full);
    assert!(out.contains("0 chart(s) failed") && !out.contains("[ERROR]"), "{out}");
}

#[test]
fn chart_crds_are_the_checked_in_crds() {
    let chart_crd = std::fs::read_to_string(CHART_CRD).unwrap();
    let crd = std::fs::read_to_string(CRD).unwrap();
    assert!(chart_crd == crd, "charts/leaderlock/crds/ drifted from crds/: run `make crd`");
    let handovers = |dir: &str| std::fs::read_to_string(format!("{}/{dir}/leaderlock.dev_handovers.yaml", env!("CARGO_MANIFEST_DIR")));
    assert!(
        handovers("crds").unwrap() == handovers("charts/leaderlock/crds").unwrap(),
        "charts/leaderlock/crds/ drifted from crds/: run `make crd`"
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_controller_needs() {
    let (_, docs) = render("leaderlock-system", &[]);
    let expected = yaml(
        r#"
- {apiGroups: [leaderlock.dev], resources: [leaderlocks], verbs: [get, list, watch, patch, update]}
- {apiGroups: [leaderlock.dev], resources: [leaderlocks/status], verbs: [get, patch]}
- {apiGroups: [leaderlock.dev], resources: [handovers], verbs: [get, list, watch]}
- {apiGroups: [leaderlock.dev], resources: [handovers/status], verbs: [get, patch]}
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch, patch]}
- {apiGroups: [events.k8s.io], resources: [events], verbs: [create]}
- {apiGroups: [""], resources: [namespaces], resourceNames: [kube-system], verbs: [get]}
"#,
    );
    assert_eq!(named(&docs, "ClusterRole", "ll-leaderlock")["rules"], expected);
    let binding = named(&docs, "ClusterRoleBinding", "ll-leaderlock");
    assert_eq!(binding["roleRef"]["name"], "ll-leaderlock");
    assert_eq!(binding["subjects"], yaml("[{kind: ServiceAccount, name: ll-leaderlock, namespace: leaderlock-system}]"));
    assert_eq!(one(&docs, "ServiceAccount")["metadata"]["name"], "ll-leaderlock");
    // The one namespaced grant: reading node Leases, in kube-node-lease only (node loss).
    let role = one(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "kube-node-lease");
    assert_eq!(role["rules"], yaml("[{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [list, watch]}]"));
    let binding = one(&docs, "RoleBinding");
    assert_eq!(
        (&binding["metadata"]["namespace"], &binding["roleRef"]["name"]),
        (&role["metadata"]["namespace"], &role["metadata"]["name"])
    );
    assert_eq!(binding["subjects"], yaml("[{kind: ServiceAccount, name: ll-leaderlock, namespace: leaderlock-system}]"));
}

#[test]
fn a_given_cluster_id_is_passed_and_needs_no_namespace_grant() {
    let (_, docs) = render("leaderlock-system", &["clusterId=east"]);
    let args = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args.as_array().unwrap().iter().any(|a| a == "--cluster-id=east"), "{args:?}");
    let rules = named(&docs, "ClusterRole", "ll-leaderlock")["rules"].as_array().unwrap().clone();
    assert!(!rules.iter().any(|r| r["resources"][0] == "namespaces"), "{rules:?}");
}

#[test]
fn default_values_render_a_hardened_two_replica_deployment() {
    let (_, docs) = render("leaderlock-system", &[]);
    let mut k = kinds(&docs);
    k.sort();
    assert_eq!(
        k,
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ],
        "ServiceMonitor and NetworkPolicy are off by default"
    );

    let deploy = one(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ll-leaderlock");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(pod["volumes"].is_null(), "no TLS volume without etcd.tls.secretName");

    let c = container(&docs);
    assert_eq!(c["name"], "controller");
    assert_eq!(c["image"], "leaderlock:0.1.0", "the tag defaults to appVersion");
    assert_eq!(
        args(&docs),
        [
            "controller",
            "--etcd-endpoints=http://etcd:2379",
            "--etcd-prefix=/leaderlock.dev/",
            "--etcd-timeout=5s",
            "--log-format=text",
            "--log-level=info",
            "--probe-addr=0.0.0.0:8080",
            "--metrics-addr=0.0.0.0:8443",
            "--election-ttl=3",
            "--max-concurrent-reconciles=16",
            "--resync-after=2s",
            "--node-lost-after=15s",
        ]
    );
    assert_eq!(c["env"][0], yaml("{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}"));
    assert_eq!(env_names(&docs), ["POD_NAME"], "no etcd credentials without etcd.auth.secretName");
    assert_eq!(
        c["ports"],
        yaml("[{name: probes, containerPort: 8080, protocol: TCP}, {name: metrics, containerPort: 8443, protocol: TCP}]")
    );
    assert_eq!(c["livenessProbe"]["httpGet"], yaml("{path: /healthz, port: probes}"));
    assert_eq!(c["readinessProbe"]["httpGet"], yaml("{path: /readyz, port: probes}"));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], yaml("[ALL]"));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    let svc = one(&docs, "Service");
    assert_eq!(svc["spec"]["ports"], yaml("[{name: metrics, port: 8443, targetPort: metrics, protocol: TCP}]"));
    assert_eq!(svc["spec"]["selector"], deploy["spec"]["selector"]["matchLabels"]);

    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1, "two replicas: keep one");
    assert!(pdb["spec"]["maxUnavailable"].is_null());
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["selector"]["matchLabels"]);
}

#[test]
fn full_values_wire_etcd_tls_auth_prefixes_and_extras() {
    let (text, docs) = render("leaderlock-system", FULL);
    assert!(!text.contains("LEADERLOCK_ETCD_PASSWORD=") && !text.contains("--etcd-password"), "no password in args");

    let a = args(&docs);
    for want in [
        "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379",
        "--allowed-key-prefix=/legacy/locks/",
        "--allowed-key-prefix=/team-a/",
        "--etcd-ca-file=/etc/leaderlock/etcd-tls/ca.crt",
        "--etcd-cert-file=/etc/leaderlock/etcd-tls/tls.crt",
        "--etcd-key-file=/etc/leaderlock/etcd-tls/tls.key",
        "--log-format=json",
        "--max-concurrent-reconciles=32",
        "--resync-after=0",
        "--node-lost-after=11s",
        "--metrics-cert-file=/etc/leaderlock/metrics-tls/tls.crt",
        "--metrics-key-file=/etc/leaderlock/metrics-tls/tls.key",
    ] {
        assert!(a.iter().any(|x| x == want), "missing {want} in {a:?}");
    }

    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["name"], "etcd-tls");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "etcd-client-tls");
    let keys: Vec<&str> = pod["volumes"][0]["secret"]["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(
        pod["volumes"][1],
        yaml(
            "{name: metrics-tls, secret: {secretName: metrics-tls, defaultMode: 288, items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]}}"
        )
    );
    assert_eq!(
        container(&docs)["volumeMounts"],
        yaml(
            "[{name: etcd-tls, mountPath: /etc/leaderlock/etcd-tls, readOnly: true}, {name: metrics-tls, mountPath: /etc/leaderlock/metrics-tls, readOnly: true}]"
        )
    );

    let env = container(&docs)["env"].as_array().unwrap();
    for (name, key) in [("LEADERLOCK_ETCD_USERNAME", "username"), ("LEADERLOCK_ETCD_PASSWORD", "password")] {
        let e = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no env {name}"));
        assert_eq!(e["valueFrom"]["secretKeyRef"], yaml(&format!("{{name: etcd-auth, key: {key}}}")));
    }

    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["scheme"], "https");
    assert_eq!(
        sm["spec"]["endpoints"][0]["tlsConfig"],
        yaml("{serverName: ll-leaderlock-metrics.leaderlock-system.svc, ca: {secret: {name: metrics-tls, key: ca.crt}}}"),
        "a certificate from a Secret is verified"
    );

    let np = one(&docs, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], yaml("[Ingress, Egress]"));
    assert_eq!(
        np["spec"]["ingress"],
        yaml("[{ports: [{port: metrics, protocol: TCP}]}, {ports: [{port: probes, protocol: TCP}]}]"),
        "ingress: the metrics and probes ports only"
    );
    let egress_ports: Vec<&Value> =
        np["spec"]["egress"].as_array().unwrap().iter().flat_map(|r| r["ports"].as_array().unwrap()).map(|p| &p["port"]).collect();
    assert_eq!(egress_ports, [&yaml("443"), &yaml("6443"), &yaml("2379"), &yaml("53"), &yaml("53")]);
}

#[test]
fn one_replica_gets_a_pdb_that_does_not_block_drains() {
    let (_, docs) = render("leaderlock-system", &["replicaCount=1"]);
    assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 1);
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"]["minAvailable"].is_null());
    let (_, docs) = render("leaderlock-system", &["podDisruptionBudget.enabled=false"]);
    assert!(!kinds(&docs).contains(&"PodDisruptionBudget"));
}

#[test]
fn bad_values_are_refused_at_render_time() {
    for (set, msg) in [
        ("log.format=xml", "log.format must be text or json"),
        ("etcd.endpoints=null", "etcd.endpoints"),
        ("controller.maxConcurrentReconciles=0", "controller.maxConcurrentReconciles must be at least 1"),
        ("metrics.secure=false,metrics.tls.secretName=x", "metrics.tls.secretName is for HTTPS"),
    ] {
        let out = helm(&["template", "ll", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} rendered");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "--set {set}: {err}");
    }
}

#[test]
fn rendered_manifests_pass_server_side_dry_run() {
    install_crd();
    let ns = namespace("chart-dry-run");
    for sets in [&[][..], FULL] {
        let (_, docs) = render(&ns, sets);
        // The ServiceMonitor's CRD (Prometheus Operator) is not installed in the test cluster.
        let applied: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "ServiceMonitor").collect();
        let out = kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(&to_stream(applied.iter().copied())));
        assert_eq!(out.matches("created (server dry run)").count(), applied.len(), "every object accepted: {out}");
        assert!(out.contains("deployment.apps/ll-leaderlock created (server dry run)"), "{out}");
        for role in ["ll-leaderlock", "ll-leaderlock-metrics-auth", "ll-leaderlock-metrics-reader"] {
            assert!(out.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role} created (server dry run)")), "{out}");
        }
        // The apiserver compiles the policy's CEL on create (tests/admission.rs type-checks it too).
        assert!(
            out.contains("validatingadmissionpolicy.admissionregistration.k8s.io/ll-leaderlock-pod-roles created (server dry run)"),
            "{out}"
        );
        assert!(
            out.contains("validatingadmissionpolicybinding.admissionregistration.k8s.io/ll-leaderlock-pod-roles created (server dry run)"),
            "{out}"
        );
    }
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// Secure metrics (docs/contract.md §5.3), on by default: the controller may review tokens and
/// access, a reader role exists for the scrapers (bound only to the subjects given), and the
/// ServiceMonitor scrapes over HTTPS with a bearer token, skipping verification only of the
/// self-signed certificate. Off, none of it is rendered and /metrics is plain HTTP.
#[test]
fn secure_metrics_bring_the_review_and_reader_roles_and_an_https_service_monitor() {
    let (_, docs) = render("leaderlock-system", &["metrics.serviceMonitor.enabled=true"]);
    assert_eq!(
        named(&docs, "ClusterRole", "ll-leaderlock-metrics-auth")["rules"],
        yaml(
            r#"
- {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}
- {apiGroups: [authorization.k8s.io], resources: [subjectaccessreviews], verbs: [create]}
"#
        )
    );
    let auth = named(&docs, "ClusterRoleBinding", "ll-leaderlock-metrics-auth");
    assert_eq!(auth["roleRef"]["name"], "ll-leaderlock-metrics-auth");
    assert_eq!(auth["subjects"], yaml("[{kind: ServiceAccount, name: ll-leaderlock, namespace: leaderlock-system}]"));
    assert_eq!(
        named(&docs, "ClusterRole", "ll-leaderlock-metrics-reader")["rules"],
        yaml(r#"[{nonResourceURLs: [/metrics], verbs: [get]}]"#)
    );
    assert!(!docs.iter().any(|d| d["roleRef"]["name"] == "ll-leaderlock-metrics-reader"), "bound to nobody by default");
    let endpoint = &one(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["bearerTokenFile"], "/var/run/secrets/kubernetes.io/serviceaccount/token");
    assert_eq!(endpoint["tlsConfig"], yaml("{insecureSkipVerify: true}"), "the self-signed certificate cannot be verified");
    assert!(!args(&docs).iter().any(|a| a.starts_with("--metrics-secure") || a.starts_with("--metrics-cert-file")));

    let (_, docs) = render("leaderlock-system", FULL);
    let reader = named(&docs, "ClusterRoleBinding", "ll-leaderlock-metrics-reader");
    assert_eq!(reader["roleRef"], yaml("{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ll-leaderlock-metrics-reader}"));
    assert_eq!(reader["subjects"], yaml("[{kind: ServiceAccount, name: prometheus-k8s, namespace: monitoring}]"));

    let (_, docs) = render("leaderlock-system", &["metrics.secure=false", "metrics.serviceMonitor.enabled=true", "metrics.port=9090"]);
    assert!(!docs.iter().any(|d| d["metadata"]["name"].as_str().unwrap().contains("-metrics-")), "no metrics roles when plain");
    assert!(args(&docs).contains(&"--metrics-secure=false".to_string()));
    assert!(args(&docs).contains(&"--metrics-addr=0.0.0.0:9090".to_string()));
    let endpoint = &one(&docs, "ServiceMonitor")["spec"]["endpoints"][0];
    assert!(endpoint["scheme"].is_null() && endpoint["bearerTokenFile"].is_null() && endpoint["tlsConfig"].is_null(), "{endpoint:?}");
}

const HANDOVER_ROLE: &[&str] = &["rbac.handoverRole.enabled=true"];

/// The chart's optional ClusterRole for people who move leadership, by name.
fn handover_role(docs: &[Value]) -> Option<&Value> {
    docs.iter().find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "ll-leaderlock-handover")
}

#[test]
fn the_handover_role_grants_what_the_plugin_needs_and_aggregates_to_edit() {
    let (_, docs) = render("leaderlock-system", &[]);
    assert!(handover_role(&docs).is_none(), "off by default");

    let (_, docs) = render("leaderlock-system", HANDOVER_ROLE);
    let role = handover_role(&docs).expect("rbac.handoverRole.enabled renders the role");
    assert_eq!(
        role["rules"],
        yaml(
            r#"
- {apiGroups: [leaderlock.dev], resources: [handovers], verbs: [create, get, list, watch]}
- {apiGroups: [leaderlock.dev], resources: [leaderlocks], verbs: [get, list, watch, patch]}
"#
        )
    );
    assert_eq!(role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    let bindings = docs.iter().filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding");
    assert!(bindings.into_iter().all(|b| b["roleRef"]["name"] != "ll-leaderlock-handover"), "the chart binds it to nobody");

    let (_, docs) = render("leaderlock-system", &["rbac.handoverRole.enabled=true", "rbac.handoverRole.aggregateToEdit=false"]);
    assert!(handover_role(&docs).unwrap()["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"].is_null());
}

/// Runs the plugin as the ServiceAccount `sa` of `ns` (a TokenRequest token), against the test
/// apiserver.
fn plugin_as(ns: &str, sa: &str, args: &[&str]) -> Output {
    let token = kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=10m"], None);
    let mut kc: Value = serde_json::from_str(&kubectl_ok(&["config", "view", "--raw", "--flatten", "-o", "json"], None)).unwrap();
    kc["users"] = serde_json::json!([{"name": "sa", "user": {"token": token.trim()}}]);
    kc["contexts"][0]["context"]["user"] = "sa".into();
    kc["contexts"][0]["context"]["namespace"] = ns.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kubectl-leaderlock")).args(args).env("KUBECONFIG", &path).output().unwrap()
}

/// The role is not only well-formed: bound to a ServiceAccount it lets every plugin command
/// through, and without it the plugin says what to ask for (exit 4).
#[test]
fn the_handover_role_is_enough_for_every_plugin_command() {
    install_crd(); // both CRDs
    let ns = namespace("chart-handover-role");
    let (_, docs) = render(&ns, HANDOVER_ROLE);
    let mut role = handover_role(&docs).unwrap().clone();
    role["metadata"]["name"] = format!("{ns}-handover").into(); // cluster-scoped: one per test run
    kubectl_ok(&["apply", "-f", "-"], Some(&to_stream([&role])));
    kubectl_ok(&["create", "serviceaccount", "operator", "-n", &ns], None);
    let ll = "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {name: payments}\nspec:\n  selector: {matchLabels: {app: worker}}\n  locks: [{name: ledger}]\n";
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(ll));

    let refused = plugin_as(&ns, "operator", &["status"]);
    assert_eq!(refused.status.code(), Some(4), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rbac.handoverRole"), "{}", String::from_utf8_lossy(&refused.stderr));

    kubectl_ok(
        &[
            "create",
            "rolebinding",
            "operator",
            "-n",
            &ns,
            &format!("--clusterrole={ns}-handover"),
            &format!("--serviceaccount={ns}:operator"),
        ],
        None,
    );
    for args in [
        &["status", "payments"][..],
        &["handover", "payments", "--to", "w-1"],
        &["step-down", "payments"],
        &["pause", "payments"],
        &["resume", "payments"],
    ] {
        // RBAC bindings take effect at once in the apiserver's authorizer cache, but not
        // necessarily before this first call returns: retry until a deadline.
        wait_until(
            &format!("kubectl leaderlock {} as the bound ServiceAccount", args.join(" ")),
            std::time::Duration::from_secs(30),
            || plugin_as(&ns, "operator", args).status.success().then_some(()),
        );
    }
    let handovers = kubectl_ok(&["get", "handovers.leaderlock.dev", "-n", &ns, "-o", "name"], None);
    assert_eq!(handovers.lines().count(), 2, "{handovers}");
    kubectl_ok(&["delete", "clusterrole", &format!("{ns}-handover")], None);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// The admission policy of docs/contract.md §9: on by default, exempting exactly the chart's
/// ServiceAccount in the release namespace, bound to every namespace; a break-glass group only
/// when set; absent when switched off or on a cluster without the API.
#[test]
fn the_admission_policy_exempts_only_the_controllers_service_account() {
    let (_, docs) = render("leaderlock-system", &[]);
    let policy = one(&docs, "ValidatingAdmissionPolicy");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(policy["metadata"]["name"], "ll-leaderlock-pod-roles");
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail", "an evaluation error must refuse, not admit a forgery");
    assert!(spec["paramKind"].is_null());
    assert_eq!(
        spec["matchConstraints"]["resourceRules"],
        yaml(
            r#"[{apiGroups: [""], apiVersions: [v1], resources: [pods, pods/status, pods/ephemeralcontainers, pods/resize, pods/binding], operations: [CREATE, UPDATE]}]"#
        )
    );
    assert_eq!(
        spec["matchConditions"],
        yaml(
            r#"[{name: not-the-leaderlock-controller, expression: 'request.userInfo.username != "system:serviceaccount:leaderlock-system:ll-leaderlock"'}]"#
        )
    );
    for v in spec["validations"].as_array().unwrap() {
        assert_eq!(v["reason"], "Forbidden");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("leaderlock.dev/ annotations and labels are written only by the LeaderLock controller")
        );
        assert!(v["messageExpression"].as_str().unwrap().contains("system:serviceaccount:leaderlock-system:ll-leaderlock"));
    }
    let binding = one(&docs, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"], yaml("{policyName: ll-leaderlock-pod-roles, validationActions: [Deny]}"), "every namespace, deny");

    // A ServiceAccount made elsewhere: its name is the one exempt.
    let (_, docs) = render("ops", &["serviceAccount.create=false", "serviceAccount.name=leaderlock"]);
    let cond = &one(&docs, "ValidatingAdmissionPolicy")["spec"]["matchConditions"][0]["expression"];
    assert_eq!(cond, r#"request.userInfo.username != "system:serviceaccount:ops:leaderlock""#);

    let (_, docs) = render("leaderlock-system", &["admissionPolicy.breakGlassGroup=leaderlock:break-glass"]);
    assert_eq!(
        one(&docs, "ValidatingAdmissionPolicy")["spec"]["matchConditions"][1],
        yaml(
            r#"{name: not-break-glass, expression: '!(has(request.userInfo.groups) && "leaderlock:break-glass" in request.userInfo.groups)'}"#
        )
    );

    for off in [&["admissionPolicy.enabled=false"][..], &[]] {
        let mut args = vec!["template", "ll", CHART];
        for s in off {
            args.extend(["--set", s]);
        }
        if off.is_empty() {
            args.extend(["--kube-version", "1.29.0"]); // before the API went GA
        }
        let text = helm_ok(&args);
        assert!(!text.contains("ValidatingAdmissionPolicy"), "{args:?} rendered the policy");
        assert!(text.contains("kind: Deployment"), "the rest of the chart still renders");
    }
}

/// Installed by helm, with the cluster's discovery: the policy comes with the rest of the
/// chart, and the apiserver accepts it.
#[test]
fn helm_install_against_the_cluster_includes_the_admission_policy() {
    install_crd();
    let ns = namespace("chart-install");
    let out = helm_ok(&["install", "ll", CHART, "--namespace", &ns, "--dry-run=server", "-o", "json"]);
    let release: Value = serde_json::from_str(&out).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(release["manifest"].as_str().unwrap()).unwrap();
    let k = kinds(&docs);
    for want in ["Deployment", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
        assert!(k.contains(&want), "{want} missing from {k:?}");
    }
    named(&docs, "ClusterRole", "ll-leaderlock-metrics-auth");
    named(&docs, "ClusterRole", "ll-leaderlock-metrics-reader");
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
