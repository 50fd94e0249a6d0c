#!/usr/bin/env bash
# `make pgo`: strait-proxy built with profile-guided optimisation (PGO).
#
#   1. build strait-proxy instrumented (-Cprofile-generate) in its own target dir;
#   2. `strait-bench pgo-train` runs it as an outbound hop and as a mesh pair under the
#      benchmark's calls, then stops it so each process writes its profile;
#   3. llvm-profdata (rustup's llvm-tools, the LLVM of this rustc) merges the profiles;
#   4. build strait-proxy again with -Cprofile-use in a third target dir, linked with
#      --emit-relocs so BOLT can rearrange it;
#   5. BOLT (llvm-bolt, a post-link optimiser): instrument that binary, run the same
#      training on it, and lay its code out by the profile (hot code together, cold
#      blocks split off), then check the result still serves calls.
#
# Output: $CARGO_TARGET_DIR/pgo/strait-proxy (default target/pgo/strait-proxy), the
# PGO-only binary beside it as strait-proxy.pgo-only, and the profiles. Both behave
# exactly as the plain build; they are laid out and inlined for the paths the training
# took (measured: README, Measured). BOLT=auto (default) skips step 5 with a warning
# when llvm-bolt is missing (scripts/bench-deps.sh installs it: Debian's bolt-19) and
# for musl targets (see below), BOLT=1 requires it, BOLT=0 skips it.
#
# The result is reused while the proxy's sources, Cargo.lock, the trainer and the
# toolchain are unchanged (a key over their contents). PGO_TARGET=<triple> builds for
# another target of this host (e.g. x86_64-unknown-linux-musl); its
# instrumented binary must run here for the training.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
host="$(rustc -vV | sed -n 's/^host: //p')"
triple="${PGO_TARGET:-$host}"
out="$target/pgo"
[[ $triple == "$host" ]] || out="$target/pgo/$triple"
mkdir -p "$out"

# llvm-bolt and merge-fdata: PATH first, else the newest Debian LLVM that has them.
bolt_mode="${BOLT:-auto}"
bolt="" merge_fdata=""
# BOLT's instrumented build of the static-pie musl binary dies with SIGSEGV before
# main (llvm-bolt 19, 2026-11-27), so auto leaves musl targets at PGO only.
if [[ $bolt_mode == auto && $triple == *musl* ]]; then
  echo "pgo: BOLT skipped for $triple (its instrumented static-pie binary crashes at start); PGO only" >&2
  bolt_mode=0
fi
if [[ $bolt_mode != 0 ]]; then
  bolt="$(command -v llvm-bolt || true)"
  if [[ -z $bolt ]]; then
    bolt="$(compgen -G '/usr/lib/llvm-*/bin/llvm-bolt' | sort -V | tail -1 || true)"
  fi
  [[ -n $bolt ]] && merge_fdata="$(dirname "$bolt")/merge-fdata"
  if [[ -z $bolt || ! -x $merge_fdata ]]; then
    if [[ $bolt_mode == 1 ]]; then
      echo "pgo: BOLT=1 but llvm-bolt / merge-fdata not found (Debian: apt-get install bolt-19)" >&2
      exit 1
    fi
    echo "pgo: WARNING: llvm-bolt not found: building PGO only, without the BOLT layout (Debian: apt-get install bolt-19)" >&2
    bolt="" merge_fdata=""
  fi
fi

key="$({
  rustc -vV
  [[ -n $bolt ]] && "$bolt" --version | grep -i version
  echo "$triple ${RUSTFLAGS:-} bolt=${bolt:+yes}"
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
rm -f "$out/key" "$out/strait-proxy" "$out/strait-proxy.pgo-only"
raw="$out/profraw"
rm -rf "$raw"
mkdir -p "$raw"
steps=$([[ -n $bolt ]] && echo 5 || echo 4)
echo "pgo: 1/$steps instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$raw" CARGO_TARGET_DIR="$target/pgo-gen" \
  cargo build --release --locked --target "$triple" -p strait-proxy
cargo build --release --locked -p strait-bench

echo "pgo: 2/$steps training run" >&2
LLVM_PROFILE_FILE="$raw/strait-proxy-%p-%m.profraw" "$target/release/strait-bench" pgo-train \
  --proxy "$target/pgo-gen/$triple/release/strait-proxy" --out "$out/train"
compgen -G "$raw/*.profraw" >/dev/null || {
  echo "pgo: the training run wrote no profile under $raw" >&2
  exit 1
}

echo "pgo: 3/$steps merging profiles" >&2
"$profdata" merge -o "$out/strait-proxy.profdata" "$raw"

echo "pgo: 4/$steps optimised build" >&2
# --emit-relocs keeps the link's relocations in the binary: BOLT needs them to move
# code. They sit in sections that are not loaded, so they cost file size, not memory.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/strait-proxy.profdata -Clink-arg=-Wl,--emit-relocs" \
  CARGO_TARGET_DIR="$target/pgo-use" cargo build --release --locked --target "$triple" -p strait-proxy
cp "$target/pgo-use/$triple/release/strait-proxy" "$out/strait-proxy.pgo-only"

if [[ -n $bolt ]]; then
  echo "pgo: 5/$steps BOLT: instrument, train, lay out" >&2
  fdata="$out/fdata"
  rm -rf "$fdata"
  mkdir -p "$fdata"
  "$bolt" "$out/strait-proxy.pgo-only" -instrument -o "$out/strait-proxy.bolt-inst" \
    -instrumentation-file="$fdata/strait-proxy.fdata" -instrumentation-file-append-pid >"$out/bolt-instrument.log" 2>&1 || {
    tail -20 "$out/bolt-instrument.log" >&2
    exit 1
  }
  # Each process writes its profile when it exits (the trainer stops them with SIGTERM).
  "$target/release/strait-bench" pgo-train --proxy "$out/strait-proxy.bolt-inst" --out "$out/train-bolt"
  compgen -G "$fdata/*.fdata" >/dev/null || {
    echo "pgo: the BOLT training run wrote no profile under $fdata" >&2
    exit 1
  }
  "$merge_fdata" "$fdata"/*.fdata >"$out/strait-proxy.fdata" 2>"$out/bolt-merge.log"
  # ext-tsp block order and cdsort function order put the trained paths' code on as few
  # cache lines and pages as possible; -split-functions moves the cold blocks away.
  "$bolt" "$out/strait-proxy.pgo-only" -o "$out/strait-proxy.bolt" -data="$out/strait-proxy.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
    -icf=1 -use-gnu-stack >"$out/bolt-optimise.log" 2>&1 || {
    tail -20 "$out/bolt-optimise.log" >&2
    exit 1
  }
  rm -f "$out/strait-proxy.bolt-inst"
  # The laid-out binary must still serve every training call and exit cleanly.
  "$target/release/strait-bench" pgo-train --proxy "$out/strait-proxy.bolt" --out "$out/check-bolt" --seconds 0.3
  mv "$out/strait-proxy.bolt" "$out/strait-proxy"
else
  cp "$out/strait-proxy.pgo-only" "$out/strait-proxy"
fi
echo "$key" >"$out/key"
echo "pgo: $out/strait-proxy$([[ -n $bolt ]] && echo ' (PGO + BOLT)' || echo ' (PGO only)')"
