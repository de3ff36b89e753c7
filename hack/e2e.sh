#!/usr/bin/env bash
# make e2e: failover measured on real nodes (two kubelets, each with its containerd, hack/node.sh)
# where the workload sees it. Builds the Go harness (tests/cluster/e2e, cached on its sources),
# starts the control plane and the nodes, installs the chart with the image built here, and runs
# the harness; it updates its two sections of BENCHMARKS.md (handovers, with a CDF plot; a node
# lost) and ends with one line, `E2E kubelet=… kubelet_config=default handovers=… … violations=0`.
# Exits non-zero on a violation, or when a lock moved to another pod of a lost node.
#
# The LeaderLock handovers run in E2E_AB_BLOCKS blocks, the controller's resync (docs/contract.md
# §3.1) on and off in turn: the harness switches it between blocks with `helm upgrade` of the
# chart installed here, with the same values file and controller.resyncAfter "2s" or "0".
# Knobs: E2E_GRACEFUL (leader pod deleted; default 200), E2E_KILLS (leader container killed; 40),
# E2E_NOTREADY (leader's readiness probe fails; 40), E2E_AB_BLOCKS (4: on, off, on, off),
# E2E_CLIENTGO_HANDOVERS (client-go, leader pod deleted; 40); E2E_GO_GRACEFUL and E2E_GO_KILLS
# (examples/go-controller, LeaderLock drop-in and Lease election, each: leader pod deleted, leader
# container killed; 20 and 20), E2E_GO_IDLE (their idle window; 60s).
# The node-loss phase (both job workloads at once, the second node lost with both leaders on it):
# E2E_NODE_HANGS (every process of the node frozen, then thawed; 20), E2E_NODE_CRASHES (every
# process SIGKILLed, then restarted; 20), E2E_KUBELET_CRASHES (its kubelet alone SIGKILLed; 10),
# E2E_OVERLAP_CAP (how long to wait for an old job nothing stops; 30s), E2E_RENEWAL_ROUNDS (hang
# and kubelet-crash rounds each with the LeaderLock's renewDeadlineSeconds E2E_RENEW_DEADLINE;
# 10 and 10), E2E_NODE_TUNED (extra hang and crash rounds each with a kubelet renewing its Lease
# every 2.5 s and nodeLostAfterSeconds E2E_TUNED_NODE_LOST_AFTER, 4: not defaults, never the
# headline; 0).
# E2E_PHASES (leaderlock,clientgo,go,nodeloss) picks phases for a trial; only the sections of
# the phases that ran are rewritten.
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
  export E2E_BIN="$out/e2e" E2E_STARTED="$EPOCHREALTIME"
  exec env LEADERLOCK_NODES=2 "$ROOT/hack/cluster.sh" run -- "$0" --inside
fi

up="$(bc <<<"$EPOCHREALTIME - $E2E_STARTED")"
start="$EPOCHREALTIME"
hack/node-install.sh leaderlock busybox elector go-controller
install="$(bc <<<"$EPOCHREALTIME - $start")"
setup="$(printf 'control plane and 2 nodes up in %.1f s, images and chart in %.1f s.' "$up" "$install")"
log "set-up: $setup"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/leaderlock/Chart.yaml)"
exec "$E2E_BIN" -image "leaderlock.dev/leaderlock:$version" \
  -graceful "${E2E_GRACEFUL:-200}" -kills "${E2E_KILLS:-40}" -notready "${E2E_NOTREADY:-40}" \
  -ab-blocks "${E2E_AB_BLOCKS:-4}" -clientgo-handovers "${E2E_CLIENTGO_HANDOVERS:-40}" \
  -go-graceful "${E2E_GO_GRACEFUL:-20}" -go-kills "${E2E_GO_KILLS:-20}" -go-idle "${E2E_GO_IDLE:-60s}" \
  -node-hangs "${E2E_NODE_HANGS:-20}" -node-crashes "${E2E_NODE_CRASHES:-20}" \
  -kubelet-crashes "${E2E_KUBELET_CRASHES:-10}" -overlap-cap "${E2E_OVERLAP_CAP:-30s}" \
  -renewal-rounds "${E2E_RENEWAL_ROUNDS:-10}" -renew-deadline "${E2E_RENEW_DEADLINE:-10}" \
  -node-tuned "${E2E_NODE_TUNED:-0}" -tuned-node-lost-after "${E2E_TUNED_NODE_LOST_AFTER:-4}" \
  -phases "${E2E_PHASES:-leaderlock,clientgo,go,nodeloss}" -setup "$setup" \
  -chart "$ROOT/charts/leaderlock" -chart-values "$LEADERLOCK_NODE_DIR/chart-values.yaml" \
  -out "$ROOT/BENCHMARKS.md" -plot "$ROOT/BENCHMARKS-e2e-job-gap.png"
