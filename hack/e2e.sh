#!/usr/bin/env bash
# make e2e: failover measured on a real node (kubelet + containerd, hack/node.sh) where the
# workload sees it. Builds the Go harness (tests/cluster/e2e, cached on its sources), starts
# the control plane and the node, installs the chart with the image built here, and runs the
# harness; it updates its section of BENCHMARKS.md with a CDF plot and ends with one line,
# `E2E kubelet=… handovers=… … violations=0`. Exits non-zero on a violation.
# Knobs: E2E_HANDOVERS (each of graceful, crash, notready; default 20), E2E_CLIENTGO_HANDOVERS (20).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

if [[ "${1:-}" != --inside ]]; then
  mod="$ROOT/tests/cluster/e2e"
  key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/*.go | sha256sum | cut -c1-16)"
  out="$CACHE_DIR/bin/e2e-$key"
  if [[ ! -f "$out/.complete" ]]; then
    log "testing and building the e2e harness (tests/cluster/e2e)"
    mkdir -p "$out"
    (cd "$mod" && export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly && go vet . && go test . >&2 \
      && go build -trimpath -o "$out/e2e" .) \
      || die "building the e2e harness failed"
    touch "$out/.complete"
    find "$CACHE_DIR/bin" -maxdepth 1 -name 'e2e-*' ! -path "$out" -exec rm -rf {} +
  fi
  export E2E_BIN="$out/e2e"
  exec env LEADERLOCK_NODE=1 "$ROOT/hack/cluster.sh" run -- "$0" --inside
fi

start=$SECONDS
hack/node-install.sh leaderlock busybox elector
log "set-up (node, images, chart) took $((SECONDS - start))s after the control plane"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/leaderlock/Chart.yaml)"
exec "$E2E_BIN" -image "leaderlock.dev/leaderlock:$version" \
  -handovers "${E2E_HANDOVERS:-20}" -clientgo-handovers "${E2E_CLIENTGO_HANDOVERS:-20}" \
  -out "$ROOT/BENCHMARKS.md" -plot "$ROOT/BENCHMARKS-e2e-job-gap.png"
