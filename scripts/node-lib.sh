# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared by scripts/node-up.sh, node-down.sh and node-smoke.sh (sourced, not run):
# the single-node cluster's addresses, names and state layout, and small helpers.
#
# Addresses are chosen not to collide with the e2e tests (bridges 10.252.x.0/24, the
# testenv's service range 10.96.0.0/16):
#   pods       10.244.0.0/24   on bridge strait-cni0
#   services   10.97.0.0/24    (10.97.0.1 is the `kubernetes` Service, 10.97.0.10 kube-dns)
#   node       10.244.0.1      the bridge's own address (the pods' gateway): etcd,
#              kube-apiserver, kubelet, kube-proxy, controller-manager and scheduler listen
#              here only, never on 0.0.0.0, and pods reach the API server at it (or at
#              10.97.0.1). node-up.sh creates the bridge before the API server starts; the
#              CNI bridge plugin then finds it and adds the pods' veths. (This kernel has no
#              dummy link driver: `ip link add ... type dummy` answers "Unknown device type".)

NODE_DIR="${STRAIT_NODE_DIR:-/tmp/strait-node}"
NODE_NAME="strait-node"
POD_CIDR="10.244.0.0/24"
POD_GATEWAY="10.244.0.1"
POD_BRIDGE="strait-cni0"
NODE_IP="$POD_GATEWAY"
SERVICE_CIDR="10.97.0.0/24"
SERVICE_APISERVER_IP="10.97.0.1"
CLUSTER_DNS_IP="10.97.0.10"
CLUSTER_DOMAIN="cluster.local"
CNI_NETWORK="strait-node"
CNI_BIN_DIR="/usr/lib/cni"
APISERVER_PORT=6443
PAUSE_IMAGE="localhost/strait/pause:1.0"
BUSYBOX_IMAGE="localhost/strait/busybox:1.0"
COREDNS_IMAGE="localhost/strait/coredns:1.15.0"
CONTAINERD_SOCK="$NODE_DIR/containerd/containerd.sock"
KUBECONFIG_ADMIN="$NODE_DIR/kubeconfigs/admin.kubeconfig"

# Host sysctls that kubelet, kube-proxy or the pod network change; node-up.sh saves their
# values before starting anything and node-down.sh writes them back.
#   kubelet (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables): vm.*, kernel.*
#   pod network and kube-proxy: ip_forward, bridge-nf-call-*, route_localnet
HOST_SYSCTLS=(
  vm.overcommit_memory
  vm.panic_on_oom
  kernel.panic
  kernel.panic_on_oops
  kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes
  net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet
)

node_log() { echo "$(basename "$0" .sh): $*" >&2; }
node_die() { node_log "ERROR: $*"; exit 1; }

# The directory with kube-apiserver, etcd and kubectl (scripts/build-kube-tools.sh) and
# the one with kubelet, kube-proxy, kube-controller-manager and kube-scheduler.
kube_bin_dir() { "$(dirname "${BASH_SOURCE[0]}")/build-kube-tools.sh" --print-dir; }
node_bin_dir() { "$(dirname "${BASH_SOURCE[0]}")/build-node-tools.sh" --print-dir; }

# Waits up to $1 seconds for the command in $2.. to succeed (polling every second).
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# The pid in $NODE_DIR/pids/$1.pid if that process is alive and still the one we started
# (its command line names the node dir or its binary), else nothing.
node_pid() {
  local f="$NODE_DIR/pids/$1.pid" pid
  [[ -r "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$NODE_DIR"* ]] || return 1
  echo "$pid"
}
