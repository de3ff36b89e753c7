#!/usr/bin/env bash
# `make demo`: LeaderLock on a real node on this machine (hack/node.sh: kubelet + containerd):
# the chart installed with the image built here, examples/ applied, each pod's role read from the
# file its kubelet projects, then the leader pod is deleted and the jobs' own logs show the
# handover. `hack/demo.sh --played` (make demo-played) is the fast variant: no node, the
# controller runs on the host and the script plays the kubelet by patching pod status.
# Everything is torn down at the end or on Ctrl-C (DEMO_KEEP=1 keeps it running until Ctrl-C).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

case "${1:-}" in
  --played) exec "$ROOT/hack/cluster.sh" run -- "$0" --inside ;;
  --inside | --inside-node) ;;
  *) exec env LEADERLOCK_NODE=1 "$ROOT/hack/cluster.sh" run -- "$0" --inside-node ;;
esac

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

# node_demo: the default demo, on the real node.
node_demo() {
  local ns=demo lock=ledger-writer
  pods() { kubectl get pods -n "$ns" -l app=ledger-worker -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
  holder() { kubectl get ll ledger -n "$ns" -o jsonpath='{.status.locks[0].holder}'; }
  show_roles() {
    local p
    printf '%-34s %-22s %s\n' POD "LEADERLOCK ROLE (file)" "JOB LOG"
    for p in $(pods); do
      printf '%-34s %-22s %s\n' "$p" \
        "$(kubectl exec -n "$ns" "$p" -c worker -- /opt/leaderlock/leaderlock role --lock "$lock" 2>/dev/null || true)" \
        "$(kubectl logs -n "$ns" "$p" -c worker 2>/dev/null | tail -n 1)"
    done
  }

  step "Build the images here (no registry, no daemon), import them into containerd, helm install the chart"
  "$ROOT/hack/node-install.sh" leaderlock busybox
  kubectl get pods -n leaderlock-system -o wide

  step "Apply examples/ (image names changed to the images built here)"
  kubectl create namespace "$ns" >/dev/null
  wait_for "the namespace's ServiceAccount" 60 kubectl get sa default -n "$ns" -o name
  kubectl apply -n "$ns" -f "$ROOT/examples/leaderlock-ledger.yaml" -f "$ROOT/examples/leader-service.yaml"
  sed -e 's#image: leaderlock:#image: leaderlock.dev/leaderlock:#' -e 's#image: busybox:1.36#image: leaderlock.dev/busybox:local#' \
    "$ROOT/examples/deployment.yaml" | kubectl apply -n "$ns" -f -
  kubectl rollout status -n "$ns" deployment/ledger-worker --timeout=180s
  wait_for "an elected holder" 60 holder
  kubectl get ll -n "$ns"
  step "Each pod's role, as \`leaderlock role\` reads it from the file its kubelet projects, and its job's log"
  sleep 1 # the kubelet projects the annotations a moment after the controller writes them
  show_roles
  local old token ip
  old="$(holder)" token="$(kubectl get ll ledger -n "$ns" -o jsonpath='{.status.locks[0].fencingToken}')"
  note "The holder's file ($old:/etc/leaderlock/annotations):"
  kubectl exec -n "$ns" "$old" -c worker -- cat /etc/leaderlock/annotations | grep leaderlock.dev
  note "The leader-only Service's EndpointSlice:"
  kubectl get endpointslices -n "$ns" -l kubernetes.io/service-name=ledger-leader -o wide

  step "Delete the leader pod ($old, fencing token $token): its job stops, another pod's job starts"
  kubectl delete pod -n "$ns" "$old" --wait=false
  wait_for "a new holder" 60 bash -c "kubectl get ll ledger -n $ns -o jsonpath='{.status.locks[0].holder}' | grep -v '^$old\$'"
  local new
  new="$(holder)"
  wait_for "the new holder's job" 30 bash -c "kubectl logs -n $ns $new -c worker | grep writing"
  note "The old leader's job log ends, the new one's begins:"
  kubectl logs -n "$ns" "$old" -c worker --timestamps 2>/dev/null | tail -n 2 || true
  kubectl logs -n "$ns" "$new" -c worker --timestamps | tail -n 1
  ip="$(kubectl get pod -n "$ns" "$new" -o jsonpath='{.status.podIP}')"
  wait_for "the Service to follow" 30 bash -c "kubectl get endpointslices -n $ns -l kubernetes.io/service-name=ledger-leader -o jsonpath='{.items[*].endpoints[*].addresses[*]}' | grep -x '$ip'"
  kubectl get endpointslices -n "$ns" -l kubernetes.io/service-name=ledger-leader -o wide
  kubectl get ll -n "$ns"
  kubectl rollout status -n "$ns" deployment/ledger-worker --timeout=120s >/dev/null
  step "Roles after the failover"
  sleep 1
  show_roles
  if [[ "${DEMO_KEEP:-}" == 1 ]]; then
    step "Running until Ctrl-C; KUBECONFIG=$KUBECONFIG"
    sleep infinity
  fi
  step "Done: tearing everything down (containers, node, control plane)"
}

if [[ "$1" == --inside-node ]]; then
  node_demo
  exit 0
fi

step "Install the LeaderLock CRD"
"$BIN" crd | kubectl apply --server-side -f -
kubectl wait --for=condition=Established --timeout=60s crd/leaderlocks.leaderlock.dev >/dev/null

step "Start the controller (logs: $LEADERLOCK_CLUSTER_DIR/controller.log)"
"$BIN" controller --etcd-endpoints "$LEADERLOCK_ETCD_ENDPOINTS" --probe-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$LEADERLOCK_CLUSTER_DIR/controller.log" 2>&1 &
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
