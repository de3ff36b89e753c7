#!/usr/bin/env bash
# make bench: LeaderLock side by side with the TryLock polling loop, etcd's concurrency.Mutex and
# client-go leader election, on one loopback control plane in one run. Builds the release binary
# and the Go harness + client-go peer (tests/bench), then runs the harness inside
# `hack/cluster.sh run`. Writes BENCHMARKS.md; the last stdout line is "BENCH key=value ...".
# Exits non-zero, after writing the report, when a figure LeaderLock promises is not 0 (idle
# writes, holder/role changes and lock-key writes across a restart).
# Knobs: BENCH_IDLE_LOCKS, BENCH_IDLE_SECONDS, BENCH_HANDOVERS, BENCH_SLOW_HANDOVERS, BENCH_LANES, BENCH_SCALE,
# BENCH_TRYLOCK_INTERVAL, BENCH_APISERVER_PROFILE_SECONDS, BENCH_PHASES, BENCH_PRICE_SIZES, BENCH_PRICE_MODES,
# BENCH_KEEP_LOGS (see tests/bench/compare/main.go).
# The kube-apiserver CPU profile is summarised with `go tool pprof` (Go is already needed here).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

log "building leaderlock (cargo build --release --locked)"
nice cargo build --release --locked >&2

# The Go side: cached like hack/build-tools.sh, keyed on the module's pins and its sources.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
mod="$ROOT/tests/bench"
key="$(cat "$mod/go.mod" "$mod/go.sum" $(find "$mod" -name '*.go' | sort) | sha256sum | cut -c1-16)"
out="$CACHE_DIR/bin/bench-$key"
log "testing the harness's own logic (go test ./compare)"
(cd "$mod" && nice go test ./compare/ >&2) || die "the bench harness's unit tests failed"
if [[ -f "$out/.complete" ]]; then
  log "bench harness and client-go peer cached in $out"
else
  mkdir -p "$out"
  for pkg in elector compare; do
    log "building $pkg (tests/bench/$pkg) — a cold client-go build takes minutes on 2 cores"
    (cd "$mod" && nice go build -trimpath -o "$out/$pkg.tmp" "./$pkg") || die "go build ./$pkg failed"
    mv "$out/$pkg.tmp" "$out/$pkg"
  done
  touch "$out/.complete"
  # Builds for older harness sources are never used again.
  find "$CACHE_DIR/bin" -maxdepth 1 -name 'bench-*' ! -path "$out" -exec rm -rf {} +
fi
hack/build-tools.sh >/dev/null # etcd, the trylock and mutex peers, kube-apiserver, kubectl (cached)

exec hack/cluster.sh run -- "$out/compare" \
  -out "$ROOT/BENCHMARKS.md" \
  -crd "$ROOT/crds/" \
  -controller "$ROOT/target/release/leaderlock" \
  -elector "$out/elector"
