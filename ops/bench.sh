#!/usr/bin/env bash
# Measures a node with the load generator: for each run, starts a release build of switchboard on
# fresh data (rate limits off), drives it with `switchboard load`, and keeps the report and its
# JSON under target/bench/. Compare medians of several runs; the machine is shared and noisy.
#
#   ops/bench.sh [group] embedded|distributed RATE [CONNECTIONS=1000] [RUNS=3] [DURATION=20s]
#   ops/bench.sh [group] sweep embedded|distributed [CONNECTIONS=1000] [DURATION=15s] [FROM=10000] [STEP=10000]
#   ops/bench.sh idle [CONNECTIONS=15000] [RUNS=3] [SOURCES=4] [DURATION=10s]
#   ops/bench.sh rebuild embedded|distributed [RATE=20000] [FILL=60s] [RUNS=3]
#
# Runs at one RATE print one markdown row per run and a row of medians: delivered/s, deliveries/s
# (messages delivered × their recipients), send → ack and send → delivered percentiles, the
# server's CPU per delivered message and its memory per connection.
#
# The sweep raises the rate by STEP from FROM until delivery falls behind (under 98% of the
# offered rate delivered, or messages left undelivered or unsent) and prints the same row per rate.
#
# `group` puts the users in groups of GROUP_SIZE (default 100) instead of direct conversations,
# every member connected: each message is delivered GROUP_SIZE - 1 times, so RATE messages/s are
# RATE × (GROUP_SIZE - 1) deliveries/s. For example `ops/bench.sh group embedded 200` offers
# 19,800 deliveries/s to 1,000 sockets in 10 groups.
#
# `idle` measures the memory per idle authenticated connection, without registration's memory in
# the server: it registers CONNECTIONS users on one server and saves their accounts
# (target/bench/idle-CONNECTIONS-accounts.json), stops it, then for each run starts a server on a
# copy of that data, opens every socket from SOURCES loopback addresses, waits for every `ready`,
# samples the server's memory and holds the sockets idle for a 5 s warm-up and DURATION. The rows
# give the server's memory before and after and the growth per connection. Embedded only.
# Registering takes a while: every user is an argon2 hash (15,000 take several minutes here).
#
# `rebuild` measures `switchboard rebuild`: it fills an embedded log by driving a node at RATE
# messages/s for FILL (1,000 connections), stops the node, then replays that log RUNS times into a
# fresh embedded store (`embedded`) or a fresh Cassandra keyspace (`distributed`), one row per run
# with the events replayed, events/s and the CPU per event of what bounds the replay: an embedded
# store's fold and commit threads (200,000 events/s needs each under 5 µs), or Cassandra. Into
# Cassandra, BENCH_REBUILD_WARMUPS (default 2) replays go first, unreported, while its JIT compiles,
# and each replay starts once Cassandra has gone quiet after the one before.
#
# BENCH_LOAD_ARGS adds options to every `switchboard load` (e.g. "--body-bytes 1000").
# `distributed` expects the engines of ops/engines/start.sh to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

group_size=2
if [ "${1:-}" = group ]; then
    group_size=${GROUP_SIZE:-100}
    shift
fi
scenario=steady
case "${1:-}" in
    sweep) scenario=sweep; shift ;;
    idle) scenario=idle; mode=embedded; shift ;;
    rebuild) scenario=rebuild; shift ;;
esac
if [ "$scenario" != idle ]; then
    mode=${1:?embedded or distributed}
    shift
fi
case "$mode" in embedded|distributed) ;; *) echo "mode must be embedded or distributed, not $mode" >&2; exit 2 ;; esac
case "$scenario" in
    sweep)
        connections=${1:-1000}
        duration=${2:-15s}
        from=${3:-10000}
        step=${4:-10000}
        ;;
    idle)
        connections=${1:-15000}
        runs=${2:-3}
        sources=${3:-4}
        duration=${4:-10s}
        ;;
    rebuild)
        rate=${1:-20000}
        fill=${2:-60s}
        runs=${3:-3}
        connections=1000
        ;;
    steady)
        rate=${1:?messages per second}
        connections=${2:-1000}
        runs=${3:-3}
        duration=${4:-20s}
        ;;
esac
command -v jq >/dev/null || { echo "the rows are read from the reports with jq: apt-get install jq" >&2; exit 1; }
port=18700
out=target/bench
mkdir -p "$out"
read -r -a load_args <<<"${BENCH_LOAD_ARGS:-}"
load_args+=(--group-size "$group_size")

# Every socket is an open file, in the server and in the load generator alike.
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p switchboard-api
bin=target/release/switchboard
source ops/engines/common.sh

# start_server DATA [ID]: starts a server on the data directory DATA (its backends named ID when
# distributed), with room for every socket, and waits until it is ready; its process id is left
# in $server.
start_server() {
    local data=$1 id=${2:-}
    local backends=()
    if [ "$mode" = distributed ] && [ "$scenario" != rebuild ]; then
        backends=(--log "kafka://127.0.0.1:${KAFKA_PORT}?prefix=$id." --store "scylla://$CQL_USER:$CQL_PASSWORD@127.0.0.1:${CQL_PORT}/$id"
                  --presence "redis://127.0.0.1:${REDIS_PORT}?prefix=$id:")
    fi
    "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" "${backends[@]}" \
        --rate-auth off --rate-messages off --rate-general off --rate-strict off \
        --rate-sockets off --rate-sockets-ip off \
        --max-connections "$((connections + 1000))" >>"$data/server.log" 2>&1 &
    server=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
        kill -0 "$server" 2>/dev/null || { tail -20 "$data/server.log"; exit 1; }
        sleep 0.5
    done
}

# Stops the server gracefully, or after a minute forcibly, and waits for it to exit.
stop_server() {
    kill -TERM "$server"
    for _ in $(seq 1 120); do
        kill -0 "$server" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$server" 2>/dev/null; then
        echo "the server did not stop within a minute of SIGTERM; killing it" >&2
        kill -KILL "$server"
    fi
    wait "$server" || true
}

# One run on a fresh node: run_once RATE NAME writes NAME.txt and NAME.json.
run_once() {
    local rate=$1 name=$2 data
    data=$(mktemp -d)
    start_server "$data" "bench$(date +%s)"
    "$bin" load --url "http://127.0.0.1:$port" --connections "$connections" --rate "$rate" \
        --duration "$duration" --json "$name.json" "${load_args[@]}" >"$name.txt" 2>&1 || true
    stop_server
    rm -rf "$data"
    [ -s "$name.json" ] || { echo "no report for $name; see $name.txt" >&2; exit 1; }
}

# table HEADER ROW [REPORT...]: prints the markdown HEADER, one row per report labelled by its
# run, and for more than one report a row of the medians of every figure. ROW defines the jq
# function row($name) of a report.
table() {
    local header=$1 row=$2
    shift 2
    printf '%s\n' "$header" "$(sed 's/[^|]/-/g; s/--*/---/g' <<<"$header")"
    for report in "$@"; do
        jq -r "$row; row(\"$(basename "$report" .json | sed 's/.*-//')\")" "$report"
    done
    [ $# -gt 1 ] || return 0
    jq -rs "$row;"'
        def median: sort | .[(length - 1) / 2 | floor];
        . as $runs
        | reduce ($runs[0] | paths(numbers)) as $path ($runs[0]; setpath($path; [$runs[] | getpath($path)] | median))
        | row("median")' "$@"
}

load_header="| run | offered/s | delivered/s | deliveries/s | ack p50 / p99 / p99.9 (ms) | delivered p50 / p99 / p99.9 (ms) | server CPU per message | memory per connection |"
load_row='
    def ms: . * 10 | round / 10 | tostring;
    def pct: "\(.p50_ms | ms) / \(.p99_ms | ms) / \(.p999_ms | ms)";
    def kib: if . then "\(. / 1024 * 10 | round / 10) KiB" else "n/a" end;
    def row($name): "| \($name) | \(.offered.rate_per_s | round) | \(.throughput.delivered_messages_per_s | round) | \(.throughput.deliveries_per_s | round) | \(.latency.ack | pct) | \(.latency.delivery | pct) | \(if .cpu.per_delivered_message_us then "\(.cpu.per_delivered_message_us | round) µs" else "n/a" end) | \(.memory.per_connection_bytes | kib) |"'

idle_header="| run | connections held | source addresses | memory before | memory after | per connection | per connection at the end |"
idle_row='
    def mib: "\(. / 1048576 * 10 | round / 10) MiB";
    def kib: if . then "\(. / 1024 * 10 | round / 10) KiB" else "n/a" end;
    def row($name): "| \($name) | \(.connections.held) | \(.offered.source_addresses // "any") | \(.memory.before_bytes | mib) | \(.memory.after_bytes | mib) | \(.memory.per_connection_bytes | kib) | \(.memory.per_connection_at_end_bytes | kib) |"'

kind=$mode
[ "$group_size" = 2 ] || kind="$mode-groups$group_size"

case "$scenario" in
steady)
    reports=()
    for run in $(seq 1 "$runs"); do
        name="$out/$kind-$rate-$connections-run$run"
        run_once "$rate" "$name"
        reports+=("$name.json")
    done
    table "$load_header" "$load_row" "${reports[@]}"
    ;;
sweep)
    rate=$from
    table "$load_header" "$load_row"
    while :; do
        name="$out/sweep-$kind-$rate-$connections"
        run_once "$rate" "$name"
        jq -r "$load_row; row(\"$rate/s\")" "$name.json"
        behind=$(jq '.throughput.delivered_messages_per_s < 0.98 * .offered.rate_per_s
                     or .throughput.undelivered_at_end > 0 or .throughput.skipped_sends > 0' "$name.json")
        [ "$behind" = true ] && break
        rate=$((rate + step))
    done
    ;;
idle)
    registered=$(mktemp -d)
    accounts="$out/idle-$connections-accounts.json"
    start_server "$registered"
    "$bin" load --url "http://127.0.0.1:$port" --scenario register --connections "$connections" \
        --accounts "$accounts" "${load_args[@]}" >"$out/idle-$connections-register.txt" 2>&1 \
        || { stop_server; tail -5 "$out/idle-$connections-register.txt" >&2; exit 1; }
    stop_server
    reports=()
    for run in $(seq 1 "$runs"); do
        name="$out/idle-$connections-$sources-run$run"
        data=$(mktemp -d)
        cp -a "$registered/." "$data/"
        start_server "$data"
        "$bin" load --url "http://127.0.0.1:$port" --scenario idle --connections "$connections" \
            --accounts "$accounts" --source-addresses "$sources" --duration "$duration" \
            --json "$name.json" "${load_args[@]}" >"$name.txt" 2>&1 || true
        stop_server
        cp "$data/server.log" "$name.server.log"
        rm -rf "$data"
        [ -s "$name.json" ] || { echo "no report for $name; see $name.txt" >&2; exit 1; }
        reports+=("$name.json")
    done
    rm -rf "$registered"
    table "$idle_header" "$idle_row" "${reports[@]}"
    ;;
rebuild)
    if [ "$mode" = distributed ]; then
        cassandra=$(cat "$RUN_ROOT/cassandra/cassandra.pid" 2>/dev/null) && kill -0 "$cassandra" 2>/dev/null ||
            { echo "Cassandra is not running: start it with ops/engines/start.sh cassandra" >&2; exit 1; }
    fi
    data=$(mktemp -d)
    start_server "$data"
    "$bin" load --url "http://127.0.0.1:$port" --connections "$connections" --rate "$rate" \
        --duration "$fill" "${load_args[@]}" >"$out/rebuild-fill.txt" 2>&1 || true
    stop_server
    # CPU ticks (`/proc/PID[/task/TID]/stat`), and those ticks per event replayed (`events`), in µs.
    ticks() { awk '{ print $14 + $15 }' "$1/stat" 2>/dev/null; }
    per_event() {
        if [ -n "$1" ] && [ "${events:-0}" -gt 0 ]; then
            awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$events" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
        else
            printf '—'
        fi
    }
    # replay LABEL: one `switchboard rebuild` of the log into a fresh store, reported in
    # $out/rebuild-MODE-LABEL.txt, leaving the events replayed in $events and the CPU ticks of the
    # threads (embedded) or of Cassandra (distributed) it took in $fold_ticks, $commit_ticks and
    # $cassandra_ticks.
    replay() {
        local into="$data/rebuilt-$1" cassandra_before=
        if [ "$mode" = distributed ]; then
            into="scylla://$CQL_USER:$CQL_PASSWORD@127.0.0.1:${CQL_PORT}/bench_rebuild_$(date +%s)_$1"
            # The replay before is still being compacted for a while: wait (a minute at most)
            # until Cassandra has used under a tenth of a core for two seconds.
            for _ in $(seq 1 30); do
                cassandra_before=$(ticks "/proc/$cassandra")
                sleep 2
                [ $(($(ticks "/proc/$cassandra") - cassandra_before)) -lt "$(($(getconf CLK_TCK) / 5))" ] && break
            done
            cassandra_before=$(ticks "/proc/$cassandra")
        fi
        report="$out/rebuild-$mode-$1.txt"
        "$bin" rebuild --data-dir "$data" --into "$into" >"$report" 2>/dev/null &
        rebuilding=$!
        # The embedded store folds batches on its `store-fold` thread and writes them on its
        # `store-commit` thread, and the busier of the two bounds the replay: their CPU time,
        # sampled until the process exits, says how close each is to a core.
        fold_ticks= commit_ticks= cassandra_ticks=
        while kill -0 "$rebuilding" 2>/dev/null; do
            for task in /proc/"$rebuilding"/task/*; do
                thread_ticks=$(ticks "$task") || continue
                case "$(cat "$task/comm" 2>/dev/null)" in
                    store-fold) fold_ticks=$thread_ticks ;;
                    store-commit) commit_ticks=$thread_ticks ;;
                esac
            done
            sleep 0.1
        done
        wait "$rebuilding"
        if [ -n "$cassandra_before" ]; then
            cassandra_ticks=$(($(ticks "/proc/$cassandra") - cassandra_before))
        fi
        # "rebuilt the read models from N events in S s (R events/s), to the end of the log"
        events=$(sed -nE 's/^rebuilt the read models from ([0-9]+) events.*/\1/p' "$report")
    }
    # "| N | EVENTS | SECONDS | EVENTS/S |" from the report of the last replay
    row() {
        sed -nE "s/^rebuilt the read models from ([0-9]+) events in ([0-9.]+) s \(([0-9]+) events\/s\).*/| $1 | \1 | \2 | \3 |/p" "$report"
    }
    if [ "$mode" = distributed ]; then
        # Cassandra's JIT compiles for the first replays: a freshly started node spent 7–15 µs
        # per event in its compiler threads over the first three, and ran the first at half the
        # speed of the later ones (README, "Where Cassandra's time goes in a replay").
        for warmup in $(seq 1 "${BENCH_REBUILD_WARMUPS:-2}"); do
            replay "warmup$warmup"
            row "warm-up $warmup" >&2
        done
        printf '%s\n' "| run | events | seconds | events/s | Cassandra µs/event |" "|---|---|---|---|---|"
    else
        printf '%s\n' "| run | events | seconds | events/s | fold thread µs/event | commit thread µs/event |" "|---|---|---|---|---|---|"
    fi
    for run in $(seq 1 "$runs"); do
        replay "run$run"
        if [ "$mode" = distributed ]; then
            echo "$(row "$run") $(per_event "$cassandra_ticks") |"
        else
            echo "$(row "$run") $(per_event "$fold_ticks") | $(per_event "$commit_ticks") |"
        fi
    done
    rm -rf "$data"
    ;;
esac
