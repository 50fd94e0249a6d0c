#!/usr/bin/env bash
# Builds the node's two container images without a registry or a base image, as OCI
# image-layout tarballs that `ctr -n k8s.io images import` reads:
#
#   OUTDIR/pause.tar    localhost/strait/pause:1.0    a static pause (tools/node/pause/pause.c),
#                                                     containerd's sandbox_image
#   OUTDIR/busybox.tar  localhost/strait/busybox:1.0  Debian's static busybox with its applet
#                                                     links: the test workload (sh, httpd, wget)
#   OUTDIR/coredns.tar  localhost/strait/coredns:1.15.0  CoreDNS (static, from
#                                                     scripts/build-node-tools.sh), when its
#                                                     path is given
#
# Each image is one uncompressed layer; tar runs with fixed owners, times and order, so
# the same inputs give the same digests. Usage: scripts/node-images.sh OUTDIR [COREDNS_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: node-images.sh OUTDIR [COREDNS_BINARY]}"
coredns="${2:-}"
mkdir -p "$out"
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh  # image names

log() { echo "node-images: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# pack NAME ROOTFS_DIR CONFIG_JSON_FRAGMENT OUT_TAR
# CONFIG_JSON_FRAGMENT is the image config's "config" object (Entrypoint, Cmd, Env...).
pack() {
  local name="$1" rootfs="$2" config="$3" tarball="$4"
  local work; work="$(mktemp -d)"
  mkdir -p "$work/blobs/sha256"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
  # Uncompressed: the tarball never leaves the machine, and gzip of the 55 MB coredns
  # took most of a minute on the busy 2-core machine. The digest is then also the diff_id.
  local layer; layer="$(sha "$work/layer.tar")"
  local diff_id="$layer"
  local layer_size; layer_size="$(size "$work/layer.tar")"
  mv "$work/layer.tar" "$work/blobs/sha256/$layer"

  jq -cn --argjson config "$config" --arg diff "sha256:$diff_id" '{
      architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: $config,
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "strait scripts/node-images.sh"}]
    }' >"$work/config.json"
  local cfg; cfg="$(sha "$work/config.json")"
  local cfg_size; cfg_size="$(size "$work/config.json")"
  mv "$work/config.json" "$work/blobs/sha256/$cfg"

  jq -cn --arg cfg "sha256:$cfg" --argjson cfg_size "$cfg_size" \
         --arg layer "sha256:$layer" --argjson layer_size "$layer_size" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cfg, size: $cfg_size},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $layer, size: $layer_size}]
    }' >"$work/manifest.json"
  local man; man="$(sha "$work/manifest.json")"
  local man_size; man_size="$(size "$work/manifest.json")"
  mv "$work/manifest.json" "$work/blobs/sha256/$man"

  # io.containerd.image.name: the full name `ctr images import` gives the image;
  # org.opencontainers.image.ref.name: the tag, for other OCI-layout readers.
  jq -cn --arg man "sha256:$man" --argjson man_size "$man_size" --arg name "$name" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $man, size: $man_size,
        platform: {architecture: "amd64", os: "linux"},
        annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": ($name | sub(".*:"; ""))}
      }]
    }' >"$work/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$tarball" oci-layout index.json blobs
  rm -rf "$work"
  log "$name -> $tarball (manifest sha256:$man)"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# pause: static, stripped; -Os keeps it small (the image is pulled by nobody, but small is quick to import).
mkdir -p "$tmp/pause"
gcc -Os -static -s -o "$tmp/pause/pause" tools/node/pause/pause.c
pack "$PAUSE_IMAGE" "$tmp/pause" '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$out/pause.tar"

# busybox: the static binary plus one symlink per applet, /tmp and a www dir to serve.
bb=/bin/busybox
file -L "$bb" | grep -q 'statically linked' || { log "$bb is not static (scripts/install-node-deps.sh installs busybox-static)"; exit 1; }
mkdir -p "$tmp/busybox/bin" "$tmp/busybox/tmp" "$tmp/busybox/www" "$tmp/busybox/etc"
chmod 1777 "$tmp/busybox/tmp"
cp "$bb" "$tmp/busybox/bin/busybox"
for applet in $("$bb" --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$tmp/busybox/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$tmp/busybox/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/busybox/etc/group"
pack "$BUSYBOX_IMAGE" "$tmp/busybox" '{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]}' "$out/busybox.tar"

if [[ -n "$coredns" ]]; then
  file -L "$coredns" | grep -q 'statically linked' || { log "$coredns is not static"; exit 1; }
  mkdir -p "$tmp/coredns/etc/coredns"
  cp "$coredns" "$tmp/coredns/coredns"
  pack "$COREDNS_IMAGE" "$tmp/coredns" '{"Entrypoint":["/coredns"],"Cmd":["-conf","/etc/coredns/Corefile"],"ExposedPorts":{"53/tcp":{},"53/udp":{}}}' "$out/coredns.tar"
fi
