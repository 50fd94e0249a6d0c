# shellcheck shell=bash
# The Kubernetes release every tool built here comes from, and the -ldflags that stamp
# it into the binaries (variable names: k8s.io/component-base@v0.36.3/version/base.go;
# kubelet reports this version in its Node status, and the API server checks version
# skew against it). Sourced by build-kube-tools.sh and build-node-tools.sh, so the
# control plane and the node can never disagree on the version.
KUBE_VERSION="v1.36.3"
kube_major="${KUBE_VERSION#v}"; kube_major="${kube_major%%.*}"
kube_minor="${KUBE_VERSION#v*.}"; kube_minor="${kube_minor%%.*}"
# shellcheck disable=SC2034 # used by the scripts that source this file
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=${kube_major} -X k8s.io/component-base/version.gitMinor=${kube_minor} -X k8s.io/component-base/version.gitTreeState=clean"
