#!/usr/bin/env bash
# Installs what `make bench` needs besides cargo: nginx (grpc_pass), haproxy (h2 proxy),
# h2load (nghttp2-client, the generator cross-check), a TTF font for the PNG's labels,
# llvm-bolt (bolt-19, the sidecar's post-link layout).
# Idempotent and quiet when everything is present. Nothing is started or enabled: the
# benchmark runs nginx and haproxy itself, as the current user, on loopback ports.
set -euo pipefail
need=()
for pair in nginx:nginx haproxy:haproxy h2load:nghttp2-client taskset:util-linux; do
  tool="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null || need+=("$pkg")
done
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
# llvm-bolt for the sidecar's post-link layout (scripts/pgo-build.sh step 5). Optional:
# where no bolt-19 package exists, the PGO build runs alone (pgo-build.sh warns).
has_bolt() { command -v llvm-bolt >/dev/null || compgen -G '/usr/lib/llvm-*/bin/llvm-bolt' >/dev/null; }
has_bolt || need+=(bolt-19)
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
  required=()
  for pkg in "${need[@]}"; do [[ $pkg == bolt-19 ]] || required+=("$pkg"); done
  if ((${#required[@]})); then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${required[@]}" >/dev/null
  fi
  if ! has_bolt; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends bolt-19 >/dev/null 2>&1 ||
      echo "bench: bolt-19 is not installable here: the sidecar is built with PGO only"
  fi
fi
