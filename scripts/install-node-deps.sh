#!/usr/bin/env bash
# Installs what scripts/node-up.sh needs on a fresh machine of this project's kind
# (Debian bookworm): runc, the CNI plugins, a static busybox for the test image, the
# networking tools kubelet/kube-proxy call, and Debian's containerd 1.6 (node-up runs the
# containerd v2 that scripts/build-node-tools.sh builds; 1.6 is the fallback, see
# tools/node/README.md). Idempotent: `apt-get update` and an install only when something
# is missing.
set -euo pipefail
# Binaries the node needs -> Debian package that ships them.
#   containerd/ctr: Debian's 1.6 runtime and CLI (STRAIT_NODE_CONTAINERD_DIR=/usr/bin)
#   runc: OCI runtime containerd starts containers with
#   /usr/lib/cni/bridge: CNI bridge, host-local, loopback, portmap plugins
#   busybox (static): the test image's binary
#   conntrack: kube-proxy flushes stale UDP conntrack entries with it
#   iptables/ip: kube-proxy's chains, the pod bridge
#   socat: kubelet's port-forward fallback; nsenter (util-linux): kubelet's exec helpers
#   openssl: the node's certificates; jq, file: node-images.sh; gcc + libc.a: the static pause
#   curl: node-up's health checks
pairs=(
  /usr/bin/containerd:containerd
  /usr/bin/ctr:containerd
  /usr/sbin/runc:runc
  /usr/lib/cni/bridge:containernetworking-plugins
  /bin/busybox:busybox-static
  /usr/sbin/conntrack:conntrack
  /usr/sbin/iptables:iptables
  /usr/sbin/ip:iproute2
  /usr/bin/socat:socat
  /usr/bin/nsenter:util-linux
  /usr/bin/flock:util-linux
  /usr/bin/openssl:openssl
  /usr/bin/jq:jq
  /usr/bin/file:file
  /usr/bin/gcc:gcc
  /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
  /usr/bin/curl:curl
)
need=()
for pair in "${pairs[@]}"; do
  file="${pair%%:*}"; pkg="${pair##*:}"
  [[ -e "$file" ]] || need+=("$pkg")
done
# busybox-static and busybox conflict; a dynamic /bin/busybox is not enough for an image.
if [[ -e /bin/busybox ]] && ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  need+=(busybox-static)
fi
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "install-node-deps: installing ${need[*]}" >&2
  # No init system on these machines: keep the packages from trying to start services.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    # shellcheck disable=SC2034  # read by the EXIT trap
    made_policy=1
  fi
  trap 'if ((made_policy)); then rm -f "$policy"; fi' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The kernel features the node uses (modules may be built in: ignore modprobe failures).
for mod in overlay br_netfilter veth bridge xt_conntrack nf_nat xt_MASQUERADE xt_comment xt_mark; do
  modprobe "$mod" 2>/dev/null || true
done
echo "install-node-deps: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), CNI plugins in /usr/lib/cni" >&2
