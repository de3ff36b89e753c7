//! `kubectl leaderlock` against the real apiserver, lock etcd and controller
//! (docs/contract.md §5.8), under the safety checker: status output, handovers to each
//! candidate in turn, the compare-and-swap and candidacy refusals, pause and resume, exit
//! statuses, and the connection flags kubectl users expect.
mod common;

use std::process::{Command, Output};

use common::checker::Checker;
use common::k8s::*;
use common::*;
use leaderlock::resource::handover::Handover;
use serde_json::Value;

const WORKER: &[(&str, &str)] = &[("app", "worker")];

/// Runs the plugin with the test control plane's KUBECONFIG (inherited) plus `envs`.
fn plugin_with(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-leaderlock")).args(args).envs(envs.iter().copied()).output().unwrap()
}

fn plugin(args: &[&str]) -> Output {
    plugin_with(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The plugin's exit status, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = plugin(args);
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn run_ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 0, "kubectl leaderlock {}: exit {code}\nstdout: {stdout}\nstderr: {stderr}", args.join(" "));
    stdout
}

/// Ready pods `w-1`..`w-n` and the LeaderLock `payments` with the locks `locks`, elected.
struct Stage {
    ns: String,
    checker: Checker,
    c: kube::Client,
}

async fn stage(test: &str, pods: &[&str], locks: &str) -> Stage {
    install_crd();
    shared_controller();
    let ns = namespace(test);
    let checker = Checker::start(client().await, &ns, &env("LEADERLOCK_ETCD_ENDPOINTS"), ROOT, &["/legacy/"]).await;
    let c = client().await;
    ready_pods(&c, &ns, pods, WORKER).await;
    let yaml = format!(
        "apiVersion: leaderlock.dev/v1alpha1\nkind: LeaderLock\nmetadata: {{name: payments}}\nspec:\n  selector: {{matchLabels: {{app: worker}}}}\n  locks: {locks}\n"
    );
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&yaml));
    Stage { ns, checker, c }
}

/// A status table's words, without the SINCE column: an age, it may tick between two reads.
fn without_since(table: &str) -> Vec<Vec<String>> {
    table.lines().map(|l| l.split_whitespace().enumerate().filter(|(i, _)| *i != 5).map(|(_, w)| w.to_string()).collect()).collect()
}

/// The holder after a handover: the status, the annotations and the checker agree.
async fn holder_of(s: &Stage, lock: &str, candidates: usize) -> (String, i64) {
    elected(&s.c, &s.ns, "payments", lock, candidates).await
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_each_lock_with_holder_and_token_and_wide_adds_the_queue() {
    let s = stage("plugin-status", &["w-1", "w-2", "w-3"], "[{name: ledger}, {name: report}]").await;
    let (holder, token) = holder_of(&s, "ledger", 3).await;
    holder_of(&s, "report", 3).await;

    let table = run_ok(&["status", "-n", &s.ns]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["LEADERLOCK", "LOCK", "HOLDER", "TOKEN", "CANDIDATES", "SINCE", "PAUSED"]);
    let ledger: Vec<&str> = lines.iter().find(|l| l.contains(" ledger ")).unwrap_or_else(|| panic!("{table}")).split_whitespace().collect();
    assert_eq!(
        [ledger[0], ledger[1], ledger[2], ledger[3], ledger[4], ledger[6]],
        ["payments", "ledger", &holder, &token.to_string(), "3", "false"]
    );
    assert_eq!(lines.len(), 3, "one row per lock:\n{table}");

    // -A: the namespace comes first; NAME narrows to one LeaderLock.
    let all = run_ok(&["status", "-A"]);
    assert!(all.lines().any(|l| l.split_whitespace().take(3).eq([s.ns.as_str(), "payments", "ledger"])), "{all}");
    assert_eq!(without_since(&run_ok(&["status", "payments", "-n", &s.ns])), without_since(&table));

    // -o json: the status as the controller wrote it.
    let json: Value = serde_json::from_str(&run_ok(&["status", "payments", "-n", &s.ns, "-o", "json"])).unwrap();
    let item = &json["items"][0];
    assert_eq!(
        (item["name"].as_str(), item["namespace"].as_str(), item["paused"].as_bool()),
        (Some("payments"), Some(s.ns.as_str()), Some(false))
    );
    assert_eq!(item["status"]["locks"][0]["holder"], holder.as_str());
    assert_eq!(item["status"]["locks"][0]["fencingToken"], token.to_string());
    let yaml = run_ok(&["status", "payments", "-n", &s.ns, "-o", "yaml"]);
    assert!(yaml.contains(&format!("holder: {holder}")), "{yaml}");

    // -o wide: the queue, holder first, every candidate once (filled by the controller, §2.3).
    let wide = run_ok(&["status", "payments", "-n", &s.ns, "-o", "wide"]);
    let row: Vec<&str> = wide.lines().find(|l| l.contains(" ledger ")).unwrap().split_whitespace().collect();
    let queue: Vec<&str> = row.last().unwrap().split(',').collect();
    assert_eq!(queue.len(), 3, "{wide}");
    assert_eq!(queue[0], holder, "holder first: {wide}");
    s.checker.assert_clean();
}

const PODS: [&str; 3] = ["w-1", "w-2", "w-3"];

/// The pod after `current` in `PODS`, wrapping: handing over to it in a loop gives each pod the
/// lock in turn.
fn next_after(current: &str) -> &'static str {
    let i = PODS.iter().position(|p| *p == current).unwrap_or(0);
    PODS[(i + 1) % PODS.len()]
}

#[tokio::test(flavor = "multi_thread")]
async fn handover_with_wait_moves_the_lock_to_each_candidate_in_turn_with_a_larger_token() {
    let s = stage("plugin-handover", &PODS, "[{name: ledger}]").await;
    let (mut current, mut token) = holder_of(&s, "ledger", 3).await;
    for round in 0..PODS.len() {
        let to = next_after(&current);
        let mut args = vec!["handover", "payments", "--to", to, "--wait", "-n", &s.ns];
        if round > 0 {
            args.extend(["--lock", "ledger"]); // optional: the LeaderLock has one lock
        }
        let out = run_ok(&args);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("payments-ledger-"), "the Handover's name first: {out}");
        let (now, new_token) = holder_of(&s, "ledger", 3).await;
        assert_eq!(now, to, "--wait returned before the move was visible");
        assert!(new_token > token, "the token grows: {token} -> {new_token}");
        assert_eq!(lines[1], format!("done: HandedOver: lock ledger held by {to} (fencing token {new_token}, was {current} with {token})"));
        (current, token) = (now, new_token);
    }
    // Each request is owned by its LeaderLock (garbage-collected with it).
    let requests: Vec<Handover> = kube::Api::namespaced(s.c.clone(), &s.ns).list(&Default::default()).await.unwrap().items;
    assert_eq!(requests.len(), PODS.len());
    assert!(
        requests.iter().all(|h| h.metadata.owner_references.as_ref().is_some_and(|o| o[0].name == "payments" && o[0].kind == "LeaderLock"))
    );

    // Step-down: the next in line takes over. To the holder itself: done, nothing moves.
    run_ok(&["step-down", "payments", "--if-holder", &current, "--wait", "-n", &s.ns]);
    let (after, after_token) = holder_of(&s, "ledger", 3).await;
    assert!(after != current && after_token > token, "step-down: {current}/{token} -> {after}/{after_token}");
    let out = run_ok(&["handover", "payments", "--to", &after, "--wait", "-n", &s.ns]);
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with(&format!("done: AlreadyHolder: lock ledger held by {after}"))), "{out}");
    assert_eq!(holder_of(&s, "ledger", 3).await, (after, after_token));
    s.checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_controller_refuses_exits_1_with_the_reason_and_moves_nothing() {
    let s = stage("plugin-refused", &PODS, "[{name: ledger}]").await;
    // Not Ready: not a candidate. Another app: not selected.
    create_pod(&s.c, &s.ns, "w-unready", WORKER).await;
    create_pod(&s.c, &s.ns, "other", &[("app", "other")]).await;
    set_ready(&s.c, &s.ns, "other", true).await;
    let before = holder_of(&s, "ledger", 3).await;
    let stander = next_after(&before.0);

    // Compare-and-swap: the named holder is not the holder.
    let (code, _, stderr) = run(&["handover", "payments", "--to", stander, "--if-holder", stander, "--wait", "-n", &s.ns]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("refused: NotHolder: "), "{stderr}");
    for pod in ["w-unready", "other", "nobody"] {
        let (code, _, stderr) = run(&["handover", "payments", "--lock", "ledger", "--to", pod, "--wait", "-n", &s.ns]);
        assert_eq!(code, 1, "--to {pod}: {stderr}");
        assert!(stderr.starts_with("refused: NotCandidate: "), "--to {pod}: {stderr}");
    }
    assert_eq!(holder_of(&s, "ledger", 3).await, before, "a refused request moves nothing");
    s.checker.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_does_not_exist_exits_2_and_creates_no_request() {
    let s = stage("plugin-not-found", &PODS, "[{name: ledger}, {name: report}]").await;
    for (args, says) in [
        (vec!["handover", "nope", "--lock", "ledger", "--to", "w-1"], format!("LeaderLock {}/nope not found", s.ns)),
        (vec!["step-down", "nope", "--wait"], format!("LeaderLock {}/nope not found", s.ns)),
        (vec!["status", "nope"], format!("LeaderLock {}/nope not found", s.ns)),
        (vec!["pause", "nope"], format!("LeaderLock {}/nope not found", s.ns)),
        (vec!["handover", "payments", "--lock", "typo", "--to", "w-1"], "has no lock \"typo\": its locks are ledger, report".to_string()),
        (vec!["handover", "payments", "--to", "w-1"], "has 2 locks (ledger, report): name one with --lock".to_string()),
        (vec!["handover", "payments", "--lock", "Not_A_Lock"], "is not a lock name".to_string()),
        (vec!["handover"], "<NAME>".to_string()),
    ] {
        let ns_args = [args.as_slice(), &["-n", &s.ns]].concat();
        let (code, stdout, stderr) = run(&ns_args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(&says), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    let requests: Vec<Handover> = kube::Api::namespaced(s.c.clone(), &s.ns).list(&Default::default()).await.unwrap().items;
    assert!(requests.is_empty(), "{requests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_past_the_timeout_exits_3_and_leaves_the_request() {
    let s = stage("plugin-timeout", &PODS, "[{name: ledger}]").await;
    let (holder_pod, _) = holder_of(&s, "ledger", 3).await;
    // A zero timeout expires before any watch answer can arrive.
    let (code, stdout, stderr) = run(&["handover", "payments", "--to", next_after(&holder_pod), "--wait", "--timeout", "0s", "-n", &s.ns]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(stderr.starts_with("error: timed out after 0ms waiting for Handover "), "{stderr}");
    assert!(stdout.starts_with("payments-ledger-"), "the name is printed before waiting: {stdout}");
    let name = stdout.trim();
    assert!(stderr.contains(&format!("kubectl get handovers.leaderlock.dev -n {} {name}", s.ns)), "{stderr}");
}

/// The `Paused` condition's status and reason.
async fn paused_condition(s: &Stage) -> Option<(String, String)> {
    let ll = leaderlock(&s.c, &s.ns, "payments").await;
    let c = ll.status?.conditions.into_iter().find(|c| c.type_ == "Paused")?;
    Some((c.status, c.reason))
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume_wait_for_the_condition_and_a_paused_lock_refuses_handovers() {
    let s = stage("plugin-pause", &PODS, "[{name: ledger}]").await;
    let before = holder_of(&s, "ledger", 3).await;

    let out = run_ok(&["pause", "payments", "--wait", "-n", &s.ns]);
    assert_eq!(out.lines().next(), Some("leaderlock.leaderlock.dev/payments paused"), "{out}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("condition Paused=True: SpecPaused")), "{out}");
    assert_eq!(paused_condition(&s).await, Some(("True".into(), "SpecPaused".into())));
    let table = run_ok(&["status", "payments", "-n", &s.ns]);
    assert!(table.lines().nth(1).is_some_and(|l| l.ends_with("true")), "PAUSED column: {table}");

    let (code, _, stderr) = run(&["handover", "payments", "--to", next_after(&before.0), "--wait", "-n", &s.ns]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("refused: Paused: "), "{stderr}");

    let out = run_ok(&["resume", "payments", "--wait", "-n", &s.ns]);
    assert_eq!(out.lines().next(), Some("leaderlock.leaderlock.dev/payments resumed"), "{out}");
    assert_eq!(paused_condition(&s).await, Some(("False".into(), "Resumed".into())));
    assert_eq!(holder_of(&s, "ledger", 3).await, before, "pause and resume move nothing");
    s.checker.assert_clean();
}

/// The test control plane's kubeconfig, flattened (certificates inline), as JSON.
fn real_kubeconfig() -> Value {
    serde_json::from_str(&kubectl_ok(&["config", "view", "--raw", "--flatten", "-o", "json"], None)).unwrap()
}

/// A kubeconfig whose current context points at a closed port and whose context `real`, with
/// namespace `ns`, is the test control plane.
fn two_context_kubeconfig(dir: &std::path::Path, ns: &str) -> std::path::PathBuf {
    let mut kc = real_kubeconfig();
    let real_ctx = kc["contexts"][0]["context"].clone();
    let user = real_ctx["user"].clone();
    kc["clusters"].as_array_mut().unwrap().push(serde_json::json!({"name": "closed", "cluster": {"server": "https://127.0.0.1:1"}}));
    kc["contexts"] = serde_json::json!([
        {"name": "broken", "context": {"cluster": "closed", "user": user}},
        {"name": "real", "context": {"cluster": real_ctx["cluster"], "user": user, "namespace": ns}},
    ]);
    kc["current-context"] = "broken".into();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeconfig_context_and_namespace_are_found_the_way_kubectl_finds_them() {
    let s = stage("plugin-kubeconfig", &PODS, "[{name: ledger}]").await;
    let (holder_pod, _) = holder_of(&s, "ledger", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let file = two_context_kubeconfig(dir.path(), &s.ns);
    let file = file.to_str().unwrap();
    let shows_holder =
        |out: &Output| text(&out.stdout).lines().nth(1).is_some_and(|l| l.split_whitespace().nth(2) == Some(holder_pod.as_str()));

    // --kubeconfig with its current context: the closed port, an API error (4) that says what to check.
    let out = plugin(&["status", "--kubeconfig", file, "-n", &s.ns]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("check --context, --kubeconfig and KUBECONFIG"), "{}", text(&out.stderr));
    // --context picks the real cluster, and its namespace is the default -n.
    let out = plugin(&["status", "--kubeconfig", file, "--context", "real"]);
    assert!(out.status.success() && shows_holder(&out), "{}{}", text(&out.stdout), text(&out.stderr));
    // KUBECONFIG is honoured the same way (flags may come before the command too).
    let out = plugin_with(&["--context", "real", "status"], &[("KUBECONFIG", file)]);
    assert!(out.status.success() && shows_holder(&out), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = plugin_with(&["status", "-n", &s.ns], &[("KUBECONFIG", file)]);
    assert_eq!(out.status.code(), Some(4), "KUBECONFIG's current context is the closed port: {}", text(&out.stderr));
    // A context that does not exist: a kubeconfig error (4) naming it.
    let out = plugin(&["status", "--kubeconfig", file, "--context", "missing"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("missing"), "{}", text(&out.stderr));
}
