#!/usr/bin/env bash
# Installs what the browser test needs, only what is missing:
#
#   - Debian's Chromium at /usr/bin/chromium (apt-get; the test drives this browser, it
#     never downloads one of its own);
#   - playwright-core, pinned in package-lock.json, into tests/browser/node_modules
#     (`npm ci`, again whenever package-lock.json changes).
#
# Usage: tests/browser/setup.sh   (from anywhere; needs node and npm, and root or sudo
# when Chromium is missing)
set -euo pipefail
cd "$(dirname "$0")"

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "browser setup: $tool is required" >&2; exit 1; }
done

if [[ ! -x /usr/bin/chromium ]]; then
    echo "browser setup: installing Debian's chromium"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "browser setup: root or sudo is needed to install chromium" >&2; exit 1; }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium
fi
/usr/bin/chromium --version

# node_modules is current when it was installed from this very package-lock.json.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.package-lock.sha256
if [[ ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
    echo "browser setup: npm ci"
    npm ci --no-audit --no-fund
    echo "$lock_hash" > "$stamp"
fi
