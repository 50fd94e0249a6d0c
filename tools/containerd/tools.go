//go:build tools

// Package tools pins containerd v2 (github.com/containerd/containerd/v2) in this module:
// scripts/build-node-tools.sh builds its commands — containerd, containerd-shim-runc-v2 and
// ctr — by package path from here. The build tag keeps this file out of every build;
// `go mod tidy` still sees the imports and keeps the requirement and its go.sum lines.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
