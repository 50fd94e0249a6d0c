#!/usr/bin/env bash
# `make bench-instructions`: instructions per proxied gRPC call, Strait one hop (the PGO
# build and the plain release build) vs HAProxy h2 one hop, counted by callgrind on the
# same backend in the same run. Instruction counts repeat to within ~0.2% on this
# machine whatever else it is doing, so they show request-path changes that wall-clock
# runs here (±20% between runs) cannot.
#
# Each proxy runs under valgrind on CPU 1 with the backend; the generator (CPU 0) sends
# RATE calls/s open loop (default 100: one call at a time, no batching, the low-rate
# case) or, with CONC=n, n calls in flight (batching, the saturation case), for DURATION
# seconds after a warm-up; counters are zeroed after the warm-up and dumped after the
# run. WORKLOAD picks the call (unary_100B, unary_16KiB, stream_10x100B; default
# unary_100B). Output: target/bench/instructions.md (and the callgrind files beside it, for
# callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench/instructions"
mkdir -p "$out"
./scripts/bench-deps.sh
command -v valgrind >/dev/null || {
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends valgrind >/dev/null
}
cargo build --release -p strait-proxy -p strait-bench
bin="$target/release"
# Strait's PGO build (the one `make bench` measures) and its plain release build, both
# against HAProxy. BENCH_PGO=0 counts the plain build only.
paths=(strait-pgo strait haproxy)
if [[ ${BENCH_PGO:-1} == 0 ]]; then
  paths=(strait haproxy)
else
  ./scripts/pgo-build.sh
fi
rate="${RATE:-100}"; conc="${CONC:-}"; duration="${DURATION:-5}"; workload="${WORKLOAD:-unary_100B}"
backend_port="${BACKEND_PORT:-26050}"; strait_port=26051; haproxy_port=26052

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 1 "$bin/strait-bench" backend --addr "127.0.0.1:$backend_port" >"$out/backend.log" 2>&1 &
pids+=($!)

# The comparison's own configurations: Strait in file mode (Service echo routes to
# echo-backend, whose one endpoint is the backend) and HAProxy h2 one hop.
"$bin/strait-bench" configs --dir "$out" --backend "127.0.0.1:$backend_port" \
  --haproxy-listen "127.0.0.1:$haproxy_port"
cfg="$out/strait"

haproxy_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v haproxy)
declare -A result
for path in "${paths[@]}"; do
  file="$out/callgrind.$path"
  rm -f "$file" "$file".*
  if [[ $path == strait* ]]; then
    proxy="$bin/strait-proxy"
    [[ $path == strait-pgo ]] && proxy="$target/pgo/strait-proxy"
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$file" "$proxy" \
      --config-dir "$cfg" --outbound-addr "127.0.0.1:$strait_port" --inbound-addr 127.0.0.1:26053 \
      --admin-addr 127.0.0.1:26054 --namespace bench --log-level warn >"$out/$path.log" 2>&1 &
    addr="127.0.0.1:$strait_port"
  else
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$file" "$haproxy_bin" -f "$out/haproxy.cfg" -db \
      >"$out/$path.log" 2>&1 &
    addr="127.0.0.1:$haproxy_port"
  fi
  pid=$!
  pids+=("$pid")
  # Under valgrind start-up takes seconds: wait until a call goes through.
  for _ in $(seq 60); do
    taskset -c 0 "$bin/strait-bench" load --addr "$addr" --concurrency 1 --duration 1 >/dev/null 2>&1 && break
    sleep 1
  done
  callgrind_control -z "$pid" >/dev/null
  if [[ -n $conc ]]; then mode=(--concurrency "$conc"); else mode=(--rate "$rate"); fi
  line=$(taskset -c 0 "$bin/strait-bench" load --addr "$addr" "${mode[@]}" --duration "$duration" \
    --workload "$workload" 2>&1 | tail -1)
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  calls=$(grep -o 'ok [0-9]*' <<<"$line" | awk '{print $2}')
  errors=$(grep -o 'errors [0-9]*' <<<"$line" | awk '{print $2}')
  dump=$(ls -t "$file".* 2>/dev/null | head -1)
  instructions=$(awk '/^summary:/ {print $2}' "$dump")
  if [[ -z $calls || $calls -eq 0 || -z $instructions || $errors != 0 ]]; then
    echo "bench-instructions: $path run failed: $line" >&2
    exit 1
  fi
  result[$path]=$((instructions / calls))
  echo "$path: $calls calls, $instructions instructions, $((instructions / calls)) per call"
done

load="open loop $rate calls/s"; [[ -n $conc ]] && load="closed loop, $conc calls in flight"
{
  echo "# Instructions per proxied call (callgrind)"
  echo
  echo "- date: $(date -u +%FT%TZ); $workload; $load for ${duration} s; proxy and backend on CPU 1"
  echo
  echo "| path | instructions per call | × HAProxy |"
  echo "|---|---|---|"
  for path in "${paths[@]}"; do
    echo "| $path | ${result[$path]} | $(awk -v a="${result[$path]}" -v b="${result[haproxy]}" 'BEGIN { printf "%.2f", a / b }') |"
  done
} | tee "$out/../instructions.md"
