#!/usr/bin/env bash
# Measures a node with the load generator: for each run, starts a release build of switchboard on
# fresh data (rate limits off), drives it with `switchboard load`, and keeps the report and its
# JSON under target/bench/. Compare medians of several runs; the machine is shared and noisy.
#
#   ops/bench.sh embedded|distributed RATE [CONNECTIONS=1000] [RUNS=3] [DURATION=20s]
#   ops/bench.sh sweep embedded|distributed [CONNECTIONS=1000] [DURATION=15s] [FROM=10000] [STEP=10000]
#
# The sweep raises the rate by STEP from FROM until delivery falls behind (under 98% of the
# offered rate delivered, or messages left undelivered or unsent) and prints one markdown row per
# rate: delivered/s, send → ack and send → delivered percentiles, the server's CPU per delivered
# message and its memory per connection.
#
# BENCH_LOAD_ARGS adds options to every `switchboard load` (e.g. "--group-size 100").
# `distributed` expects the engines of ops/engines/start.sh to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

sweep=false
if [ "${1:-}" = sweep ]; then
    sweep=true
    shift
fi
mode=${1:?embedded or distributed}
case "$mode" in embedded|distributed) ;; *) echo "mode must be embedded or distributed, not $mode" >&2; exit 2 ;; esac
if $sweep; then
    connections=${2:-1000}
    duration=${3:-15s}
    from=${4:-10000}
    step=${5:-10000}
    command -v jq >/dev/null || { echo "the sweep reads the reports with jq: apt-get install jq" >&2; exit 1; }
else
    rate=${2:?messages per second}
    connections=${3:-1000}
    runs=${4:-3}
    duration=${5:-20s}
fi
port=18700
out=target/bench
mkdir -p "$out"
read -r -a load_args <<<"${BENCH_LOAD_ARGS:-}"

cargo build --release --locked -p switchboard-api
bin=target/release/switchboard
source ops/engines/common.sh

# One run on a fresh node: run_once RATE NAME writes NAME.txt and NAME.json.
run_once() {
    local rate=$1 name=$2 data id server
    data=$(mktemp -d)
    id="bench$(date +%s)"
    local backends=()
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
    "$bin" load --url "http://127.0.0.1:$port" --connections "$connections" --rate "$rate" \
        --duration "$duration" --json "$name.json" "${load_args[@]}" >"$name.txt" 2>&1 || true
    kill -TERM "$server"; wait "$server" || true
    rm -rf "$data"
}

if ! $sweep; then
    for run in $(seq 1 "$runs"); do
        name="$out/$mode-$rate-$connections-run$run"
        run_once "$rate" "$name"
        sed -n '/^connections/,/^sockets dropped/p' "$name.txt"
    done
    exit 0
fi

echo "| offered/s | delivered/s | ack p50 / p99 / p99.9 (ms) | delivered p50 / p99 / p99.9 (ms) | server CPU per message | memory per connection |"
echo "|---|---|---|---|---|---|"
rate=$from
while :; do
    name="$out/sweep-$mode-$rate-$connections"
    run_once "$rate" "$name"
    [ -s "$name.json" ] || { echo "no report for $rate/s; see $name.txt" >&2; exit 1; }
    jq -r '
        def ms: . * 10 | round / 10 | tostring;
        def pct: "\(.p50_ms | ms) / \(.p99_ms | ms) / \(.p999_ms | ms)";
        "| \(.offered.rate_per_s | round) | \(.throughput.delivered_messages_per_s | round) | \(.latency.ack | pct) | \(.latency.delivery | pct) | \(if .cpu.per_delivered_message_us then "\(.cpu.per_delivered_message_us | round) µs" else "n/a" end) | \(if .memory.per_connection_bytes then "\(.memory.per_connection_bytes / 1024 * 10 | round / 10) KiB" else "n/a" end) |"
    ' "$name.json"
    behind=$(jq '.throughput.delivered_messages_per_s < 0.98 * .offered.rate_per_s
                 or .throughput.undelivered_at_end > 0 or .throughput.skipped_sends > 0' "$name.json")
    [ "$behind" = true ] && break
    rate=$((rate + step))
done
