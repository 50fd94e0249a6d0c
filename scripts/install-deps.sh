#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine of this project's kind
# (Debian with Rust and Go preinstalled). Idempotent and quiet when all is present.
set -euo pipefail
need=()
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
# iptables: strait-init's end-to-end tests apply real rules in network namespaces.
# iproute2: those namespaces. util-linux: setpriv (run the proxy as its UID).
for pair in curl:curl jq:jq iptables-nft-restore:iptables iptables-legacy-restore:iptables ip:iproute2 setpriv:util-linux flock:util-linux; do
  tool="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || need+=("$pkg")
done
command -v go >/dev/null || { echo "go is required (kube-apiserver and etcd are built from their Go modules)"; exit 1; }
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "installing: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
