#!/usr/bin/env bash
# Runs the 3-node NATS cluster of deploy/nats/nats-{1,2,3}.conf on one machine, for
# trying a switchboard cluster locally: node i listens for clients on 127.0.0.1:422i,
# routes on 622i, monitoring on 822i. Data and logs go to a temporary directory.
#
# Usage: deploy/nats/run-local.sh start|stop|status   (nats-server from
#        tests/nats/setup.sh, or $NATS_SERVER)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${NATS_LOCAL_DIR:-${TMPDIR:-/tmp}/switchboard-nats}"
nats="${NATS_SERVER:-$(bash "$here/../../tests/nats/setup.sh" 2>/dev/null | tail -n 1)}"

start() {
    mkdir -p "$state"
    for i in 1 2 3; do
        # The same file, with this machine's addresses and ports.
        sed -e "s/0\.0\.0\.0:4222/127.0.0.1:422$i/" -e "s/0\.0\.0\.0:8222/127.0.0.1:822$i/" \
            -e "s/0\.0\.0\.0:6222/127.0.0.1:622$i/" -e "s#nats-route://nats-\([123]\):6222#nats-route://127.0.0.1:622\1#" \
            "$here/nats-$i.conf" >"$state/nats-$i.conf"
        "$nats" -t -c "$state/nats-$i.conf" >/dev/null 2>&1
        "$nats" -c "$state/nats-$i.conf" >"$state/nats-$i.log" 2>&1 &
        echo $! >"$state/nats-$i.pid"
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do
            # Routes to both peers (each may be a pool of several connections).
            peers=$(curl -fsS "http://127.0.0.1:822$i/routez" 2>/dev/null | grep -o '"remote_name": "nats-[123]"' | sort -u | wc -l)
            if [[ "$peers" -ge 2 ]]; then
                continue 2
            fi
            sleep 0.1
        done
        echo "nats-$i did not form its routes; see $state/nats-$i.log" >&2
        exit 1
    done
    echo "NATS cluster up: nats://127.0.0.1:4221,nats://127.0.0.1:4222,nats://127.0.0.1:4223"
}

stop() {
    for i in 1 2 3; do
        if [[ -f "$state/nats-$i.pid" ]]; then
            kill "$(cat "$state/nats-$i.pid")" 2>/dev/null || true
            rm -f "$state/nats-$i.pid"
        fi
    done
}

status() {
    for i in 1 2 3; do
        printf 'nats-%s: ' "$i"
        curl -fsS "http://127.0.0.1:822$i/routez" 2>/dev/null | grep -o '"remote_name": "nats-[123]"' | sort -u | tr '\n' ' ' || true
        echo
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
