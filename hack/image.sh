#!/usr/bin/env bash
# Builds the images the test node runs, with no container daemon and no registry: each is packed
# by tests/cluster/image/ocipack into an image tarball that `ctr images import` (or `docker load`,
# `skopeo copy docker-archive:…`) accepts.
#
#   hack/image.sh pause OUTDIR        leaderlock.dev/pause:local — the pod sandbox (pinned in containerd)
#   hack/image.sh busybox OUTDIR      leaderlock.dev/busybox:local — Debian's busybox-static, no libc
#   hack/image.sh leaderlock OUTDIR   leaderlock.dev/leaderlock:<chart appVersion> — the controller image
#   hack/image.sh elector OUTDIR      leaderlock.dev/elector:local — client-go's election, for comparison
#   hack/image.sh go-controller OUTDIR leaderlock.dev/go-controller:local — examples/go-controller alone
#
# The leaderlock image is what a user pushes: only the release binaries (and the kubectl plugin
# /kubectl-leaderlock), linked statically
# (crt-static on the gnu target) so that `leaderlock copy-self` hands a binary that runs in any
# workload image. It runs as 65532:65532 with entrypoint /leaderlock and command `controller`: the
# Dockerfile's final stage describes the same content (the e2e test checks it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TARGET=x86_64-unknown-linux-gnu
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/leaderlock/Chart.yaml")"

tool_dir() { sed -n "s/^$1=//p" <<<"$TOOLS"; }

# static_leaderlock: the release binary, statically linked; prints its path. The rustflags apply
# to the explicit --target only, so build scripts and proc-macros of host builds are untouched.
# LEADERLOCK_IMAGE_PROFILE=image-test (make test's e2e test) builds a lightly optimised one.
PROFILE="${LEADERLOCK_IMAGE_PROFILE:-release}"
static_leaderlock() {
  log "building the static binary (cargo build --profile $PROFILE --target $TARGET, crt-static)"
  # Called from a test, cargo's per-crate variables are in our environment; build scripts that
  # watch them (ring watches CARGO_PKG_NAME, …) would rebuild everything each time the caller
  # changes between a test and a shell.
  local v
  for v in $(compgen -e | grep -E '^(CARGO_(PKG|MANIFEST|CRATE|BIN|PRIMARY|TARGET_TMPDIR)|OUT_DIR$)'); do unset "$v"; done
  (cd "$ROOT" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    nice cargo build --profile "$PROFILE" --locked --target "$TARGET" --bin leaderlock --bin kubectl-leaderlock >&2) \
    || die "cargo build of the static leaderlock binaries failed (see above)"
  local bin="$ROOT/target/$TARGET/$PROFILE/leaderlock" b
  # The kubectl plugin (docs/contract.md §5.8) ships next to it, built the same way.
  for b in "$bin" "$(dirname "$bin")/kubectl-leaderlock"; do
    file "$b" | grep -Eq 'statically linked|static-pie linked' || die "$b is not statically linked: $(file -b "$b")"
  done
  echo "$bin"
}

# elector: the client-go leader-election peer of tests/bench, built static (CGO_ENABLED=0) and
# cached on the module's pins and sources; prints its path.
elector() {
  local mod="$ROOT/tests/bench" key out
  key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/elector/*.go | sha256sum | cut -c1-16)"
  out="$CACHE_DIR/bin/elector-$key"
  if [[ ! -f "$out/.complete" ]]; then
    log "building the client-go elector peer (tests/bench/elector)"
    mkdir -p "$out"
    (cd "$mod" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly nice go build -trimpath \
      -ldflags "-s -w" -o "$out/elector" ./elector >&2) || die "go build ./elector failed"
    touch "$out/.complete"
  fi
  echo "$out/elector"
}

# go_controller: examples/go-controller built static (CGO_ENABLED=0), cached on its sources and
# those of the clients/go module it replaces in; prints its path.
go_controller() {
  local mod="$ROOT/examples/go-controller" key out
  key="$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/*.go "$ROOT/clients/go/go.mod" "$ROOT/clients/go/go.sum" \
    $(find "$ROOT/clients/go" -name '*.go' ! -name '*_test.go' | sort) | sha256sum | cut -c1-16)"
  out="$CACHE_DIR/bin/go-controller-$key"
  if [[ ! -f "$out/.complete" ]]; then
    log "building the Go controller example (examples/go-controller)"
    mkdir -p "$out"
    (cd "$mod" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly nice go build -trimpath \
      -ldflags "-s -w" -o "$out/go-controller" . >&2) || die "go build examples/go-controller failed"
    touch "$out/.complete"
  fi
  echo "$out/go-controller"
}

busybox_args() {
  local bb applet
  bb="$(command -v busybox)" || die "busybox is not installed (apt-get install busybox-static)"
  file -L "$bb" | grep -q 'statically linked' || die "$bb is not static (install busybox-static)"
  echo "-add=$bb=/bin/busybox"
  for applet in $("$bb" --list); do
    [[ "$applet" == busybox ]] || echo "-symlink=/bin/$applet=busybox"
  done
  echo "-dir=/tmp"
  echo "-env=PATH=/bin"
  echo "-cmd=sh"
}

pack() {
  local out="$1" ref="$2"; shift 2
  "$(tool_dir image)/ocipack" -o "$out.tmp" -ref "$ref" "$@" >/dev/null || die "ocipack failed for $ref"
  mv "$out.tmp" "$out"
  log "image $ref -> $out"
}

kind="${1:-}" outdir="${2:-}"
[[ -n "$kind" && -n "$outdir" ]] || die "usage: $0 pause|busybox|leaderlock|elector|go-controller OUTDIR"
TOOLS="$("$ROOT/hack/build-tools.sh" node)"
mkdir -p "$outdir"
case "$kind" in
  pause)
    pack "$outdir/pause.tar" leaderlock.dev/pause:local -add="$(tool_dir image)/pause=/pause" -entrypoint=/pause -user=65535:65535 ;;
  busybox)
    mapfile -t args < <(busybox_args)
    pack "$outdir/busybox.tar" leaderlock.dev/busybox:local "${args[@]}" ;;
  leaderlock)
    bin="$(static_leaderlock)"
    pack "$outdir/leaderlock.tar" "leaderlock.dev/leaderlock:$APP_VERSION" -add="$bin=/leaderlock" \
      -add="$(dirname "$bin")/kubectl-leaderlock=/kubectl-leaderlock" \
      -user=65532:65532 -entrypoint=/leaderlock -cmd=controller ;;
  elector)
    mapfile -t args < <(busybox_args)
    pack "$outdir/elector.tar" leaderlock.dev/elector:local "${args[@]}" -add="$(elector)=/bin/elector" ;;
  go-controller)
    pack "$outdir/go-controller.tar" leaderlock.dev/go-controller:local -add="$(go_controller)=/go-controller" \
      -user=65532:65532 -entrypoint=/go-controller ;;
  *) die "usage: $0 pause|busybox|leaderlock|elector|go-controller OUTDIR" ;;
esac
