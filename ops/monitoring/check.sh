#!/usr/bin/env bash
# Checks ops/monitoring against a live node: promtool validates the alert rules, a node runs on
# embedded defaults and serves a little of every kind of traffic the dashboard shows, a real
# Prometheus scrapes it every second with the rules loaded, and check.py asks it every dashboard
# query and alert expression.
#
#   ops/monitoring/check.sh [SWITCHBOARD_BINARY]   (default: target/debug/switchboard)
#
# Needs Debian's prometheus package (promtool too) and python3-yaml; ops/deps.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-target/debug/switchboard}
monitoring=$PWD/ops/monitoring
work=$(mktemp -d)
pids=()
cleanup() {
    [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

promtool check rules "$monitoring/alerts.yml"

node_port=$(free_port)
node=http://127.0.0.1:$node_port
"$binary" serve --data-dir "$work/node" --listen "127.0.0.1:$node_port" >"$work/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "$node/readyz" >/dev/null && break
    sleep 0.2
done
curl -fs "$node/readyz" >/dev/null || { cat "$work/node.log"; echo "the node did not become ready" >&2; exit 1; }

post() { # PATH BODY [TOKEN]
    curl -s -X POST "$node$1" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2"
}
token() { python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'; }
ada=$(post /v1/auth/register '{"handle":"ada","display_name":"Ada","password":"password-ada"}' | token)
bob_id=$(post /v1/auth/register '{"handle":"bob","display_name":"Bob","password":"password-bob"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["user"]["id"])')
conversation=$(post /v1/conversations "{\"kind\":\"direct\",\"user_id\":\"$bob_id\"}" "$ada" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["conversation"]["id"])')
post "/v1/conversations/$conversation/messages" '{"body":"hello","client_msg_id":"m1"}' "$ada" >/dev/null
# An error, and logins past the auth rate limit.
post /v1/conversations '{"kind":"direct"}' "$ada" >/dev/null
for _ in $(seq 7); do
    post /v1/auth/login '{"handle":"ada","password":"wrong-password"}' >/dev/null
done

prometheus_port=$(free_port)
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $monitoring/alerts.yml
scrape_configs:
  - job_name: switchboard
    static_configs:
      - targets: ["127.0.0.1:$node_port"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
python3 "$monitoring/check.py" "http://127.0.0.1:$prometheus_port" \
    "$monitoring/grafana/switchboard.json" "$monitoring/alerts.yml" ||
    { tail -n 20 "$work/prometheus.log"; exit 1; }
