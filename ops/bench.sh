#!/usr/bin/env bash
# Measures a node with the load generator: for each run, starts a release build of switchboard on
# fresh data (rate limits off), drives it with `switchboard load`, and keeps the report and its
# JSON under target/bench/. Compare medians of several runs; the machine is shared and noisy.
#
#   ops/bench.sh embedded|distributed RATE [CONNECTIONS=1000] [RUNS=3] [DURATION=20s]
#
# `distributed` expects the engines of ops/engines/start.sh to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?embedded or distributed}
rate=${2:?messages per second}
connections=${3:-1000}
runs=${4:-3}
duration=${5:-20s}
port=18700
out=target/bench
mkdir -p "$out"

cargo build --release --locked -p switchboard-api
bin=target/release/switchboard
source ops/engines/common.sh

for run in $(seq 1 "$runs"); do
    data=$(mktemp -d)
    id="bench$(date +%s)r$run"
    backends=()
    if [ "$mode" = distributed ]; then
        backends=(--log "kafka://127.0.0.1:${KAFKA_PORT}?prefix=$id." --store "scylla://127.0.0.1:${CQL_PORT}/$id"
                  --presence "redis://127.0.0.1:${REDIS_PORT}?prefix=$id:")
    fi
    "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" "${backends[@]}" \
        --rate-auth off --rate-messages off --rate-general off --rate-strict off >"$data/server.log" 2>&1 &
    server=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
        kill -0 "$server" 2>/dev/null || { tail -20 "$data/server.log"; exit 1; }
        sleep 0.5
    done
    name="$out/$mode-$rate-$connections-run$run"
    "$bin" load --url "http://127.0.0.1:$port" --connections "$connections" --rate "$rate" \
        --duration "$duration" --json "$name.json" >"$name.txt" 2>&1 || true
    kill -TERM "$server"; wait "$server" || true
    rm -rf "$data"
    sed -n '/^connections/,/^sockets dropped/p' "$name.txt"
done
