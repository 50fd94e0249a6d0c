#!/usr/bin/env bash
# Runs (or, with --path, prints the path of) a binary of this workspace from the
# cargo target directory, wherever CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if [[ "${1:-}" == "--path" ]]; then
  echo "$target/debug/$2"
  exit 0
fi
bin="$1"; shift
exec "$target/debug/$bin" "$@"
