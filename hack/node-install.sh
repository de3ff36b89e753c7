#!/usr/bin/env bash
# Inside `LEADERLOCK_NODE=1 hack/cluster.sh run`: build the images (hack/image.sh), import them
# into every node's containerd, and `helm install` the chart with the image built here. With
# several nodes (LEADERLOCK_NODES) the controller's replicas are placed on the first node: the
# node-loss faults of `make e2e` hit the others, and measure the workload's failover alone.
#
#   hack/node-install.sh [IMAGE_KIND...]    default: leaderlock busybox
#
# Pods reach the apiserver and the lock etcd at the host's pod-bridge address (no kube-proxy
# runs here), so the values set etcd.endpoints and KUBERNETES_SERVICE_HOST/PORT besides the image.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -n "${LEADERLOCK_NODE_DIR:-}" ]] || die "run inside LEADERLOCK_NODE=1 hack/cluster.sh run"

kinds=("$@")
((${#kinds[@]})) || kinds=(leaderlock busybox)
# Each ctr call relays containerd's deprecation warning about cgroup v1, which this machine kind
# mounts: not a problem here, so it is dropped.
read -ra nodes <<<"${LEADERLOCK_NODE_DIRS:-$LEADERLOCK_NODE_DIR}"
for kind in "${kinds[@]}"; do
  "$ROOT/hack/image.sh" "$kind" "$LEADERLOCK_NODE_DIR/images"
  for node in "${nodes[@]}"; do
    ctr -a "$node/containerd.sock" images import --local "$LEADERLOCK_NODE_DIR/images/$kind.tar" 2>&1 | grep -v DEPRECATION >&2 || true
    grep -q "^leaderlock.dev/$kind:" <<<"$(ctr -a "$node/containerd.sock" images ls -q 2> >(grep -v DEPRECATION >&2))" \
      || die "image $kind did not import into the containerd of $node"
  done
done

values="$LEADERLOCK_NODE_DIR/chart-values.yaml"
cat >"$values" <<YAML
image: {repository: leaderlock.dev/leaderlock, pullPolicy: Never}
etcd: {endpoints: ["$LEADERLOCK_POD_ETCD_ENDPOINTS"]}
extraEnv:
- {name: KUBERNETES_SERVICE_HOST, value: "$LEADERLOCK_POD_APISERVER_HOST"}
- {name: KUBERNETES_SERVICE_PORT, value: "$LEADERLOCK_POD_APISERVER_PORT"}
YAML
if ((${#nodes[@]} > 1)); then
  echo "nodeSelector: {kubernetes.io/hostname: \"$(cat "${nodes[0]}/name")\"}" >>"$values"
fi
log "helm install leaderlock charts/leaderlock (2 replicas) with the image built here"
start=$SECONDS
helm install leaderlock "$ROOT/charts/leaderlock" -n leaderlock-system --create-namespace \
  --wait --timeout 180s -f "$values" >&2
log "chart ready in $((SECONDS - start))s"
