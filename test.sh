#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, crash, OCI conformance,
# and the real clients: skopeo, containerd, oras). Needs the packages listed in README.md.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
