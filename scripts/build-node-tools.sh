#!/usr/bin/env bash
# Builds the node's Kubernetes binaries (kubelet, kube-proxy, kube-controller-manager,
# kube-scheduler) from the Go module in tools/kube-node/ — the same k8s.io/kubernetes
# v1.36.3 module graph as tools/kube-apiserver — CoreDNS from tools/coredns/ (its own
# module graph: CoreDNS pins its own client-go) and containerd v2 (containerd,
# containerd-shim-runc-v2, ctr) from tools/containerd/, into a content-addressed cache
# directory:
#
#   ${STRAIT_CACHE:-$HOME/.cache/strait}/bin/node-<key>/{kubelet,kube-proxy,kube-controller-manager,kube-scheduler,coredns,containerd,containerd-shim-runc-v2,ctr}
#   ${STRAIT_CACHE:-$HOME/.cache/strait}/bin/node-current -> node-<key>   (stable symlink)
#
# <key> is the sha256 of tools/kube-node/{go.mod,go.sum,*/main.go}, tools/coredns/{go.mod,
# go.sum,main.go}, tools/containerd/{go.mod,go.sum,tools.go}, the Go version, the CGO
# setting and the ldflags: when none of those changed, nothing is rebuilt. coredns is built
# static (CGO_ENABLED=0): it is the only file of its container image. containerd is built
# without cgo and without the btrfs/devmapper/zfs snapshotters (overlayfs is the one used).
# scripts/build-kube-tools.sh (kube-apiserver, etcd, kubectl) is untouched by this one;
# node-up.sh calls both.
#
# Usage:
#   scripts/build-node-tools.sh               build if needed (progress on stderr)
#   scripts/build-node-tools.sh --print-dir   build if needed, print the binary dir on stdout
set -euo pipefail
cd "$(dirname "$0")/.."

# KUBE_VERSION and kube_ldflags.
# shellcheck source=scripts/kube-version.sh
source scripts/kube-version.sh
BINARIES=(kubelet kube-proxy kube-controller-manager kube-scheduler)
EXTRA_BINARIES=(coredns containerd containerd-shim-runc-v2 ctr)
containerd_tags="no_btrfs no_devmapper no_zfs"

cache="${STRAIT_CACHE:-$HOME/.cache/strait}"
bin_root="$cache/bin"

ldflags="$kube_ldflags"

log() { echo "build-node-tools: $*" >&2; }

compute_key() {
  {
    for f in go.mod go.sum; do
      echo "== tools/kube-node/$f"
      cat "tools/kube-node/$f"
    done
    for b in "${BINARIES[@]}"; do
      echo "== tools/kube-node/$b/main.go"
      cat "tools/kube-node/$b/main.go"
    done
    for f in go.mod go.sum main.go; do
      echo "== tools/coredns/$f"
      cat "tools/coredns/$f"
    done
    for f in go.mod go.sum tools.go; do
      echo "== tools/containerd/$f"
      cat "tools/containerd/$f"
    done
    echo "== go: $(go version)"
    echo "== cgo: $(go env CGO_ENABLED) goflags: $(go env GOFLAGS)"
    echo "== ldflags: $ldflags"
    echo "== coredns: CGO_ENABLED=0 -ldflags '-s -w'"
    echo "== containerd: CGO_ENABLED=0 -tags '$containerd_tags' -ldflags '-s -w -X version.Version'"
  } | sha256sum | cut -c1-16
}

build() {
  local key dir start b
  key="$(compute_key)"
  dir="$bin_root/node-$key"
  mkdir -p "$bin_root"
  # Its own lock: the test binaries' builds (build-kube-tools.sh) never wait on this one.
  exec 8>"$bin_root/.node-lock"
  flock 8
  local complete=1
  for b in "${BINARIES[@]}" "${EXTRA_BINARIES[@]}"; do [[ -x "$dir/$b" ]] || complete=0; done
  if ((complete)); then
    log "node tools up to date ($dir)"
  else
    start=$SECONDS
    tmp="$(mktemp -d "$bin_root/.node-build.XXXXXX")"
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    log "building ${BINARIES[*]} ${KUBE_VERSION}, ${EXTRA_BINARIES[*]} into $dir (first build takes many minutes)"
    # One `go build` for all four: packages shared between them are compiled once.
    (cd tools/kube-node && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${BINARIES[@]/#/./}")
    (cd tools/coredns && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" .)
    (
      cd tools/containerd
      local version; version="$(go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)"
      CGO_ENABLED=0 go build -trimpath -tags "$containerd_tags" \
        -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$version" -o "$tmp/" \
        github.com/containerd/containerd/v2/cmd/containerd \
        github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
        github.com/containerd/containerd/v2/cmd/ctr
    )
    for b in "${BINARIES[@]}" "${EXTRA_BINARIES[@]}"; do [[ -x "$tmp/$b" ]] || { log "go build did not produce $b"; exit 1; }; done
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    log "built in $((SECONDS - start))s"
  fi
  ln -sfn "node-$key" "$bin_root/node-current.tmp"
  mv -T "$bin_root/node-current.tmp" "$bin_root/node-current"
  flock -u 8
  echo "$dir"
}

case "${1:-}" in
  "")
    build >/dev/null
    ;;
  --print-dir)
    build
    ;;
  -h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
  *)
    log "unknown argument: $1 (see --help)"
    exit 2
    ;;
esac
