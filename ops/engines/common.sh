# shellcheck shell=bash disable=SC2034
# Shared settings for the engine scripts in this folder. Sourced, not run.
#
# Every value can be overridden from the environment:
#   SWITCHBOARD_CACHE          cache root (default ~/.cache/switchboard); jars go to $SWITCHBOARD_CACHE/engines
#   SWITCHBOARD_ENGINES_RUN    run root, one subdirectory per engine (default /tmp/switchboard-engines)
#   SWITCHBOARD_KAFKA_VERSION  org.apache.kafka:kafka_2.13 version (default below)
#   SWITCHBOARD_CASSANDRA_VERSION  org.apache.cassandra:cassandra-all version (default below)
#   SWITCHBOARD_KAFKA_PORT / SWITCHBOARD_KAFKA_CONTROLLER_PORT / SWITCHBOARD_KAFKA_SASL_PORT
#   SWITCHBOARD_CQL_PORT / SWITCHBOARD_CASSANDRA_STORAGE_PORT / SWITCHBOARD_CASSANDRA_JMX_PORT
#   SWITCHBOARD_REDIS_PORT
#   SWITCHBOARD_REDIS_CLUSTER_PORT (the cluster's three nodes take it and the next two ports)

KAFKA_VERSION="${SWITCHBOARD_KAFKA_VERSION:-4.4.0}"
CASSANDRA_VERSION="${SWITCHBOARD_CASSANDRA_VERSION:-5.0.9}"
LOG4J2_VERSION="${SWITCHBOARD_LOG4J2_VERSION:-2.25.3}"

CACHE_ROOT="${SWITCHBOARD_CACHE:-${HOME:-/root}/.cache/switchboard}/engines"
RUN_ROOT="${SWITCHBOARD_ENGINES_RUN:-/tmp/switchboard-engines}"

KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
CASSANDRA_HOME="$CACHE_ROOT/cassandra-$CASSANDRA_VERSION"

KAFKA_PORT="${SWITCHBOARD_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SWITCHBOARD_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_SASL_PORT="${SWITCHBOARD_KAFKA_SASL_PORT:-19094}"
CQL_PORT="${SWITCHBOARD_CQL_PORT:-19042}"
CASSANDRA_STORAGE_PORT="${SWITCHBOARD_CASSANDRA_STORAGE_PORT:-17000}"
CASSANDRA_JMX_PORT="${SWITCHBOARD_CASSANDRA_JMX_PORT:-17199}"
REDIS_PORT="${SWITCHBOARD_REDIS_PORT:-16379}"
REDIS_CLUSTER_PORT="${SWITCHBOARD_REDIS_CLUSTER_PORT:-16380}"
REDIS_CLUSTER_PORTS=("$REDIS_CLUSTER_PORT" "$((REDIS_CLUSTER_PORT + 1))" "$((REDIS_CLUSTER_PORT + 2))")

# The throw-away credentials of the engines (they listen on loopback only). Kafka's SASL_SSL
# listener knows one SCRAM-SHA-512 user, whose password holds characters a URL must
# percent-encode, so that the tests show the URLs are decoded; Cassandra keeps its default
# superuser.
KAFKA_SASL_USER=switchboard
KAFKA_SASL_PASSWORD='sb:kafka@secret'
CQL_USER=cassandra
CQL_PASSWORD=cassandra
# Protects the engines' PKCS12 keystores, which hold a throw-away key.
TLS_STORE_PASSWORD=switchboard

ENGINES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL_ENGINES=(kafka cassandra redis redis-cluster)

# url_encode TEXT: TEXT percent-encoded, to go into a URL's userinfo.
url_encode() {
  python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

log() { printf '[engines] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Expand the engine argument ("all" or one name) into ENGINES=(...).
select_engines() {
  local which="${1:-all}"
  case "$which" in
    all) ENGINES=("${ALL_ENGINES[@]}") ;;
    kafka | cassandra | redis | redis-cluster) ENGINES=("$which") ;;
    *) die "unknown engine '$which' (expected kafka, cassandra, redis, redis-cluster or all)" ;;
  esac
}

# pid recorded for an engine, if that process is still alive and is really that engine:
# engines run with their run directory as working directory, so a reused pid is never signalled.
engine_pid() {
  local dir="$RUN_ROOT/$1" pid
  [[ -f "$dir/$1.pid" ]] || return 1
  pid="$(cat "$dir/$1.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(cd "$dir" && pwd -P)" ]] || return 1
  printf '%s\n' "$pid"
}

# A Java 17 runtime: Cassandra 5.0 runs on 11 or 17 only, Kafka 4.x needs 17+.
find_java() {
  local c major
  for c in "${SWITCHBOARD_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
    /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/*17*/bin/java; do
    [[ -n "$c" && -x "$c" ]] || continue
    major="$("$c" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    if [[ "$major" == "17" ]]; then
      printf '%s\n' "$c"
      return
    fi
  done
  die "no Java 17 runtime found (set SWITCHBOARD_JAVA)"
}

# A random KRaft cluster id: 16 random bytes in URL-safe base64, as Kafka draws them.
kafka_cluster_id() {
  python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))'
}

# kafka_format_storage JAVA PROPERTIES CLUSTER_ID: formats the KRaft storage that PROPERTIES
# names. The id goes as --cluster-id=ID, in one argument: about one id in 64 starts with '-',
# which as an argument of its own the tool would take for an option.
# Further arguments go to the tool as they are (start.sh adds the SCRAM user with them).
kafka_format_storage() {
  local java="$1" properties="$2" cid="$3"
  shift 3
  "$java" -Xmx256m -Djava.awt.headless=true -cp "$KAFKA_HOME/lib/*" kafka.tools.StorageTool format \
    --cluster-id="$cid" --config="$properties" "$@"
}

# make_tls DIR: a throw-away CA and a server certificate it signed, for 127.0.0.1 and localhost
# (clients check the name they connected to: the CQL driver the IP address, librdkafka the host),
# into DIR: ca.pem (what clients trust) and server.p12 (the server's key and chain, PKCS12, under
# $TLS_STORE_PASSWORD, which Kafka and Cassandra both read). An existing pair is kept, so that an
# engine restarted on kept data keeps its CA.
make_tls() {
  local dir="$1"
  [[ -s "$dir/ca.pem" && -s "$dir/server.p12" ]] && return
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=switchboard test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
      "basicConstraints=CA:FALSE" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile server.ext -out server.pem
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name server \
      -passout "pass:$TLS_STORE_PASSWORD" -out server.p12
  ) >"$dir/make-tls.out" 2>&1 || { cat "$dir/make-tls.out" >&2; die "making the TLS certificates in $dir failed"; }
}

# Readiness probes: exit 0 only when the engine really answers.
kafka_answers() {
  python3 "$ENGINES_DIR/probe.py" kafka 127.0.0.1 "$KAFKA_PORT" >/dev/null 2>&1
}
cassandra_answers() {
  python3 "$ENGINES_DIR/probe.py" cql 127.0.0.1 "$CQL_PORT" "$CQL_USER" "$CQL_PASSWORD" >/dev/null 2>&1
}
redis_answers() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}
# Every node of the cluster answers, and says every slot is served.
redis-cluster_answers() {
  command -v redis-cli >/dev/null 2>&1 || return 1
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    timeout 3 redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}
engine_answers() { "${1}_answers"; }

engine_port() {
  case "$1" in
    kafka) printf '%s\n' "$KAFKA_PORT" ;;
    cassandra) printf '%s\n' "$CQL_PORT" ;;
    redis) printf '%s\n' "$REDIS_PORT" ;;
    redis-cluster) printf '%s\n' "$REDIS_CLUSTER_PORT" ;;
  esac
}
