#!/usr/bin/env bash
# Installs what `make bench` needs besides cargo: nginx (grpc_pass), haproxy (h2 proxy),
# h2load (nghttp2-client, the generator cross-check), a TTF font for the PNG's labels.
# Idempotent and quiet when everything is present. Nothing is started or enabled: the
# benchmark runs nginx and haproxy itself, as the current user, on loopback ports.
set -euo pipefail
need=()
for pair in nginx:nginx haproxy:haproxy h2load:nghttp2-client taskset:util-linux; do
  tool="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || need+=("$pkg")
done
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "bench: installing ${need[*]}"
  # policy-rc.d 101: the packages' postinst must not start system nginx/haproxy services.
  if [[ -z $sudo && -d /usr/sbin && ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
