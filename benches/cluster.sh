#!/usr/bin/env bash
# A switchboard cluster on one machine, under load: a 3-node NATS cluster
# (deploy/nats/run-local.sh), NODES switchboard processes (release build) on one CQL
# keyspace, and switchboard-load spreading its connections over all of them (round-robin,
# so both ends of every chat pair are on different nodes: every delivery crosses NATS).
# Everything it starts is stopped on exit; the run is bounded by switchboard-load's own
# deadline.
#
# Usage: benches/cluster.sh NODES -- <switchboard-load arguments without --url>
#   e.g. benches/cluster.sh 3 -- chat -n 6000 --send-rate 300 --duration 30s
# Environment: SWITCHBOARD_BENCH_CQL=cql://host:port (default: starts the project's
# Cassandra on 127.0.0.1:19942 with deploy/cassandra/cassandra.sh), BENCH_BASE_PORT
# (default 18100: node i listens on BASE+i).
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="${1:?usage: benches/cluster.sh NODES -- <switchboard-load arguments>}"
shift
[[ "${1:-}" == "--" ]] && shift
base_port="${BENCH_BASE_PORT:-18100}"
work="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster-bench.XXXXXX")"
export SWITCHBOARD_JWT_SECRET="${SWITCHBOARD_JWT_SECRET:-bench-secret}"
export SWITCHBOARD_ADMIN_TOKEN="${SWITCHBOARD_ADMIN_TOKEN:-bench-admin}"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    NATS_LOCAL_DIR="$work/nats" bash deploy/nats/run-local.sh stop || true
    if [[ -n "${started_cassandra:-}" ]]; then
        bash deploy/cassandra/cassandra.sh stop "$work/cassandra" >/dev/null 2>&1 || true
    fi
    echo "logs kept in $work" >&2
}
trap cleanup EXIT

cargo build --release --locked --bin switchboard --bin switchboard-load >&2

cql="${SWITCHBOARD_BENCH_CQL:-}"
if [[ -z "$cql" ]]; then
    bash deploy/cassandra/cassandra.sh install >&2
    CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-17900}" \
        bash deploy/cassandra/cassandra.sh start "$work/cassandra" 19942 >&2
    started_cassandra=1
    cql="cql://127.0.0.1:19942"
fi
NATS_LOCAL_DIR="$work/nats" bash deploy/nats/run-local.sh start >&2
nats="nats://127.0.0.1:4221,nats://127.0.0.1:4222,nats://127.0.0.1:4223"

cat >"$work/switchboard.toml" <<TOML
[gateway]
accepts_per_sec = 50000
accepts_burst = 50000
[cql]
migrate_on_start = true
TOML

keyspace="bench_$(date +%s)"
urls=()
for i in $(seq 1 "$nodes"); do
    port=$((base_port + i))
    ./target/release/switchboard serve --config "$work/switchboard.toml" --listen "127.0.0.1:$port" \
        --node-id "n$i" --nats "$nats" --store "$cql/$keyspace" \
        >"$work/node-$i.out" 2>"$work/node-$i.log" &
    pids+=($!)
    # One after the other: the first creates the schema.
    for _ in $(seq 300); do
        grep -q "switchboard listening on" "$work/node-$i.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "switchboard listening on" "$work/node-$i.out" || { echo "node $i did not start" >&2; tail "$work/node-$i.log" >&2; exit 1; }
    urls+=("ws://127.0.0.1:$port/ws")
done
# Let membership settle (heartbeats every second).
sleep 3
url_list="$(IFS=,; echo "${urls[*]}")"
echo "cluster of $nodes nodes: $url_list" >&2
./target/release/switchboard-load "$@" --url "$url_list"
for i in $(seq 1 "$nodes"); do
    curl -fsS -H "Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN" "http://127.0.0.1:$((base_port + i))/api/v1/stats" >&2 || true
    echo >&2
done
