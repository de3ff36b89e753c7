#!/usr/bin/env bash
# `make demo`: a real control plane on loopback, the CRD, an example LeaderLock.
# Ctrl-C (or the end) tears everything down.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ "${1:-}" != "--inside" ]]; then
  exec "$ROOT/hack/cluster.sh" run -- "$0" --inside
fi

step() { printf '\n\033[1;32m## %s\033[0m\n' "$*"; }
step "Install the LeaderLock CRD"
"$ROOT/target/debug/leaderlock" crd | kubectl apply --server-side -f -
kubectl wait --for=condition=Established --timeout=60s crd/leaderlocks.leaderlock.dev
step "Apply examples/leaderlock.yaml"
kubectl apply -f "$ROOT/examples/leaderlock.yaml"
kubectl get ll
step "An invalid LeaderLock is refused by the schema"
kubectl apply -f - <<'YAML' || true
apiVersion: leaderlock.dev/v1alpha1
kind: LeaderLock
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: x}}
  locks: [{name: Not_A_DNS_Label}]
  ttlSeconds: 1
YAML
