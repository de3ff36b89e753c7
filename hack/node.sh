#!/usr/bin/env bash
# Real nodes next to the control plane of hack/cluster.sh: each one containerd v2 (runc from
# Debian), its CNI bridge and a kubelet, registered as node "127.0.0.K" (K = 1, 2, …).
# hack/cluster.sh sources this file when LEADERLOCK_NODE=1 (LEADERLOCK_NODES=N for N nodes; its
# start/wait_for helpers and $DIR are used, so every process has the same parent-death signal
# and pid file as the control plane's) and calls:
#
#   node_net_up    create each node's pod bridge; prints the host's address on the first one
#   node_up        start every node's containerd (images imported) and kubelet; the control
#                  plane is up
#   node_down DIR  stop them and remove everything they left, inside DIR or not: node_stop DIR,
#                  then node_net_down DIR (the bridges), which hack/cluster.sh calls apart so
#                  that its control plane stops in between
#
# `hack/node.sh down DIR` runs node_down by hand. Node K lives in DIR/node-K (its logs and pid
# files too) and everything of it is named after its slot N (bridge llbrN, subnet
# 10.244.N.0/24, cgroup root /leaderlock-N), recorded in DIR/node-K/slot, so the teardown of a
# run killed with SIGKILL finds it all: the containers and shims (which outlive their parents by
# design) are killed through the cgroups they sit in, mounts under DIR are unmounted, cgroups
# removed, the bridges deleted.
#
# Every process of a node sits in its cgroup root in the freezer, pids, cpuacct and memory
# hierarchies: the kubelet and containerd (and so the shims, which containerd starts) in
# /leaderlock-N/runtime, the containers under /leaderlock-N/kubepods. Freezing
# /sys/fs/cgroup/freezer/leaderlock-N stops the whole node at once (a hung machine: `make e2e`
# does it), and cpuacct.usage there is the node's CPU time.
#
# Knobs: LEADERLOCK_KUBELET_SYNC_FREQUENCY (the kubelet's syncFrequency; unset: the kubelet's own
# default, 1m, which every published figure uses; set it only to experiment), LEADERLOCK_KUBELET_V
# (its log verbosity, default 1; 4 shows each pod update, sync, remount and atomic-writer decision).
#
# Network: pods get an address on their node's bridge and no default route; ip_forward is not
# touched and there is no NAT. The apiserver and the lock etcd listen on the host's address on
# the first node's bridge; the pods of other nodes get one route, to that address alone, through
# their own bridge's host address (the host delivers it locally: no forwarding). A pod reaches
# the host there and the pods of its own node, nothing else.

CG_NAMES=(blkio cpu cpuacct cpuset devices freezer hugetlb memory net_cls net_prio perf_event pids rdma systemd unified)

# cgroup_dirs SLOT: the run's cgroup root in every mounted hierarchy.
cgroup_dirs() {
  local n
  for n in "${CG_NAMES[@]}"; do
    [[ -d "/sys/fs/cgroup/$n" ]] && echo "/sys/fs/cgroup/$n/leaderlock-$1"
  done
  return 0
}

# The hierarchies a node's processes are placed in: what the faults and the figures need
# (freezer: hang the node; pids: find every process; cpuacct, memory: its cost).
RUNTIME_CG_NAMES=(freezer pids cpuacct memory)

# node_dirs DIR: the dir of every node of the run in DIR that has a slot (DIR/node is where a
# single node lived before nodes were numbered: a run killed then is still torn down).
node_dirs() {
  local d
  for d in "$1"/node "$1"/node-*; do
    [[ -f "$d/slot" ]] && echo "$d"
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
  local k n="${LEADERLOCK_NODES:-1}" node slot first=""
  [[ -f /sys/fs/cgroup/cgroup.controllers ]] && die "cgroup v2 hosts are not supported by hack/node.sh yet (this machine kind mounts v1)"
  [[ "$n" =~ ^[1-9]$ ]] || die "LEADERLOCK_NODES=$n: give a number of nodes from 1 to 9"
  for k in $(seq 1 "$n"); do
    node="$DIR/node-$k"
    mkdir -p "$node"
    slot="$(pick_slot)"
    ip link add "llbr$slot" type bridge
    echo "$slot" >"$node/slot"
    echo "127.0.0.$k" >"$node/name"
    ip addr add "10.244.$slot.1/24" dev "llbr$slot"
    ip link set "llbr$slot" up
    first="${first:-10.244.$slot.1}"
  done
  echo "$first"
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
  for d in "${RUNTIME_CG_NAMES[@]}"; do
    mkdir -p "/sys/fs/cgroup/$d/leaderlock-$SLOT/runtime"
  done
}

# runtime_wrap: sets IN_RUNTIME to a command prefix that moves the process into the node's
# runtime cgroups before it execs the rest, so nothing it starts escapes them.
runtime_wrap() {
  local d dirs=()
  for d in "${RUNTIME_CG_NAMES[@]}"; do dirs+=("/sys/fs/cgroup/$d/leaderlock-$SLOT/runtime"); done
  # shellcheck disable=SC2016 # expanded by the inner bash
  IN_RUNTIME=(bash -c 'for d in $1; do echo $$ >"$d/cgroup.procs"; done; exec "${@:2}"' _ "${dirs[*]}")
}

write_containerd_config() {
  local runc routes=""
  runc="$(command -v runc)" || die "runc is not installed (apt-get install runc)"
  mkdir -p "$NODE/cni/conf" "$NODE/containerd"
  # Pods of another node than the first reach the host's address on the first bridge (the
  # apiserver, the lock etcd) through their own bridge's host address, delivered locally.
  [[ "10.244.$SLOT.1" == "$HOST_IP" ]] || routes=", \"routes\": [{\"dst\": \"$HOST_IP/32\", \"gw\": \"10.244.$SLOT.1\"}]"
  cat >"$NODE/cni/conf/10-leaderlock.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "leaderlock-$SLOT",
  "plugins": [{
    "type": "bridge", "bridge": "llbr$SLOT", "isGateway": false, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$NODE/cni/ipam",
             "ranges": [[{"subnet": "10.244.$SLOT.0/24", "gateway": "10.244.$SLOT.1"}]]$routes}
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
address: $NODE_NAME
port: $kport
healthzBindAddress: $NODE_NAME
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

# node_of DIR: sets NODE (DIR), K (its number: DIR is DIR/node-K), SLOT and NODE_NAME.
node_of() {
  NODE="$1"
  [[ -f "$NODE/slot" ]] || die "$NODE/slot missing: node_net_up must run first"
  K="${NODE##*/node-}"
  SLOT="$(cat "$NODE/slot")"
  NODE_NAME="$(cat "$NODE/name")"
}

start_containerd() {
  # containerd starts in the node's runtime cgroups, so its shims (which outlive it by design)
  # stay findable there; the shim must be on containerd's PATH.
  runtime_wrap
  start "node-$K/containerd" "${IN_RUNTIME[@]}" \
    env PATH="$CONTAINERD_BIN_DIR:$PATH" "$CONTAINERD_BIN_DIR/containerd" --config "$NODE/containerd/config.toml"
}

start_kubelet() {
  runtime_wrap
  start "node-$K/kubelet" "${IN_RUNTIME[@]}" "$NODE_BIN_DIR/kubelet" --config "$NODE/kubelet.yaml" \
    --kubeconfig "$DIR/kubeconfig" --root-dir "$NODE/kubelet" --cert-dir "$NODE/kubelet-pki" \
    --hostname-override "$NODE_NAME" --v "${LEADERLOCK_KUBELET_V:-1}"
}

# import_images IMAGES_DIR: import the pause image (built once, in the first node's dir, cached by
# content) and the run's other images there into the node's containerd.
import_images() {
  local tar out
  for tar in "$1"/*.tar; do
    # ctr relays containerd's deprecation warnings (cgroup v1, which this machine kind mounts);
    # they are not a problem here and hack/node-install.sh drops them too.
    out="$("$CONTAINERD_BIN_DIR/ctr" -a "$NODE/containerd.sock" -n k8s.io images import --local "$tar" 2>&1 >/dev/null)" \
      || die "importing $tar into containerd failed: $out (see $NODE/containerd.log)"
    out="$(grep -v DEPRECATION <<<"$out" || true)"
    [[ -z "$out" ]] || printf '%s\n' "$out" >&2
  done
}

# node_up: every node's containerd, then images, then every kubelet, then wait for all of them
# Ready (the nodes start side by side: most of a kubelet's start-up is waiting).
node_up() {
  local nodes images="$DIR/node-1/images" node
  mapfile -t nodes < <(node_dirs "$DIR")
  ((${#nodes[@]})) || die "no node dir with a slot in $DIR: node_net_up must run first"
  "$ROOT/hack/image.sh" pause "$images"
  for node in "${nodes[@]}"; do
    node_of "$node"
    make_cgroups
    write_containerd_config
    write_kubelet_config
    log "starting containerd and kubelet (node $NODE_NAME, pods on llbr$SLOT 10.244.$SLOT.0/24) in $NODE"
    start_containerd
  done
  for node in "${nodes[@]}"; do
    node_of "$node"
    wait_for "node-$K/containerd" 60 "$CONTAINERD_BIN_DIR/ctr" -a "$NODE/containerd.sock" version
    import_images "$images"
    start_kubelet
  done
  for node in "${nodes[@]}"; do
    node_of "$node"
    wait_for "node-$K/kubelet" 120 "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig" wait --for=condition=Ready --timeout=1s "node/$NODE_NAME"
  done
  cat >>"$DIR/env" <<ENV
export LEADERLOCK_NODE_DIR=${nodes[0]}
export LEADERLOCK_NODE_DIRS="${nodes[*]}"
export LEADERLOCK_NODE_BIN_DIR=$NODE_BIN_DIR
export LEADERLOCK_CONTAINERD_BIN_DIR=$CONTAINERD_BIN_DIR
export LEADERLOCK_IMAGE_BIN_DIR=$IMAGE_BIN_DIR
export CONTAINERD_ADDRESS=${nodes[0]}/containerd.sock
export CONTAINERD_NAMESPACE=k8s.io
export PATH=$NODE_BIN_DIR:$CONTAINERD_BIN_DIR:$IMAGE_BIN_DIR:\$PATH
ENV
  log "${#nodes[@]} node(s) ready"
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

# kill_cgroup_procs: SIGKILL every process in the node's cgroups (containers, shims, and the
# kubelet and containerd if still there), until none is left; they are ours alone: the cgroup
# root is named after the node's slot.
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

# thaw: a node the harness froze (a hung machine) and left frozen, when it was killed, is
# thawed first: a frozen process dies of SIGKILL only once thawed.
thaw() {
  local f="/sys/fs/cgroup/freezer/leaderlock-$SLOT/freezer.state"
  [[ -f "$f" ]] && echo THAWED >"$f" 2>/dev/null || true
}

# node_stop DIR: stop every node's kubelet, containerd and containers, and remove what they
# left; the pod bridges stay. hack/cluster.sh stops its control plane between node_stop and
# node_net_down: the apiserver and the lock etcd listen on the first bridge's address too, and
# with that address gone their connections to themselves (the apiserver's loopback client,
# etcd's gRPC gateway) never close, and their graceful shutdown outlasted stop_pid's 5 s grace.
node_stop() {
  local NODE SLOT
  for NODE in $(node_dirs "$1"); do
    SLOT="$(cat "$NODE/slot")"
    thaw
    stop_pid kubelet "$NODE"
    stop_pid containerd "$NODE" # its shims and containers live on, in the node's cgroups
    kill_cgroup_procs
    unmount_under "$NODE"
    remove_cgroups
    remove_outside
  done
}

# node_net_down DIR: delete the pod bridges, last.
node_net_down() {
  local node
  for node in $(node_dirs "$1"); do
    ip link del "llbr$(cat "$node/slot")" 2>/dev/null || true
    rm -f "$node/slot"
  done
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
