#!/usr/bin/env bash
# Installs what `make test` needs on a fresh machine of this project's kind
# (Debian with Rust and Go preinstalled). Idempotent and quiet when all is present.
set -euo pipefail
need=()
command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
for tool in curl; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
