#!/usr/bin/env bash
# Measures a mass reconnect with resume: for each run, starts a release build of switchboard on
# fresh data (rate limits off, room for every socket), then `switchboard load --scenario
# reconnect`: CONNECTIONS sockets each miss OFFLINE of traffic at RATE messages/s, then all come
# back at once with `resume`. Keeps the report, its JSON and the server's log under
# target/bench/. Figures: feed reads per event replayed, and the drain time (until the last
# socket has every message it missed). When "events routed into feeds during the reconnect" is not
# 0, the delivery stage had not routed everything sent before the sockets came back: the drain time
# then measures that backlog, not the resume.
#
#   ops/bench-reconnect.sh embedded|distributed [CONNECTIONS=10000] [RATE=1000] [OFFLINE=60s] [RUNS=1]
#
# `distributed` expects the engines of ops/engines/start.sh to be running (with other ports,
# export their SWITCHBOARD_*_PORT variables first: ops/engines/common.sh reads them). Setup
# registers CONNECTIONS users, each an argon2 hash: 10,000 take several minutes here.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?embedded or distributed}
connections=${2:-10000}
rate=${3:-1000}
offline=${4:-60s}
runs=${5:-1}
port=18710
out=target/bench
stamp=$(date +%Y%m%dT%H%M%S)
mkdir -p "$out"
case "$mode" in
    embedded | distributed) ;;
    *) echo "ops/bench-reconnect.sh: the mode is embedded or distributed, not $mode" >&2; exit 2 ;;
esac

# Every socket is an open file, in the server and in the load generator alike.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -le "$((connections + 200))" ]; then
    echo "ops/bench-reconnect.sh: $connections sockets need more than the $(ulimit -n) open files allowed" >&2
    exit 1
fi

cargo build --release --locked -p switchboard-api
bin=target/release/switchboard
source ops/engines/common.sh

for run in $(seq 1 "$runs"); do
    data=$(mktemp -d)
    id="benchrc$(date +%s)r$run"
    backends=()
    if [ "$mode" = distributed ]; then
        backends=(--log "kafka://127.0.0.1:${KAFKA_PORT}?prefix=$id." --store "scylla://$CQL_USER:$CQL_PASSWORD@127.0.0.1:${CQL_PORT}/$id"
                  --presence "redis://127.0.0.1:${REDIS_PORT}?prefix=$id:")
    fi
    "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" "${backends[@]}" \
        --rate-auth off --rate-messages off --rate-general off --rate-strict off \
        --rate-sockets off --rate-sockets-ip off \
        --max-connections "$((connections + 1000))" >"$data/server.log" 2>&1 &
    server=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
        kill -0 "$server" 2>/dev/null || { tail -20 "$data/server.log"; exit 1; }
        sleep 0.5
    done
    name="$out/reconnect-$mode-$connections-$rate-$offline-$stamp-run$run"
    "$bin" load --scenario reconnect --url "http://127.0.0.1:$port" --connections "$connections" \
        --rate "$rate" --offline "$offline" --json "$name.json" >"$name.txt" 2>&1 || true
    kill -TERM "$server"; wait "$server" || true
    cp "$data/server.log" "$name.server.log"
    rm -rf "$data"
    sed -n '/^switchboard reconnect test/,/^memory/p' "$name.txt"
    grep -m1 -i 'error' "$name.txt" || true
done
