#!/usr/bin/env bash
# Runs a Redis Cluster of three primaries on loopback for ops/engines/start.sh: one redis-server
# per port, each in DIR/PORT, with the cluster formed on the first start (kept data directories
# form it again by themselves). Stops every node on SIGTERM, and stops them all when one dies.
#
# Usage: ops/engines/redis-cluster.sh DIR PORT PORT PORT
set -euo pipefail

dir="$1"
shift
ports=("$@")
pids=()

stop() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait
  exit "${1:-0}"
}
trap stop TERM INT

for port in "${ports[@]}"; do
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 5000 --save '' --appendonly no \
    --daemonize no --dir "$dir/$port" --logfile "$dir/$port/redis.log" &
  pids+=("$!")
done
for port in "${ports[@]}"; do
  until [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]]; do
    sleep 0.1
  done
done
if redis-cli -p "${ports[0]}" cluster info | grep -q '^cluster_slots_assigned:0'; then
  nodes=()
  for port in "${ports[@]}"; do
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.out" 2>&1
fi
wait -n
echo "a node of the cluster exited; stopping the others" >&2
stop 1
