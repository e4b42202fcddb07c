#!/usr/bin/env bash
# Print each engine, its port, whether it answers, and its pid and RSS when started from here.
#
# Usage: ops/engines/status.sh [kafka|cassandra|redis|redis-cluster|all]   (default: all)
# Exit status 0 when every engine asked about answers, 1 otherwise.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

detail() {
  case "$1" in
    kafka) python3 "$ENGINES_DIR/probe.py" kafka 127.0.0.1 "$KAFKA_PORT" 2>/dev/null ;;
    cassandra) python3 "$ENGINES_DIR/probe.py" cql 127.0.0.1 "$CQL_PORT" "$CQL_USER" "$CQL_PASSWORD" 2>/dev/null ;;
    redis) printf 'redis %s\n' "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null |
      sed -n 's/^redis_version:\([^[:space:]]*\).*/\1/p')" ;;
    redis-cluster) printf 'redis cluster on ports %s\n' "${REDIS_CLUSTER_PORTS[*]}" ;;
  esac
}

main() {
  select_engines "${1:-all}"
  local e pid proc all=0
  for e in "${ENGINES[@]}"; do
    proc="not started here"
    if pid="$(engine_pid "$e")"; then
      proc="pid $pid, rss $(($(ps -o rss= -p "$pid") / 1024)) MiB"
    fi
    if engine_answers "$e"; then
      printf '%-10s 127.0.0.1:%-6s up    (%s) %s\n' "$e" "$(engine_port "$e")" "$proc" "$(detail "$e" || true)"
    else
      printf '%-10s 127.0.0.1:%-6s down  (%s)\n' "$e" "$(engine_port "$e")" "$proc"
      all=1
    fi
  done
  return "$all"
}

main "$@"
