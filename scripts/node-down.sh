#!/usr/bin/env bash
# Tears down what scripts/node-up.sh created, and checks that nothing is left:
# pods (stopped through kubelet when it still runs, so CNI releases their network),
# then every process (by pid: the pid files, processes whose command line names the node
# dir — containerd's shims — and those in kubelet's kubepods cgroups), mounts under the
# node dir and the pods' network namespaces, the strait-cni0 bridge, the KUBE-*/CNI-*
# iptables and ip6tables chains and the rules that jump to them, kubepods cgroups, conntrack entries of the pod and service ranges, the host sysctls
# (written back as they were), the directories containerd/CNI/kubelet made outside the
# node dir, and the node dir itself.
#
# Usage:
#   scripts/node-down.sh           tear down, then check (exit 1 if anything is left)
#   scripts/node-down.sh --check   only check, print what is left (exit 1 if anything)
# STRAIT_NODE_KEEP_LOGS=DIR copies the node's logs there before the node dir is removed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

[[ $EUID -eq 0 ]] || node_die "run as root"

# Pids of containerd's shims (they outlive containerd; their command line names our
# containerd's socket) and of the processes in kubelet's pod cgroups (the containers).
runtime_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ "$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" == *"-address $CONTAINERD_SOCK"* ]] && echo "${p#/proc/}"
  done
  find /sys/fs/cgroup/*/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null
}

# The node's daemons (pid files) and runtime_pids.
our_pids() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    node_pid "$name" || true
  done
  runtime_pids
}

# kill_wait SECONDS PID...: SIGTERM, then SIGKILL whatever is left after SECONDS.
kill_wait() {
  local secs="$1"; shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null
  local deadline=$((SECONDS + secs)) p left
  while :; do
    left=()
    for p in "$@"; do [[ -d /proc/$p ]] && left+=("$p"); done
    ((${#left[@]})) || return 0
    if ((SECONDS >= deadline)); then kill -KILL "${left[@]}" 2>/dev/null; sleep 1; return 0; fi
    sleep 0.2
  done
}

# stop_components NAME...: SIGTERM to all of them at once, SIGKILL after 15 s.
stop_components() {
  local name pid t=$SECONDS pids=() names=()
  for name in "$@"; do
    if pid="$(node_pid "$name")"; then pids+=("$pid"); names+=("$name ($pid)"); fi
  done
  ((${#pids[@]})) || return 0
  kill_wait 15 "${pids[@]}"
  node_log "stopped ${names[*]} in $((SECONDS - t))s"
}

# The ctr that goes with the containerd node-up started (scripts/node-up.sh writes it).
CTR="$(cat "$NODE_DIR/host/ctr" 2>/dev/null || echo /usr/bin/ctr)"
ctr() { "$CTR" --address "$CONTAINERD_SOCK" "$@"; }

# Rules in built-in (or any non-KUBE/CNI) chains that jump to KUBE-*/CNI-* chains, then
# those chains: deleted in one iptables-restore --noflush per table and family.
clean_iptables() {
  local family save restore table rules chains
  for family in iptables ip6tables; do
    save="$family-save"; restore="$family-restore"
    command -v "$save" >/dev/null || continue
    for table in filter nat mangle raw; do
      rules="$("$save" -t "$table" 2>/dev/null)" || continue
      chains="$(grep -oE '^:(KUBE|CNI)-[^ ]+' <<<"$rules" | cut -c2-)"
      local jumps
      jumps="$(grep -E '^-A ' <<<"$rules" | grep -vE '^-A (KUBE|CNI)-' | grep -E -- '-j (KUBE|CNI)-' | sed 's/^-A /-D /')"
      [[ -z "$chains" && -z "$jumps" ]] && continue
      {
        echo "*$table"
        [[ -n "$jumps" ]] && echo "$jumps"
        for c in $chains; do echo "-F $c"; done
        for c in $chains; do echo "-X $c"; done
        echo "COMMIT"
      } | "$restore" --noflush || node_log "WARNING: $restore failed for table $table"
    done
  done
}

# What is left of the node on this host (one line each); empty when clean.
leftovers() {
  local p
  for p in $(our_pids | sort -u); do
    echo "process $p: $(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | cut -c1-120)"
  done
  findmnt -rn -o TARGET | grep -E "^($NODE_DIR/|/run/containerd/|/var/run/netns/cni-|/run/netns/cni-)" | sed 's/^/mount /'
  ip -o link show "$POD_BRIDGE" 2>/dev/null | sed 's/^/link /' | cut -c1-80
  ip -o link show master "$POD_BRIDGE" 2>/dev/null | sed 's/^/link /' | cut -c1-80
  if [[ -r "$NODE_DIR/host/netns" ]]; then
    while read -r ns; do
      [[ -e "/var/run/netns/$ns" ]] && echo "netns $ns"
    done <"$NODE_DIR/host/netns"
  fi
  local family
  for family in iptables ip6tables; do
    command -v "$family-save" >/dev/null || continue
    "$family-save" 2>/dev/null | grep -E '^:(KUBE|CNI)-|-j (KUBE|CNI)-' | sed "s/^/$family /" | cut -c1-120
  done
  nft list tables 2>/dev/null | grep -w kube-proxy | sed 's/^/nft /'
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name kubepods -type d 2>/dev/null | sed "s/^/cgroup /"
  find /var/log/containers -maxdepth 1 -lname "$NODE_DIR/*" 2>/dev/null | sed 's/^/symlink /'
  if [[ -r "$NODE_DIR/host/sysctls" ]]; then
    local kv key want have
    while read -r kv; do
      key="${kv%%=*}"; want="${kv#*=}"
      have="$(sysctl -n "$key" 2>/dev/null)"
      [[ "$have" == "$want" ]] || echo "sysctl $key=$have (was $want)"
    done <"$NODE_DIR/host/sysctls"
  fi
  if [[ -r "$NODE_DIR/host/created-dirs" ]]; then
    local d
    while read -r d; do [[ -e "$d" ]] && echo "dir $d (did not exist before node-up)"; done <"$NODE_DIR/host/created-dirs"
  fi
  [[ -e "$NODE_DIR" ]] && echo "dir $NODE_DIR"
}

check() {
  local left
  left="$(leftovers)"
  if [[ -n "$left" ]]; then
    node_log "left on the host:"
    echo "$left" >&2
    return 1
  fi
  node_log "host clean: no process, mount, link, netns, iptables chain, cgroup or state of the node left"
}

if [[ "${1:-}" == "--check" ]]; then
  check
  exit
fi
[[ -e "$NODE_DIR" ]] || { node_log "$NODE_DIR does not exist: nothing to tear down"; check; exit; }
start=$SECONDS

# 1. Pods, through kubelet while it runs: it stops each sandbox via CRI, and containerd
#    calls CNI DEL (veth, IP address, portmap rules) and removes the netns. The
#    controllers go first so nothing recreates the pods.
stop_components kube-controller-manager kube-scheduler
KUBECTL="$(ls "${STRAIT_CACHE:-$HOME/.cache/strait}"/bin/current/kubectl 2>/dev/null)"
if [[ -n "$KUBECTL" ]] && node_pid kubelet >/dev/null && node_pid kube-apiserver >/dev/null; then
  k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout=10s "$@"; }
  k delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1
  no_pods() { [[ -z "$(k get pods --all-namespaces -o name 2>/dev/null)" ]] && k get --raw /readyz >/dev/null 2>&1; }
  # (Read whole: with pipefail, `ctr | grep -q` can fail on SIGPIPE when grep stops early.)
  no_running_tasks() { local tasks; tasks="$(ctr -n k8s.io tasks ls 2>/dev/null)" && ! grep -q RUNNING <<<"$tasks"; }
  if wait_for 60 no_pods && wait_for 30 no_running_tasks; then
    node_log "pods deleted through kubelet ($((SECONDS - start))s)"
  else
    node_log "pods not all gone through kubelet within 90s; removing them at the runtime"
  fi
fi

# 2. kubelet, kube-proxy (and its rules: kube-proxy --cleanup knows its own chains).
stop_components kubelet kube-proxy
NODE_BIN="$(readlink -f "${STRAIT_CACHE:-$HOME/.cache/strait}/bin/node-current" 2>/dev/null)"
if [[ -x "$NODE_BIN/kube-proxy" && -r "$NODE_DIR/config/kube-proxy.yaml" ]]; then
  "$NODE_BIN/kube-proxy" --config="$NODE_DIR/config/kube-proxy.yaml" --cleanup >>"$NODE_DIR/logs/kube-proxy-cleanup.log" 2>&1 ||
    node_log "kube-proxy --cleanup failed (see $NODE_DIR/logs/kube-proxy-cleanup.log); removing chains by name"
fi

# 3. Whatever containers are left, at the runtime; remember their network namespaces.
: >>"$NODE_DIR/host/netns"
if node_pid containerd >/dev/null; then
  for id in $(ctr -n k8s.io containers ls -q 2>/dev/null); do
    ns="$(ctr -n k8s.io containers info "$id" 2>/dev/null | jq -r '.Spec.linux.namespaces[]? | select(.type=="network") | .path // empty')"
    [[ "$ns" == /var/run/netns/* || "$ns" == /run/netns/* ]] && basename "$ns" >>"$NODE_DIR/host/netns"
    ctr -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1
    ctr -n k8s.io tasks rm -f "$id" >/dev/null 2>&1
    ctr -n k8s.io containers rm "$id" >/dev/null 2>&1
  done
fi
# containerd's log names every netns it made (also those of pods already gone).
grep -ohE '/var/run/netns/cni-[0-9a-f-]+' "$NODE_DIR/logs/containerd.log" 2>/dev/null | xargs -r -n1 basename >>"$NODE_DIR/host/netns"
sort -u -o "$NODE_DIR/host/netns" "$NODE_DIR/host/netns"

# 4. Every process: containerd, its shims, containers, the control plane.
stop_components containerd
mapfile -t pids < <(runtime_pids | sort -u)
((${#pids[@]})) && { kill_wait 5 "${pids[@]}"; node_log "stopped shims and containers: ${pids[*]}"; }
# The API server before etcd, so it does not log etcd errors while it shuts down.
stop_components kube-apiserver
stop_components etcd
mapfile -t pids < <(our_pids | sort -u)
((${#pids[@]})) && kill_wait 5 "${pids[@]}"

# 5. Mounts (deepest first) and network namespaces.
findmnt -rn -o TARGET | grep -E "^$NODE_DIR/" | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m"
done
while read -r ns; do
  [[ -n "$ns" ]] || continue
  for dir in /var/run/netns /run/netns; do
    if [[ -e "$dir/$ns" ]]; then
      umount "$dir/$ns" 2>/dev/null || umount -l "$dir/$ns" 2>/dev/null
      rm -f "$dir/$ns"
    fi
  done
done <"$NODE_DIR/host/netns"

# 6. Links, iptables, conntrack, cgroups.
for veth in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$veth" 2>/dev/null
done
ip link del "$POD_BRIDGE" 2>/dev/null
clean_iptables
for range in "$POD_CIDR" "$SERVICE_CIDR"; do
  conntrack -D -s "$range" >/dev/null 2>&1
  conntrack -D -d "$range" >/dev/null 2>&1
done
for root in /sys/fs/cgroup/*/kubepods; do
  [[ -d "$root" ]] && find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 7. Host sysctls as they were, directories made outside the node dir.
if [[ -r "$NODE_DIR/host/sysctls" ]]; then
  while read -r kv; do sysctl -qw "$kv" 2>/dev/null || node_log "WARNING: could not restore $kv"; done <"$NODE_DIR/host/sysctls"
fi
find /var/log/containers -maxdepth 1 -lname "$NODE_DIR/*" -delete 2>/dev/null
if [[ -r "$NODE_DIR/host/created-dirs" ]]; then
  while read -r d; do
    [[ -n "$d" && -e "$d" ]] || continue
    # Only if nothing but what the node put there is left (another user's files stay).
    case "$d" in
      /var/lib/cni) rm -rf /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null; find "$d" -depth -type d -empty -delete ;;
      /run/containerd) rm -rf "$d" ;;
      *) find "$d" -depth -type d -empty -delete ;;
    esac
  done <"$NODE_DIR/host/created-dirs"
fi

# 8. Check (before the node dir goes: it holds the saved sysctls and dir list), then remove it.
left="$(leftovers | grep -v "^dir $NODE_DIR\$")"
if [[ -n "${STRAIT_NODE_KEEP_LOGS:-}" ]]; then
  mkdir -p "$STRAIT_NODE_KEEP_LOGS" && cp -r "$NODE_DIR/logs/." "$STRAIT_NODE_KEEP_LOGS/" && node_log "logs kept in $STRAIT_NODE_KEEP_LOGS"
fi
rm -rf "$NODE_DIR"
if [[ -n "$left" ]]; then
  node_log "torn down in $((SECONDS - start))s, but left on the host:"
  echo "$left" >&2
  exit 1
fi
node_log "torn down in $((SECONDS - start))s; host clean: no process, mount, link, netns, iptables chain, cgroup, sysctl change or state of the node left"
