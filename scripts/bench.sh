#!/usr/bin/env bash
# `make bench` (all) and `make bench-scale` (scale): installs missing tools, builds
# release binaries, pins the load generator and the servers to different cores, runs
# strait-bench. Output: $CARGO_TARGET_DIR/bench (default target/bench).
#
# Environment: BENCH_PGO=0 (no PGO build: the plain release build alone), BENCH_QUICK=1
# (~1 min, no scale part), BENCH_DURATION / BENCH_SAT_DURATION
# (seconds per run), BENCH_REPEATS, BENCH_CONCURRENCY, BENCH_CONNS, BENCH_LOW_RATE,
# BENCH_HIGH_FRACTION, BENCH_TAIL_RATE / BENCH_TAIL_DURATION (the call-by-call tail
# points: rps per path, seconds per repeat), BENCH_TAIL_FIFO=0 (skip the second set of tail
# points, run with the backend and proxies under SCHED_FIFO), BENCH_GEN_CPUS / BENCH_SERVER_CPUS (override the pinning),
# BENCH_SCALE_SERVICES / _ROUTES / _ENDPOINTS_PER_SERVICE / _CHANGES / _PARALLELISM.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-all}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench"
mkdir -p "$out"

if [[ $mode == all ]]; then
  ./scripts/bench-deps.sh
fi
cargo build --release -p strait-proxy -p strait-bench -p strait-demo
bin="$target/release"

# The Strait paths run the PGO + BOLT build (the one a release ships, `make pgo`), and the
# plain release build runs beside it as one more one-hop path: what PGO buys is
# measured in the same run. BENCH_PGO=0 measures the plain build alone.
if [[ ${BENCH_PGO:-1} != 0 ]]; then
  ./scripts/pgo-build.sh
  pgo="$target/pgo/strait-proxy"
  export BENCH_PROXY_BIN="$pgo" BENCH_BASELINE_PROXY_BIN="$bin/strait-proxy"
fi

if [[ $mode == scale ]]; then
  exec "$bin/strait-bench" scale --out "$out" --bin-dir "$bin"
fi

# Pinning (2 cores): the generator (strait-bench, one tokio thread) on CPU 0, the backend
# and every proxy on CPU 1, so proxies compete with the backend, never with the
# generator. With more cores the servers still share one core (each proxy then runs one
# worker, comparable across nginx/HAProxy/Strait); with one core nothing is pinned.
ncpu=$(nproc)
if ((ncpu >= 2)); then
  gen="${BENCH_GEN_CPUS:-0}"
  srv="${BENCH_SERVER_CPUS:-1}"
  exec taskset -c "$gen" "$bin/strait-bench" all --out "$out" --bin-dir "$bin" --gen-cpus "$gen" --server-cpus "$srv"
else
  echo "bench: only $ncpu CPU: nothing pinned, numbers include generator/proxy contention" >&2
  exec "$bin/strait-bench" all --out "$out" --bin-dir "$bin" --server-cpus "" --gen-cpus ""
fi
