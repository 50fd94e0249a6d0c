#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, banned crates (a second crypto provider,
# serde_yaml, openssl), sources. Advisories are checked when the RustSec database
# can be fetched; on machines that reach only package registries that step reports
# why it was skipped instead of failing silently.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
cargo deny --all-features check licenses bans sources
if cargo deny fetch db >/tmp/strait-deny-fetch.log 2>&1; then
  cargo deny check advisories
else
  echo "deny: advisories NOT checked: the RustSec database could not be fetched:"
  tail -n 3 /tmp/strait-deny-fetch.log
fi
