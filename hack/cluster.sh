#!/usr/bin/env bash
# A real control plane on loopback: etcd for the apiserver, a separate etcd for locks,
# kube-apiserver (TLS, RBAC, ServiceAccount tokens) and kube-controller-manager (GC + namespaces).
#
#   hack/cluster.sh up [DIR]        start; writes DIR/kubeconfig and DIR/env (source it)
#   hack/cluster.sh down [DIR]      stop everything started in DIR, remove its data
#   hack/cluster.sh run -- CMD...   start in a temp DIR, run CMD with the env, always tear down
#   hack/cluster.sh second-apiserver
#                                   in a running control plane (its env sourced): start a second
#                                   kube-apiserver, a second cluster on the same storage etcd under
#                                   another --etcd-prefix; writes DIR/kubeconfig-second (stopped
#                                   with the rest)
#
# With LEADERLOCK_NODE=1 a real node joins (hack/node.sh: containerd, CNI bridge, kubelet), with
# kube-scheduler and the kube-controller-manager controllers a Deployment and a Service need; the
# apiserver and the lock etcd then also listen on the host's pod-bridge address, so pods reach them.
# LEADERLOCK_NODES=N (implies LEADERLOCK_NODE=1) starts N such nodes, 127.0.0.1 … 127.0.0.N.
#
# DIR defaults to .cache/cluster in the clone. Every process is started with a parent-death
# signal where a parent stays alive (run), and its pid is recorded so `down` (or the next `up`)
# finds it: no orphans survive a failed or interrupted test.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/node.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CMD...: start CMD in the background with its log in $DIR/NAME.log and pid in $DIR/NAME.pid.
start() {
  local name="$1"; shift
  if [[ -n "${PDEATHSIG:-}" ]]; then set -- setpriv --pdeathsig KILL "$@"; fi
  "$@" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# wait_for WHAT SECONDS CMD...: retry CMD until it succeeds or the deadline passes.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what not ready after ${secs}s; last log lines:"
      tail -n 20 "$DIR/$what.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

stop_all() {
  local dir="$1" name
  [[ -d "$dir" ]] || return 0
  node_stop "$dir" # containers, shims, kubelet, containerd, mounts, cgroups (if a node ran)
  # Stop in reverse dependency order so the apiserver never outlives its etcd for long.
  for name in kube-scheduler kube-controller-manager kube-apiserver-second kube-apiserver etcd-locks etcd-apiserver; do
    stop_pid "$name" "$dir"
  done
  node_net_down "$dir" # the pod bridge, once nothing listens on its address (see node_stop)
}

make_certs() {
  local d="$DIR/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=leaderlock-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc%s\n' "${HOST_IP:+,IP:$HOST_IP}" >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  # The admin identity: a client certificate in system:masters.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" \
    -keyout "$d/admin.key" -out "$d/admin.csr" 2>/dev/null
  # Extensions make it an X.509 v3 certificate; rustls (kube-rs) refuses v1.
  printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
  openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3 -extfile "$d/client.ext" -out "$d/admin.crt" 2>/dev/null
  # ServiceAccount token signing key (TokenRequest).
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

# write_kubeconfig [FILE PORT]: the admin kubeconfig for the apiserver on PORT (default: the first).
write_kubeconfig() {
  local d="$DIR/pki" file="${1:-$DIR/kubeconfig}" port="${2:-$API_PORT}"
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: leaderlock-test
  cluster:
    server: https://${HOST_IP:-127.0.0.1}:$port
    certificate-authority: $d/ca.crt
users:
- name: admin
  user:
    client-certificate: $d/admin.crt
    client-key: $d/admin.key
contexts:
- name: leaderlock-test
  context: {cluster: leaderlock-test, user: admin, namespace: default}
current-context: leaderlock-test
KC
}

start_etcd() {
  local name="$1" client="$2" peer="$3" listen="http://127.0.0.1:$2"
  # With a node, pods reach the lock etcd at the host's bridge address.
  [[ "$name" == etcd-locks && -n "${HOST_IP:-}" ]] && listen="$listen,http://$HOST_IP:$client"
  start "$name" "$ETCD_BIN_DIR/etcd" --name "$name" --data-dir "$DIR/$name.data" \
    --listen-client-urls "$listen" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$name=http://127.0.0.1:$peer" --log-level warn \
    --unsafe-no-fsync
}

up() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  stop_all "$DIR"  # a previous run killed hard may have left processes behind
  rm -rf "$DIR"/*.data "$DIR/pki"
  local tools
  [[ -n "${LEADERLOCK_NODES:-}" ]] && export LEADERLOCK_NODE=1
  tools="$("$ROOT/hack/build-tools.sh" ${LEADERLOCK_NODE:+node})"
  export LEADERLOCK_TOOLS_QUIET=1 # said once: hack/image.sh, in node_up and in CMD, asks again
  ETCD_BIN_DIR="$(sed -n 's/^etcd=//p' <<<"$tools")"
  K8S_BIN_DIR="$(sed -n 's/^k8s=//p' <<<"$tools")"
  HELM_BIN_DIR="$(sed -n 's/^helm=//p' <<<"$tools")"
  NODE_BIN_DIR="$(sed -n 's/^node=//p' <<<"$tools")"
  CONTAINERD_BIN_DIR="$(sed -n 's/^containerd=//p' <<<"$tools")"
  IMAGE_BIN_DIR="$(sed -n 's/^image=//p' <<<"$tools")"

  local e1 e1p e2 e2p
  e1=$(free_port) e1p=$(free_port) e2=$(free_port) e2p=$(free_port) API_PORT=$(free_port)
  HOST_IP=""
  if [[ -n "${LEADERLOCK_NODE:-}" ]]; then HOST_IP="$(node_net_up)"; fi
  log "starting etcd (apiserver storage :$e1, locks :$e2) and kube-apiserver :$API_PORT in $DIR"
  make_certs
  start_etcd etcd-apiserver "$e1" "$e1p"
  start_etcd etcd-locks "$e2" "$e2p"
  wait_for etcd-apiserver 30 curl -sf "http://127.0.0.1:$e1/health"
  wait_for etcd-locks 30 curl -sf "http://127.0.0.1:$e2/health"

  local d="$DIR/pki"
  start_apiserver kube-apiserver "$API_PORT" "http://127.0.0.1:$e1"
  write_kubeconfig
  wait_for kube-apiserver 120 "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /readyz

  local controllers=garbagecollector,namespace
  [[ -n "$HOST_IP" ]] && controllers="$controllers,deployment-controller,replicaset-controller,endpointslice-controller,endpoints-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,disruption-controller,node-lifecycle-controller"
  start kube-controller-manager "$K8S_BIN_DIR/kube-controller-manager" \
    --kubeconfig "$DIR/kubeconfig" --controllers "$controllers" \
    --leader-elect=false --secure-port 0 --use-service-account-credentials=false \
    ${HOST_IP:+--root-ca-file "$d/ca.crt"}
  if [[ -n "$HOST_IP" ]]; then
    start kube-scheduler "$NODE_BIN_DIR/kube-scheduler" --kubeconfig "$DIR/kubeconfig" --leader-elect=false \
      --bind-address 127.0.0.1 --secure-port "$(free_port)"
    # Pods are admitted only once the serviceaccount controller made the namespace's default one.
    wait_for kube-controller-manager 60 "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig" get serviceaccount default
  fi

  cat >"$DIR/env" <<ENV
export KUBECONFIG=$DIR/kubeconfig
export LEADERLOCK_ETCD_ENDPOINTS=http://127.0.0.1:$e2
export APISERVER_ETCD_ENDPOINTS=http://127.0.0.1:$e1
export KUBE_APISERVER_URL=https://${HOST_IP:-127.0.0.1}:$API_PORT
export LEADERLOCK_CLUSTER_DIR=$DIR
export LEADERLOCK_ETCD_BIN_DIR=$ETCD_BIN_DIR
export LEADERLOCK_K8S_BIN_DIR=$K8S_BIN_DIR
export LEADERLOCK_HELM_BIN_DIR=$HELM_BIN_DIR
export PATH=$K8S_BIN_DIR:$ETCD_BIN_DIR:$HELM_BIN_DIR:\$PATH
ENV
  if [[ -n "$HOST_IP" ]]; then
    # What pods are given instead of a kube-proxy route to the `kubernetes` Service.
    cat >>"$DIR/env" <<ENV
export LEADERLOCK_POD_ETCD_ENDPOINTS=http://$HOST_IP:$e2
export LEADERLOCK_POD_APISERVER_HOST=$HOST_IP
export LEADERLOCK_POD_APISERVER_PORT=$API_PORT
ENV
    node_up
  fi
  log "control plane ready: source $DIR/env"
}

# start_apiserver NAME PORT ETCD_URL [FLAGS...]: a kube-apiserver with the test PKI on PORT.
start_apiserver() {
  local name="$1" port="$2" etcd="$3" d="$DIR/pki"; shift 3
  local node_flags=(--disable-admission-plugins ServiceAccount)
  # With a node: pods get ServiceAccount tokens, and the apiserver reaches the kubelet (logs, exec)
  # with the admin client certificate, which the kubelet's webhook authorizer accepts.
  [[ -n "${HOST_IP:-}" ]] && node_flags=(--kubelet-client-certificate "$d/admin.crt" --kubelet-client-key "$d/admin.key")
  start "$name" "$K8S_BIN_DIR/kube-apiserver" \
    --etcd-servers "$etcd" \
    --bind-address "${HOST_IP:-127.0.0.1}" --advertise-address "${HOST_IP:-127.0.0.1}" --secure-port "$port" \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --client-ca-file "$d/ca.crt" \
    --authorization-mode RBAC --anonymous-auth=false \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    "${node_flags[@]}" \
    --cert-dir "$DIR/$name-certs" "$@"
}

# second_apiserver: another cluster (its own kube-system namespace, hence its own UID) in the
# running control plane, sharing its storage etcd under another prefix and its lock etcd.
second_apiserver() {
  DIR="${LEADERLOCK_CLUSTER_DIR:?source the env of hack/cluster.sh up first}"
  K8S_BIN_DIR="${LEADERLOCK_K8S_BIN_DIR:?source the env of hack/cluster.sh up first}"
  # Several test binaries of one run each ask for it: a running one is reused, not orphaned.
  if running "$(cat "$DIR/kube-apiserver-second.pid" 2>/dev/null)" &&
    "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig-second" get --raw /readyz >/dev/null 2>&1; then
    log "second kube-apiserver already running: KUBECONFIG=$DIR/kubeconfig-second"
    return 0
  fi
  local port; port=$(free_port)
  start_apiserver kube-apiserver-second "$port" "${APISERVER_ETCD_ENDPOINTS:?}" --etcd-prefix /registry-second
  write_kubeconfig "$DIR/kubeconfig-second" "$port"
  wait_for kube-apiserver-second 120 "$K8S_BIN_DIR/kubectl" --kubeconfig "$DIR/kubeconfig-second" get --raw /readyz
  log "second kube-apiserver :$port ready: KUBECONFIG=$DIR/kubeconfig-second"
}

# reap_stale: remove the state dirs of earlier runs that were killed with SIGKILL (their servers
# died with them, but nothing could remove the ~250 MB of etcd data). A dir is stale when none of
# its recorded servers is alive and it has not changed for 2 minutes (a run still starting has
# no pid file yet, or a fresh one).
reap_stale() {
  local d pidf live
  for d in "${TMPDIR:-/tmp}"/leaderlock-cluster.*; do
    [[ -d "$d" ]] && compgen -G "$d/*.pid" >/dev/null || continue
    [[ -n "$(find "$d" -maxdepth 0 -mmin +2)" ]] || continue
    live=0
    for pidf in "$d"/*.pid "$d"/node-*/*.pid; do
      running "$(cat "$pidf" 2>/dev/null)" && live=1
    done
    ((live)) || { log "removing $d, left by a run that was killed"; node_down "$d"; rm -rf "$d"; }
  done
}

cmd="${1:-}"; shift || true
case "$cmd" in
  up) DIR="${1:-$ROOT/.cache/cluster}"; up ;;
  second-apiserver) second_apiserver ;;
  down) DIR="${1:-$ROOT/.cache/cluster}"; stop_all "$DIR"; rm -rf "$DIR"; log "control plane in $DIR stopped" ;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    (($#)) || die "usage: $0 run -- CMD..."
    reap_stale
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/leaderlock-cluster.XXXXXX")"
    trap 'stop_all "$DIR"; rm -rf "$DIR"' EXIT
    trap 'exit 130' INT TERM
    PDEATHSIG=1 up
    # CMD runs in the background so a signal to this script is handled at once (bash defers
    # traps while a foreground child runs); it dies with us (parent-death signal) or on our trap.
    (source "$DIR/env" && exec setpriv --pdeathsig TERM "$@") &
    CMD_PID=$!
    trap 'kill -TERM "$CMD_PID" 2>/dev/null; wait "$CMD_PID" 2>/dev/null; exit 130' INT TERM
    set +e
    wait "$CMD_PID"
    rc=$?
    exit $rc
    ;;
  *) die "usage: $0 up [DIR] | down [DIR] | run -- CMD... | second-apiserver" ;;
esac
