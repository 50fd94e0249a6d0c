#!/usr/bin/env bash
# Builds the test control plane's binaries (kube-apiserver, etcd) from the Go modules
# in tools/, into a content-addressed cache directory:
#
#   ${STRAIT_CACHE:-$HOME/.cache/strait}/bin/<key>/{kube-apiserver,etcd}
#   ${STRAIT_CACHE:-$HOME/.cache/strait}/bin/current -> <key>      (stable symlink)
#
# <key> is the sha256 of tools/*/{go.mod,go.sum,main.go}, the Go version, the
# CGO setting and the ldflags: when none of those changed, nothing is rebuilt.
#
# Usage:
#   scripts/build-kube-tools.sh                 build if needed (progress on stderr)
#   scripts/build-kube-tools.sh --print-dir     build if needed, print the binary dir on stdout
#   scripts/build-kube-tools.sh --print-crd-dir print the Gateway API standard CRD dir
#                                               (from the Go module cache; downloads if missing)
#   scripts/build-kube-tools.sh --env           build if needed, print `export` lines for
#                                               STRAIT_KUBE_BIN_DIR and STRAIT_GATEWAY_CRD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

# KUBE_VERSION and kube_ldflags.
# shellcheck source=scripts/kube-version.sh
source scripts/kube-version.sh
# The Gateway API release the `gateway-api` 0.22 Rust crate was generated from.
GATEWAY_API_VERSION="v1.5.1"

cache="${STRAIT_CACHE:-$HOME/.cache/strait}"
bin_root="$cache/bin"

apiserver_ldflags="$kube_ldflags"
etcd_ldflags="-s -w"

log() { echo "build-kube-tools: $*" >&2; }

crd_dir() {
  local tmp json dir
  tmp="$(mktemp -d)"
  # Outside any module so no go.mod/go.sum is touched.
  json="$(cd "$tmp" && GOWORK=off GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}")"
  rmdir "$tmp"
  dir="$(jq -r '.Dir // empty' <<<"$json")"
  if [[ -z "$dir" || ! -d "$dir/config/crd/standard" ]]; then
    log "go mod download sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION} failed: $json"
    exit 1
  fi
  echo "$dir/config/crd/standard"
}

compute_key() {
  {
    for tool in kube-apiserver etcd; do
      for f in go.mod go.sum main.go; do
        echo "== tools/$tool/$f"
        cat "tools/$tool/$f"
      done
    done
    echo "== tools/kube-apiserver/kubectl/main.go"
    cat tools/kube-apiserver/kubectl/main.go
    echo "== go: $(go version)"
    echo "== cgo: $(go env CGO_ENABLED) goflags: $(go env GOFLAGS)"
    echo "== ldflags kube-apiserver: $apiserver_ldflags"
    echo "== ldflags etcd: $etcd_ldflags"
  } | sha256sum | cut -c1-16
}

build() {
  local key dir start
  key="$(compute_key)"
  dir="$bin_root/$key"
  mkdir -p "$bin_root"
  # Serialise concurrent builds (parallel test binaries all call this script).
  exec 9>"$bin_root/.lock"
  flock 9
  if [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" && -x "$dir/kubectl" ]]; then
    log "kube tools up to date ($dir)"
  else
    start=$SECONDS
    tmp="$(mktemp -d "$bin_root/.build.XXXXXX")"
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    log "building kube-apiserver ${KUBE_VERSION}, kubectl and etcd into $dir (first build takes minutes)"
    (cd tools/etcd && go build -trimpath -ldflags "$etcd_ldflags" -o "$tmp/etcd" .)
    (cd tools/kube-apiserver && go build -trimpath -ldflags "$apiserver_ldflags" -o "$tmp/kube-apiserver" .)
    # kubectl of the same release (no version skew, no dependency on the machine's).
    (cd tools/kube-apiserver && go build -trimpath -ldflags "$apiserver_ldflags" -o "$tmp/kubectl" ./kubectl)
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    log "built in $((SECONDS - start))s"
  fi
  ln -sfn "$key" "$bin_root/current.tmp"
  mv -T "$bin_root/current.tmp" "$bin_root/current"
  flock -u 9
  echo "$dir"
}

case "${1:-}" in
  "")
    build >/dev/null
    ;;
  --print-dir)
    build
    ;;
  --print-crd-dir)
    crd_dir
    ;;
  --env)
    echo "export STRAIT_KUBE_BIN_DIR=$(build)"
    echo "export STRAIT_GATEWAY_CRD_DIR=$(crd_dir)"
    ;;
  -h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
  *)
    log "unknown argument: $1 (see --help)"
    exit 2
    ;;
esac
