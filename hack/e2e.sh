#!/usr/bin/env bash
# make e2e: failover measured on a real node (kubelet + containerd, hack/node.sh) where the
# workload sees it. Builds the Go harness (tests/cluster/e2e, cached on its sources), starts
# the control plane and the node, installs the chart with the image built here, and runs the
# harness; it updates its section of BENCHMARKS.md with a CDF plot and ends with one line,
# `E2E kubelet=… kubelet_config=default handovers=… … violations=0`. Exits non-zero on a violation.
#
# The LeaderLock handovers run in E2E_AB_BLOCKS blocks, the controller's resync (docs/contract.md
# §3.1) on and off in turn: the harness switches it between blocks with `helm upgrade` of the
# chart installed here, with the same values file and controller.resyncAfter "2s" or "0".
# Knobs: E2E_GRACEFUL (leader pod deleted; default 200), E2E_KILLS (leader container killed; 40),
# E2E_NOTREADY (leader's readiness probe fails; 40), E2E_AB_BLOCKS (4: on, off, on, off),
# E2E_CLIENTGO_HANDOVERS (client-go, leader pod deleted; 40); E2E_GO_GRACEFUL and E2E_GO_KILLS
# (examples/go-controller, LeaderLock drop-in and Lease election, each: leader pod deleted, leader
# container killed; 20 and 20), E2E_GO_IDLE (their idle window; 60s), E2E_PHASES
# (leaderlock,clientgo,go).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

if [[ "${1:-}" != --inside ]]; then
  [[ -z "${E2E_HANDOVERS:-}" ]] || die "E2E_HANDOVERS is gone: set E2E_GRACEFUL, E2E_KILLS and E2E_NOTREADY"
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
    # Older builds only: another worktree's make e2e may be running its own.
    find "$CACHE_DIR/bin" -maxdepth 1 -name 'e2e-*' ! -path "$out" -mmin +1440 -exec rm -rf {} +
  fi
  export E2E_BIN="$out/e2e"
  exec env LEADERLOCK_NODE=1 "$ROOT/hack/cluster.sh" run -- "$0" --inside
fi

start=$SECONDS
hack/node-install.sh leaderlock busybox elector go-controller
log "set-up (node, images, chart) took $((SECONDS - start))s after the control plane"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/leaderlock/Chart.yaml)"
exec "$E2E_BIN" -image "leaderlock.dev/leaderlock:$version" \
  -graceful "${E2E_GRACEFUL:-200}" -kills "${E2E_KILLS:-40}" -notready "${E2E_NOTREADY:-40}" \
  -ab-blocks "${E2E_AB_BLOCKS:-4}" -clientgo-handovers "${E2E_CLIENTGO_HANDOVERS:-40}" \
  -go-graceful "${E2E_GO_GRACEFUL:-20}" -go-kills "${E2E_GO_KILLS:-20}" -go-idle "${E2E_GO_IDLE:-60s}" \
  -phases "${E2E_PHASES:-leaderlock,clientgo,go}" \
  -chart "$ROOT/charts/leaderlock" -chart-values "$LEADERLOCK_NODE_DIR/chart-values.yaml" \
  -out "$ROOT/BENCHMARKS.md" -plot "$ROOT/BENCHMARKS-e2e-job-gap.png"
