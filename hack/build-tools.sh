#!/usr/bin/env bash
# Builds the pinned control-plane tools (kube-apiserver, kube-controller-manager, kubectl,
# etcd, etcdctl, our Go peers) from the Go wrapper modules under tests/cluster/, once per pin.
# `hack/build-tools.sh node` also builds what a real node needs: kubelet and kube-scheduler (same
# Kubernetes pin), containerd v2 with ctr and the runc shim, the CNI plugins, and the image packer.
# Prints the folder holding the binaries of each module, as NAME=DIR lines, on stdout.
# On stderr it says what it built, and once which modules were cached. Callers that run it again
# in the same run (hack/cluster.sh after `make deps`, hack/image.sh inside a cluster) set
# LEADERLOCK_TOOLS_QUIET=1: the cached modules are then not listed again (builds still are).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

command -v go >/dev/null || die "go is not installed; install Go >= 1.26 (this machine kind ships it)"

# Only the binaries are kept: a cold Kubernetes build fills ~3 GB of Go build cache, which would
# otherwise stay behind on a test machine for nothing. A private one is made when something must be
# built and removed however this script ends. Set GOCACHE yourself to keep (and reuse) a build cache.
use_private_gocache() {
  [[ -n "${GOCACHE:-}" ]] && return 0
  mkdir -p "$CACHE_DIR"
  GOCACHE="$(mktemp -d "$CACHE_DIR/go-build.XXXXXX")"
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
}

# build_module NAME VERSION_LDFLAGS PKG...: go build every PKG of tests/cluster/NAME into its cache dir.
build_module() {
  local name="$1" ldflags="$2"; shift 2
  local mod="$ROOT/tests/cluster/$name" out
  out="$(bin_dir_for "$mod")"
  if [[ -f "$out/.complete" ]]; then
    cached+=("$name")
  else
    use_private_gocache
    mkdir -p "$out"
    for pkg in "$@"; do
      local bin="${pkg##*/}"
      [[ "$pkg" == */server/v3 ]] && bin=etcd
      [[ "$pkg" == */etcdctl/v3 ]] && bin=etcdctl
      log "building $bin ($pkg) — a cold build takes minutes on 2 cores"
      local start=$SECONDS
      (cd "$mod" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out/$bin.tmp" "$pkg") \
        || die "go build $pkg failed (see above); the pins live in $mod/go.mod"
      mv "$out/$bin.tmp" "$out/$bin"
      log "built $bin in $((SECONDS - start))s"
    done
    touch "$out/.complete"
  fi
  echo "$name=$out"
}

cached=()

K8S_VERSION="v1.36.3"
kv="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"
kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=36"

build_module etcd "" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 ./trylock ./mutex
build_module k8s "$kv" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-controller-manager
build_module helm "-X helm.sh/helm/v3/internal/version.version=v3.22.0 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37" helm.sh/helm/v3/cmd/helm

# The node's tools only when asked: `make test` without the e2e suite never pays for them.
if [[ "${1:-}" == node ]]; then
  build_module node "$kv" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
  build_module containerd "-X github.com/containerd/containerd/v2/version.Version=v2.4.2" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/meta/portmap
  build_module image "" ./ocipack ./pause
fi
if ((${#cached[@]})) && [[ -z "${LEADERLOCK_TOOLS_QUIET:-}" ]]; then
  log "tools cached in $CACHE_DIR/bin: ${cached[*]}"
fi
