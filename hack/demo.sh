#!/usr/bin/env bash
# `make demo`: a real control plane on loopback, the LeaderLock controller, three pods and a
# LeaderLock with two locks; then the leader pod is deleted and a new holder takes over.
# Everything is torn down at the end or on Ctrl-C (DEMO_KEEP=1 keeps it running until Ctrl-C).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ "${1:-}" != "--inside" ]]; then
  exec "$ROOT/hack/cluster.sh" run -- "$0" --inside
fi

BIN="$ROOT/target/debug/leaderlock"
step() { printf '\n\033[1;32m## %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
# wait_for DESC SECONDS CMD...: retry CMD until it prints something non-empty.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs)) out
  until out="$("$@" 2>/dev/null)" && [[ -n "$out" ]]; do
    ((SECONDS < deadline)) || die "timed out waiting for $what"
    sleep 0.2
  done
}
roles() {
  kubectl get pods -l app=payments-worker -o custom-columns='POD:.metadata.name,LEDGER-WRITER:.metadata.annotations.leaderlock\.dev/ledger-writer,TOKEN:.metadata.annotations.leaderlock\.dev/ledger-writer\.token,NIGHTLY-REPORT:.metadata.annotations.leaderlock\.dev/nightly-report'
}
play_kubelet_ready() {
  for p in "$@"; do
    kubectl patch pod "$p" --subresource=status --type=merge \
      -p '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}' >/dev/null
  done
}

step "Install the LeaderLock CRD"
"$BIN" crd | kubectl apply --server-side -f -
kubectl wait --for=condition=Established --timeout=60s crd/leaderlocks.leaderlock.dev >/dev/null

step "Start the controller (logs: $LEADERLOCK_CLUSTER_DIR/controller.log)"
"$BIN" controller --etcd-endpoints "$LEADERLOCK_ETCD_ENDPOINTS" --http-addr 127.0.0.1:0 >"$LEADERLOCK_CLUSTER_DIR/controller.log" 2>&1 &
CONTROLLER=$!
trap 'kill $CONTROLLER 2>/dev/null || true' EXIT

step "Create three pods (examples/pods.yaml) and play the kubelet: mark them Running and Ready"
kubectl apply -f "$ROOT/examples/pods.yaml"
play_kubelet_ready payments-worker-1 payments-worker-2 payments-worker-3

step "Apply the LeaderLock (examples/leaderlock.yaml)"
kubectl apply -f "$ROOT/examples/leaderlock.yaml"
wait_for "an elected holder" 30 kubectl get ll payments -o 'jsonpath={.status.conditions[?(@.reason=="Elected")].status}'
kubectl get ll
note "HOLDER is the pod holding the first lock; each lock's holder is in .status.locks:"
kubectl get ll payments -o jsonpath='{range .status.locks[*]}  {.name}: holder={.holder} fencingToken={.fencingToken} candidates={.candidates}{"\n"}{end}'
step "Each pod's role, as its downward-API files show it"
roles

LEADER="$(kubectl get ll payments -o jsonpath='{.status.locks[0].holder}')"
TOKEN="$(kubectl get ll payments -o jsonpath='{.status.locks[0].fencingToken}')"
step "Delete the ledger-writer leader ($LEADER): its etcd key goes, the next candidate takes over"
kubectl delete pod "$LEADER" --wait=false
wait_for "a new holder" 30 bash -c "kubectl get ll payments -o jsonpath='{.status.locks[0].holder}' | grep -v '^$LEADER\$'"
wait_for "the new leader's annotation" 30 bash -c "kubectl get pods -o jsonpath='{.items[*].metadata.annotations.leaderlock\.dev/ledger-writer}' | grep -w leader"
kubectl get ll
kubectl get ll payments -o jsonpath='{range .status.locks[*]}  {.name}: holder={.holder} fencingToken={.fencingToken} transitions={.transitions}{"\n"}{end}'
roles
note "The fencing token grew from $TOKEN to $(kubectl get ll payments -o jsonpath='{.status.locks[0].fencingToken}'): writes stamped with the old token can be rejected downstream."
step "Events on the LeaderLock"
kubectl get events --field-selector involvedObject.kind=LeaderLock --sort-by=.metadata.creationTimestamp -o custom-columns='REASON:.reason,MESSAGE:.message'

if [[ "${DEMO_KEEP:-}" == 1 ]]; then
  step "Running until Ctrl-C; KUBECONFIG=$KUBECONFIG"
  wait $CONTROLLER
fi
step "Done: tearing everything down"
