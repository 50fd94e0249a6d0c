# Strait — the two commands that matter:
#   make demo   run the routing demo locally (no cluster, no root)
#   make test   run every test
SHELL := /bin/bash
CARGO ?= cargo
# Built tools (kube-apiserver, etcd) are cached outside the work tree so a fresh
# clone (CI) reuses them; keyed by the go.sum of their module.
STRAIT_CACHE ?= $(HOME)/.cache/strait
TOOLS_BIN := $(STRAIT_CACHE)/bin

.PHONY: demo test deps build unit e2e lint fmt tools clean fuzz

demo:
	$(CARGO) build -p strait-proxy -p strait-demo
	./scripts/cargo-bin.sh strait-demo --proxy-bin "$$(./scripts/cargo-bin.sh --path strait-proxy)" --examples deploy/examples

build:
	$(CARGO) build --workspace --bins

# What the tests need from the system (iptables, iproute2, ...): installed here so
# `make test` works on a fresh machine with nothing run before it. Quiet and quick
# when everything is present.
deps:
	./scripts/install-deps.sh

# Binaries first: end-to-end tests run the real strait-proxy.
test: deps build
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib

e2e: deps build
	$(CARGO) test -p strait-e2e

# Coverage-guided fuzzing of the parsers and the routing model (nightly + ASan).
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} ./scripts/fuzz.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# --- Test control plane (crates/strait-testenv) ---
# tools:   build kube-apiserver + etcd from tools/ into $(TOOLS_BIN)/<key>/ (no-op when
#          up to date); `scripts/build-kube-tools.sh --print-dir|--print-crd-dir|--env`.
# cluster: run a real etcd + kube-apiserver (+ Gateway API CRDs) until Ctrl-C; prints
#          `export KUBECONFIG=...`.
.PHONY: cluster

tools:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/build-kube-tools.sh

cluster: tools
	STRAIT_CACHE="$(STRAIT_CACHE)" $(CARGO) run -p strait-testenv --bin strait-testenv

# --- Single-node Kubernetes (tools/node/README.md; root) ---
# node-tools: build kubelet, kube-proxy, kube-controller-manager, kube-scheduler (v1.36.3)
#             and CoreDNS into $(TOOLS_BIN)/node-<key>/ (no-op when up to date).
# node-up:    install containerd/runc/CNI (apt), start the whole node under /tmp/strait-node,
#             print `export KUBECONFIG=...`.  node-smoke: prove it runs pods.
# node-down:  stop and remove everything node-up made; fails if anything is left.
.PHONY: node-tools node-up node-smoke node-down

node-tools:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/build-node-tools.sh

node-up:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/node-up.sh

node-smoke:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/node-smoke.sh

node-down:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/node-down.sh

# --- Benchmark (bench/, scripts/bench.sh) ---
# bench:       proxy comparison (direct, Strait outbound, Strait mesh, nginx grpc_pass,
#              HAProxy h2) + the Kubernetes-mode scale test; target/bench/results.{md,json},
#              latency.png. BENCH_QUICK=1: ~1 minute, comparison only.
# bench-scale: only the scale test (10k Services, 50k endpoints, 1k GRPCRoutes).
# bench-instructions: instructions per proxied call under callgrind, Strait vs HAProxy
#              (stable to ~0.2%: use it to judge request-path changes; CONC=64 for the
#              saturation case; WORKLOAD=unary_16KiB or stream_10x100B for the others).
.PHONY: bench bench-scale bench-instructions pgo

# pgo: strait-proxy built with profile-guided optimisation and laid out by BOLT
#      (target/pgo/strait-proxy; BOLT=0 skips BOLT); `make bench` builds and measures it
#      beside the plain release build.
pgo:
	./scripts/pgo-build.sh

bench:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/bench.sh all

bench-scale:
	STRAIT_CACHE="$(STRAIT_CACHE)" ./scripts/bench.sh scale

bench-instructions:
	./scripts/bench-instructions.sh
