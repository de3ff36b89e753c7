#!/usr/bin/env bash
# A real node next to the control plane of hack/cluster.sh: containerd v2 (runc from Debian), the
# CNI bridge, and a kubelet registered as node "127.0.0.1". hack/cluster.sh sources this file
# when LEADERLOCK_NODE=1 (its start/wait_for helpers and $DIR are used, so every process has the
# same parent-death signal and pid file as the control plane's) and calls:
#
#   node_net_up    create the pod bridge; prints the host's address on it
#   node_up        start containerd (images imported) and the kubelet; the control plane is up
#   node_down DIR  stop them and remove everything they left, inside DIR or not: node_stop DIR,
#                  then node_net_down DIR (the bridge), which hack/cluster.sh calls apart so that
#                  its control plane stops in between
#
# `hack/node.sh down DIR` runs node_down by hand. Everything is named after the run's slot N
# (bridge llbrN, subnet 10.244.N.0/24, cgroup root /leaderlock-N), recorded in DIR/node/slot, so
# the teardown of a run killed with SIGKILL finds it all: the containers and shims (which outlive
# their parents by design) are killed through the cgroups they sit in, mounts under DIR are
# unmounted, cgroups removed, the bridge deleted.
#
# Knobs: LEADERLOCK_KUBELET_SYNC_FREQUENCY (the kubelet's syncFrequency; unset: the kubelet's own
# default, 1m, which every published figure uses; set it only to experiment), LEADERLOCK_KUBELET_V
# (its log verbosity, default 1; 4 shows each pod update, sync, remount and atomic-writer decision).
#
# Network: pods get an address on the bridge and no default route; ip_forward is not touched and
# there is no NAT: a pod reaches the host's bridge address (where the harness binds the apiserver
# and the lock etcd) and other pods, nothing else.

CG_NAMES=(blkio cpu cpuacct cpuset devices freezer hugetlb memory net_cls net_prio perf_event pids rdma systemd unified)

# cgroup_dirs SLOT: the run's cgroup root in every mounted hierarchy.
cgroup_dirs() {
  local n
  for n in "${CG_NAMES[@]}"; do
    [[ -d "/sys/fs/cgroup/$n" ]] && echo "/sys/fs/cgroup/$n/leaderlock-$1"
  done
  return 0
}

# pick_slot: the first N with no bridge llbrN on this machine.
pick_slot() {
  local n
  for n in $(seq 0 199); do
    ip link show "llbr$n" >/dev/null 2>&1 || { echo "$n"; return; }
  done
  die "no free pod bridge slot (llbr0..llbr199 all exist); run hack/node.sh down on old runs"
}

node_net_up() {
  local slot
  NODE="$DIR/node"
  [[ -f /sys/fs/cgroup/cgroup.controllers ]] && die "cgroup v2 hosts are not supported by hack/node.sh yet (this machine kind mounts v1)"
  mkdir -p "$NODE"
  slot="$(pick_slot)"
  echo "$slot" >"$NODE/slot"
  ip link add "llbr$slot" type bridge
  ip addr add "10.244.$slot.1/24" dev "llbr$slot"
  ip link set "llbr$slot" up
  echo "10.244.$slot.1"
}

make_cgroups() {
  local d parent
  for d in $(cgroup_dirs "$SLOT"); do
    mkdir -p "$d"
    if [[ "$d" == */cpuset/* ]]; then
      parent="$(dirname "$d")"
      cat "$parent/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$parent/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
  mkdir -p "/sys/fs/cgroup/pids/leaderlock-$SLOT/runtime"
}

write_containerd_config() {
  local runc
  runc="$(command -v runc)" || die "runc is not installed (apt-get install runc)"
  mkdir -p "$NODE/cni/conf" "$NODE/containerd"
  cat >"$NODE/cni/conf/10-leaderlock.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "leaderlock-$SLOT",
  "plugins": [{
    "type": "bridge", "bridge": "llbr$SLOT", "isGateway": false, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$NODE/cni/ipam",
             "ranges": [[{"subnet": "10.244.$SLOT.0/24", "gateway": "10.244.$SLOT.1"}]]}
  }]
}
CNI
  cat >"$NODE/containerd/config.toml" <<TOML
version = 3
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri"]

[grpc]
  address = "$NODE/containerd.sock"
[ttrpc]
  address = "$NODE/containerd.sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "$NODE/containerd/opt"

[plugins.'io.containerd.cri.v1.runtime']
  # This VM refuses a negative oom_score_adj: without this every pod sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CONTAINERD_BIN_DIR"]
    conf_dir = "$NODE/cni/conf"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$runc"
        Root = "$NODE/runc"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "leaderlock.dev/pause:local"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
}

write_kubelet_config() {
  local kport hport
  kport="$(free_port)" hport="$(free_port)"
  mkdir -p "$NODE/kubelet" "$NODE/pod-logs" "$NODE/volume-plugins"
  cat >"$NODE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine mounts cgroup v1 and has no systemd as PID 1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /leaderlock-$SLOT
failSwapOn: false
address: 127.0.0.1
port: $kport
healthzBindAddress: 127.0.0.1
healthzPort: $hport
readOnlyPort: 0
enforceNodeAllocatable: []
podLogsDir: $NODE/pod-logs
volumePluginDir: $NODE/volume-plugins
containerRuntimeEndpoint: unix://$NODE/containerd.sock
imageServiceEndpoint: unix://$NODE/containerd.sock
# No DNS inside pods: nothing they run resolves names, and no query may leave the machine.
resolvConf: ""
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
# A shared development disk is often fuller than the kubelet's defaults tolerate: never evict
# or garbage-collect the images built for this run.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
  # The kubelet's default syncFrequency (1m) unless asked: users cannot tune their kubelets.
  if [[ -n "${LEADERLOCK_KUBELET_SYNC_FREQUENCY:-}" ]]; then
    echo "syncFrequency: $LEADERLOCK_KUBELET_SYNC_FREQUENCY" >>"$NODE/kubelet.yaml"
  fi
}

start_containerd() {
  # containerd starts in the run's own cgroup, so its shims (which outlive it by design) stay
  # findable there; the shim must be on containerd's PATH.
  start containerd bash -c 'echo $$ >"$1/cgroup.procs" && exec "${@:2}"' _ \
    "/sys/fs/cgroup/pids/leaderlock-$SLOT/runtime" \
    env PATH="$CONTAINERD_BIN_DIR:$PATH" "$CONTAINERD_BIN_DIR/containerd" --config "$NODE/containerd/config.toml"
  wait_for containerd 60 "$CONTAINERD_BIN_DIR/ctr" -a "$NODE/containerd.sock" version
}

start_kubelet() {
  start kubelet "$NODE_BIN_DIR/kubelet" --config "$NODE/kubelet.yaml" --kubeconfig "$DIR/kubeconfig" \
    --root-dir "$NODE/kubelet" --cert-dir "$NODE/kubelet-pki" --hostname-override 127.0.0.1 --v "${LEADERLOCK_KUBELET_V:-1}"
  wait_for kubelet 120 "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig" wait --for=condition=Ready --timeout=1s node/127.0.0.1
}

# import_images: build (cached by content) and import the pause image and the run's other images.
import_images() {
  "$ROOT/hack/image.sh" pause "$NODE/images"
  local tar out
  for tar in "$NODE"/images/*.tar; do
    # ctr relays containerd's deprecation warnings (cgroup v1, which this machine kind mounts);
    # they are not a problem here and hack/node-install.sh drops them too.
    out="$("$CONTAINERD_BIN_DIR/ctr" -a "$NODE/containerd.sock" -n k8s.io images import --local "$tar" 2>&1 >/dev/null)" \
      || die "importing $tar into containerd failed: $out (see $DIR/containerd.log)"
    out="$(grep -v DEPRECATION <<<"$out" || true)"
    [[ -z "$out" ]] || printf '%s\n' "$out" >&2
  done
}

node_up() {
  NODE="$DIR/node"
  [[ -f "$NODE/slot" ]] || die "$NODE/slot missing: node_net_up must run first"
  SLOT="$(cat "$NODE/slot")"
  make_cgroups
  write_containerd_config
  write_kubelet_config
  log "starting containerd and kubelet (node 127.0.0.1, pods on llbr$SLOT 10.244.$SLOT.0/24) in $NODE"
  start_containerd
  import_images
  start_kubelet
  cat >>"$DIR/env" <<ENV
export LEADERLOCK_NODE_DIR=$NODE
export LEADERLOCK_NODE_BIN_DIR=$NODE_BIN_DIR
export LEADERLOCK_CONTAINERD_BIN_DIR=$CONTAINERD_BIN_DIR
export LEADERLOCK_IMAGE_BIN_DIR=$IMAGE_BIN_DIR
export CONTAINERD_ADDRESS=$NODE/containerd.sock
export CONTAINERD_NAMESPACE=k8s.io
export PATH=$NODE_BIN_DIR:$CONTAINERD_BIN_DIR:$IMAGE_BIN_DIR:\$PATH
ENV
  log "node ready"
}

# stop_pid NAME [RUNDIR]: TERM, then KILL after 5 s, the process recorded in RUNDIR/NAME.pid
# (RUNDIR defaults to $DIR). hack/cluster.sh stops its servers with it too. Every server here
# exits within a second of TERM when stopped in order (node_stop, the control plane, then
# node_net_down); one that still needs the KILL is named in a log line. Our own child is reaped
# here with its status unreported: bash would otherwise print "Killed" for its background job.
stop_pid() {
  local name="$1" pidf="${2:-$DIR}/$1.pid" pid
  [[ -f "$pidf" ]] || return 0
  pid="$(cat "$pidf")"
  if running "$pid" && kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "$name (pid $pid) still running 5 s after SIGTERM: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true # not our child (hack/node.sh down): returns at once
  fi
  rm -f "$pidf"
}

# kill_cgroup_procs: SIGKILL every process in the run's cgroups (containers, shims), until none
# is left; they are ours alone: the cgroup root is named after this run's slot.
kill_cgroup_procs() {
  local root="/sys/fs/cgroup/pids/leaderlock-$SLOT" pids i
  [[ -d "$root" ]] || return 0
  for i in $(seq 1 50); do
    pids="$(find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
    [[ -n "$pids" ]] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  log "processes still alive in $root after 5 s: $pids"
}

# unmount_under DIR: every mount point under DIR, deepest first (kubelet bind-mounts its root dir
# onto itself; pods' volumes, netns files and container rootfs are mounts too).
unmount_under() {
  local m
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

remove_cgroups() {
  local d
  for d in $(cgroup_dirs "$SLOT"); do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# remove_outside: what kubelet and containerd write outside their dirs (only this run's part).
remove_outside() {
  local f id tasks="$NODE/containerd/state/io.containerd.runtime.v2.task/k8s.io"
  # A shim killed with SIGKILL leaves its socket, named after containerd's address and the
  # sandbox id; CNI's loopback result is named after the sandbox id too.
  for id in $(ls "$tasks" 2>/dev/null); do
    for f in "$NODE/containerd.sock/k8s.io/$id" "$NODE/containerd.sock/k8s.io/$id/debug"; do
      rm -f "/run/containerd/s/$(printf %s "$f" | sha256sum | cut -c1-64)"
    done
    rm -f "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  for f in /var/log/containers/*.log; do
    [[ -L "$f" && "$(readlink "$f")" == "$NODE"/* ]] && rm -f "$f"
  done
  rm -f /var/lib/cni/results/"leaderlock-$SLOT"-* 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock 2>/dev/null || true
  for f in /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers /var/lib/cni/results /var/lib/cni \
    /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd; do
    rmdir "$f" 2>/dev/null || true  # only when empty: another node on this machine may use them
  done
}

# node_stop DIR: stop the kubelet, containerd and every container, and remove what they left;
# the pod bridge stays. hack/cluster.sh stops its control plane between node_stop and
# node_net_down: the apiserver and the lock etcd listen on the bridge's address too, and with
# that address gone their connections to themselves (the apiserver's loopback client, etcd's
# gRPC gateway) never close, and their graceful shutdown outlasted stop_pid's 5 s grace.
node_stop() {
  local DIR="$1"
  local NODE="$DIR/node"
  [[ -f "$NODE/slot" ]] || return 0
  SLOT="$(cat "$NODE/slot")"
  stop_pid kubelet
  stop_pid containerd # its shims and containers live on, in the run's cgroup
  kill_cgroup_procs
  unmount_under "$NODE"
  remove_cgroups
  remove_outside
}

# node_net_down DIR: delete the pod bridge, last.
node_net_down() {
  local NODE="$1/node"
  [[ -f "$NODE/slot" ]] || return 0
  ip link del "llbr$(cat "$NODE/slot")" 2>/dev/null || true
  rm -f "$NODE/slot"
}

node_down() {
  node_stop "$1"
  node_net_down "$1"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  source "$(dirname "$0")/lib.sh"
  [[ "${1:-}" == down && -n "${2:-}" ]] || die "usage: $0 down DIR (a node is started by LEADERLOCK_NODE=1 hack/cluster.sh)"
  node_down "$2"
fi
