#!/usr/bin/env bash
# `make pgo`: strait-proxy built with profile-guided optimisation (PGO).
#
#   1. build strait-proxy instrumented (-Cprofile-generate) in its own target dir;
#   2. `strait-bench pgo-train` runs it as an outbound hop and as a mesh pair under the
#      benchmark's calls, then stops it so each process writes its profile;
#   3. llvm-profdata (rustup's llvm-tools, the LLVM of this rustc) merges the profiles;
#   4. build strait-proxy again with -Cprofile-use in a third target dir.
#
# Output: $CARGO_TARGET_DIR/pgo/strait-proxy (default target/pgo/strait-proxy) and the
# merged profile beside it. A PGO build behaves exactly as the plain one; it is laid out
# and inlined for the paths the training took (measured: README, Measured).
#
# The result is reused while the proxy's sources, Cargo.lock, the trainer and the
# toolchain are unchanged (a key over their contents). PGO_TARGET=<triple> builds for
# another target of this host (e.g. x86_64-unknown-linux-musl for the image); its
# instrumented binary must run here for the training.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
host="$(rustc -vV | sed -n 's/^host: //p')"
triple="${PGO_TARGET:-$host}"
out="$target/pgo"
[[ $triple == "$host" ]] || out="$target/pgo/$triple"
mkdir -p "$out"

key="$({
  rustc -vV
  echo "$triple ${RUSTFLAGS:-}"
  find Cargo.toml Cargo.lock proxy crates bench/src bench/Cargo.toml demo scripts/pgo-build.sh \
    -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.lock' -o -name '*.sh' -o -name '*.proto' \) \
    -not -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -d' ' -f1)"
if [[ -x $out/strait-proxy && -f $out/key && $(cat "$out/key") == "$key" ]]; then
  echo "pgo: $out/strait-proxy is up to date"
  exit 0
fi

# llvm-profdata must match rustc's LLVM: take rustup's llvm-tools, never the system's.
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $profdata ]]; then
  rustup component add llvm-tools >&2 || true
fi
[[ -x $profdata ]] || {
  echo "pgo: $profdata not found and 'rustup component add llvm-tools' did not install it" >&2
  exit 1
}

# --target even for the host: RUSTFLAGS then reach only the target's crates, not build
# scripts or proc macros (which would otherwise be instrumented and write profiles of
# the compiler's own run).
rm -f "$out/key" "$out/strait-proxy"
raw="$out/profraw"
rm -rf "$raw"
mkdir -p "$raw"
echo "pgo: 1/4 instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" CARGO_TARGET_DIR="$target/pgo-gen" \
  cargo build --release --locked --target "$triple" -p strait-proxy
cargo build --release --locked -p strait-bench

echo "pgo: 2/4 training run" >&2
LLVM_PROFILE_FILE="$raw/strait-proxy-%p-%m.profraw" "$target/release/strait-bench" pgo-train \
  --proxy "$target/pgo-gen/$triple/release/strait-proxy" --out "$out/train"
compgen -G "$raw/*.profraw" >/dev/null || {
  echo "pgo: the training run wrote no profile under $raw" >&2
  exit 1
}

echo "pgo: 3/4 merging profiles" >&2
"$profdata" merge -o "$out/strait-proxy.profdata" "$raw"

echo "pgo: 4/4 optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/strait-proxy.profdata" CARGO_TARGET_DIR="$target/pgo-use" \
  cargo build --release --locked --target "$triple" -p strait-proxy
cp "$target/pgo-use/$triple/release/strait-proxy" "$out/strait-proxy"
echo "$key" >"$out/key"
echo "pgo: $out/strait-proxy"
