#!/usr/bin/env bash
# Runs every test of switchboard: formatting and lints, the unit and conformance suites, and the
# end-to-end suites that start real server processes on loopback.
#
#   ops/test.sh
#
# Needs only a Rust toolchain (cargo); crates come from crates.io on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "ops/test.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests on the embedded backends"
cargo test --workspace --locked
