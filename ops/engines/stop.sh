#!/usr/bin/env bash
# Stop engines started by ops/engines/start.sh.
#
# Usage: ops/engines/stop.sh [kafka|cassandra|redis|redis-cluster|all]   (default: all)
#        KEEP=1 ops/engines/stop.sh ...   keeps the run directories (data and logs)
#
# Sends SIGTERM to all of them at once, waits for a clean shutdown (kafka 30 s, cassandra 45 s,
# redis 10 s, or SWITCHBOARD_STOP_GRACE seconds for all), then SIGKILL. Removes
# ${SWITCHBOARD_ENGINES_RUN:-/tmp/switchboard-engines}/<engine> unless KEEP=1.
# Only processes recorded in the pid files are signalled.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

grace() {
  if [[ -n "${SWITCHBOARD_STOP_GRACE:-}" ]]; then
    printf '%s\n' "$SWITCHBOARD_STOP_GRACE"
    return
  fi
  case "$1" in
    kafka) echo 30 ;;
    cassandra) echo 45 ;;
    redis | redis-cluster) echo 10 ;;
  esac
}

# signal ENGINE: send SIGTERM to an engine started from here; prints its pid.
signal_engine() {
  local e="$1" pid
  if pid="$(engine_pid "$e")"; then
    log "stopping $e (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    printf '%s\n' "$pid"
  elif engine_answers "$e"; then
    log "$e answers on port $(engine_port "$e") but was not started from $RUN_ROOT; leaving it"
    printf 'foreign\n'
  else
    log "$e is not running"
  fi
}

# reap ENGINE PID T0: wait for the exit, SIGKILL after the grace period, clean up.
reap() {
  local e="$1" pid="$2" t0="$3" limit
  limit="$(grace "$e")"
  [[ "$pid" != "foreign" ]] || return 0
  if [[ -n "$pid" ]]; then
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS - t0 >= limit)); then
        log "$e did not exit within ${limit}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        break
      fi
      sleep 0.2
    done
    log "$e stopped ($((SECONDS - t0))s)"
  fi
  rm -f "$RUN_ROOT/$e/$e.pid"
  if [[ "${KEEP:-0}" != "1" && -d "$RUN_ROOT/$e" ]]; then
    rm -rf "${RUN_ROOT:?}/$e"
  fi
}

main() {
  select_engines "${1:-all}"
  local e t0="$SECONDS"
  declare -A pids
  for e in "${ENGINES[@]}"; do
    pids[$e]="$(signal_engine "$e")"
  done
  for e in "${ENGINES[@]}"; do
    reap "$e" "${pids[$e]}" "$t0"
  done
  rmdir "$RUN_ROOT" 2>/dev/null || true
}

main "$@"
