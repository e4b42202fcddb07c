#!/usr/bin/env bash
# Runs every test of switchboard, on a fresh machine too:
#   1. the system packages the build needs (Debian: cmake and the C headers librdkafka builds with),
#   2. formatting and lints,
#   3. the Socket.IO clients the /socket.io/ tests drive and the OpenAPI and AsyncAPI parsers the
#      API descriptions are checked with (npm and pip install them, at the pinned
#      versions of api/tests/clients, under the target directory), every suite on the embedded
#      backends, the dashboards and alerts against a live node and Prometheus
#      (ops/monitoring/check.sh), the TypeScript client's tests (clients/typescript: npm installs
#      its pinned packages) against live nodes, the web app's bundle checked against its sources
#      and its browser tests in headless Chromium (clients/web), and each fuzz target for 30 s
#      (ops/fuzz.sh),
#   4. the real engines (Kafka, Cassandra, Redis and a Redis Cluster: ops/engines/start.sh fetches
#      and starts them),
#   5. the backend conformance suites, the end-to-end suites, the TypeScript client's tests and
#      the browser tests again, on those engines, with examples/analytics run on Kafka by Confluent's Python client
#      (pip installs it, at the pinned versions, in a virtual environment under the target
#      directory).
#
#   ops/test.sh
#
# Needs a Rust toolchain (cargo, and rustup's nightly for the fuzz targets), Java 17 for the
# engines, Python 3 for the analytics example and the Socket.IO tests, and Node.js 20.10 or later
# for the TypeScript client and the web app; everything else it installs (Chromium included).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each crate is built once per run: incremental state would only fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

if ! command -v cargo >/dev/null; then
    echo "ops/test.sh: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

# Said first: a disk that fills up fails a build halfway, with a message about some file.
mkdir -p "${CARGO_TARGET_DIR:-target}"
echo "== free disk space for the builds: $(df -h --output=avail "${CARGO_TARGET_DIR:-target}" | tail -1 | tr -d ' ')"

echo "== system packages"
ops/deps.sh

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Every suite's summary lines, for the total at the end.
results=$(mktemp)
total() {
    awk '/^test result:/ { passed += $4; failed += $6 }
        /^# pass / { passed += $3 } /^# fail / { failed += $3 }
        END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
}

# The TypeScript client's unit tests and its tests against live nodes of the binary given.
client_tests() {
    (cd clients/typescript && SWITCHBOARD_BIN="$1" npm test)
}

# The web app's browser tests, against a live node of the binary given.
browser_tests() {
    (cd clients/web && SWITCHBOARD_BIN="$1" npm test)
}

echo "== Node and Python packages of the API tests (api/tests/clients), at their pinned versions"
socketio_clients="${CARGO_TARGET_DIR:-target}/socketio-clients"
mkdir -p "$socketio_clients"
cp api/tests/clients/package.json api/tests/clients/package-lock.json "$socketio_clients/"
(cd "$socketio_clients" && npm ci --no-audit --no-fund --loglevel=error)
[ -x "$socketio_clients/venv/bin/python" ] || python3 -m venv "$socketio_clients/venv"
"$socketio_clients/venv/bin/pip" install --quiet --disable-pip-version-check -r api/tests/clients/requirements.txt
SWITCHBOARD_SOCKETIO_CLIENTS="$(cd "$socketio_clients" && pwd)"
export SWITCHBOARD_SOCKETIO_CLIENTS

echo "== tests on the embedded backends"
cargo test --workspace --locked 2>&1 | tee -a "$results"

echo "== dashboards and alerts against a live node and a real Prometheus"
cargo build --locked -p switchboard-api --bin switchboard
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
ops/monitoring/check.sh "$target_dir/debug/switchboard"

echo "== TypeScript client"
(cd clients/typescript && npm ci --no-audit --no-fund --prefer-offline)
client_tests "$target_dir/debug/switchboard" 2>&1 | tee -a "$results"

echo "== web app: the embedded bundle is the build of its sources; browser tests in Chromium"
(cd clients/web && npm ci --no-audit --no-fund --prefer-offline && npm run check-bundle)
browser_tests "$target_dir/debug/switchboard" 2>&1 | tee -a "$results"

echo "== fuzzing what clients and the log send, 30 s per target"
ops/fuzz.sh 30

echo "== Python environment of examples/analytics"
analytics_venv="${CARGO_TARGET_DIR:-target}/analytics-venv"
[ -x "$analytics_venv/bin/python" ] || python3 -m venv "$analytics_venv"
"$analytics_venv/bin/pip" install --quiet --disable-pip-version-check -r examples/analytics/requirements.txt
analytics_python="$(cd "$analytics_venv" && pwd)/bin/python"

echo "== engines"
# Kafka's storage format takes every shape of cluster id a start may draw.
ops/engines/check-cluster-ids.sh
ops/engines/start.sh all
source ops/engines/common.sh
# On a failure, the engines' own last words come before they are stopped.
on_exit() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        for log in "$RUN_ROOT"/kafka/logs/server.log "$RUN_ROOT"/cassandra/logs/system.log "$RUN_ROOT"/redis/redis.log "$RUN_ROOT"/redis-cluster/*/redis.log; do
            [ -f "$log" ] && { echo "== last lines of $log"; tail -n 30 "$log"; }
        done
    fi
    ops/engines/stop.sh all
    total
    exit "$status"
}
trap on_exit EXIT

echo "== tests on Kafka, Cassandra and Redis"
# Each test server gets its own topics, keyspace and key prefix: {unique} is filled in per server.
# A consumer group takes seconds to form on a busy machine: consistency waits get room for it.
# Cassandra asks every client for a password; Kafka's SASL_SSL listener and Cassandra's TLS trust
# the throw-away CAs start.sh made.
cql="$CQL_USER:$CQL_PASSWORD@127.0.0.1:${CQL_PORT}"
backend_args="--log kafka://127.0.0.1:${KAFKA_PORT}?prefix={unique}. --store scylla://$cql/{unique} --presence redis://127.0.0.1:${REDIS_PORT}?prefix={unique}: --consistency-timeout 30s"
SWITCHBOARD_REQUIRE_ENGINES=1 \
SWITCHBOARD_ANALYTICS_PYTHON="$analytics_python" \
SWITCHBOARD_KAFKA="127.0.0.1:${KAFKA_PORT}" \
SWITCHBOARD_KAFKA_SASL="kafka://$KAFKA_SASL_USER:$(url_encode "$KAFKA_SASL_PASSWORD")@127.0.0.1:${KAFKA_SASL_PORT}?ca=$RUN_ROOT/kafka/tls/ca.pem" \
SWITCHBOARD_CQL="$cql" \
SWITCHBOARD_CQL_CA="$RUN_ROOT/cassandra/tls/ca.pem" \
SWITCHBOARD_REDIS="redis://127.0.0.1:${REDIS_PORT}" \
SWITCHBOARD_REDIS_CLUSTER="redis+cluster://$(printf '127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]}" | sed 's/,$//')" \
SWITCHBOARD_TEST_BACKEND_ARGS="$backend_args" \
    cargo test --workspace --locked 2>&1 | tee -a "$results"

echo "== TypeScript client on Kafka, Cassandra and Redis"
SWITCHBOARD_TEST_BACKEND_ARGS="$backend_args" client_tests "$target_dir/debug/switchboard" 2>&1 | tee -a "$results"

echo "== web app's browser tests on Kafka, Cassandra and Redis"
SWITCHBOARD_TEST_BACKEND_ARGS="$backend_args" browser_tests "$target_dir/debug/switchboard" 2>&1 | tee -a "$results"
