#!/usr/bin/env bash
# Formats throw-away Kafka storage with many cluster ids, through the same function start.sh
# uses, and checks that each id is the one recorded. Ids that start with '-' or '_' are among
# them on purpose: random ids start with '-' about once in 64.
#
# Usage: ops/engines/check-cluster-ids.sh [RANDOM_IDS]   (default: 4, besides the fixed ones)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$ENGINES_DIR/fetch.sh" kafka
java="$(find_java)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Random ids with their first characters replaced: still 16 bytes in base64, but shaped like an
# option, a long option, and the other character base64url adds.
ids=()
for prefix in - -- _; do
  cid="$(kafka_cluster_id)"
  ids+=("$prefix${cid:${#prefix}}")
done
for _ in $(seq "${1:-4}"); do
  ids+=("$(kafka_cluster_id)")
done

failed=0
for i in "${!ids[@]}"; do
  cid="${ids[$i]}"
  dir="$work/$i"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
PROPS
  if kafka_format_storage "$java" "$dir/server.properties" "$cid" >"$dir/format.out" 2>&1 &&
    grep -qxF "cluster.id=$cid" "$dir/data/meta.properties"; then
    log "cluster id $cid: formatted"
  else
    log "cluster id $cid: FAILED"
    cat "$dir/format.out" >&2
    failed=1
  fi
done
exit "$failed"
