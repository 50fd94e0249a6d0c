#!/usr/bin/env bash
# Builds the cargo-fuzz targets (nightly, AddressSanitizer) and runs each for
# FUZZ_SECONDS (default 60; CI uses a short run). Crashes land in
# fuzz/artifacts/<target>/ and fail the run; turn them into regression tests.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)"; exit 1; }
# Seed corpora from the project's own manifests.
for t in manifest_yaml routing_compile; do
  mkdir -p "corpus/$t"
  cp ../deploy/examples/*.yaml "corpus/$t/" 2>/dev/null || true
done
# Outside the clone, so CI's fresh clones reuse the (slow, sanitized) build.
target_dir="${STRAIT_CACHE:-$HOME/.cache/strait}/fuzz-target"
cargo +nightly fuzz build -O --target-dir "$target_dir"
failed=0
for target in $(cargo +nightly fuzz list); do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # -rss_limit_mb bounds memory: unbounded allocation is a finding, not an OOM of the box.
  if ! cargo +nightly fuzz run -O --target-dir "$target_dir" "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 2>&1 | tail -n 12; then
    echo "fuzz: $target FAILED (see fuzz/artifacts/$target)"
    failed=1
  fi
done
exit "$failed"
