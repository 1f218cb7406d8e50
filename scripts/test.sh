#!/usr/bin/env bash
# Runs every test. Installs and starts what the tests need on loopback ports,
# and stops it again on exit. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== format and lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

echo "== tests (embedded engines)"
cargo test --all-targets --locked -- --include-ignored "$@"
