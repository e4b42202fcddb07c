#!/usr/bin/env bash
# Start the real engines on loopback and wait until each really answers.
#
# Usage: ops/engines/start.sh [kafka|cassandra|redis|redis-cluster|all]   (default: all)
#
#   kafka      Kafka KRaft broker+controller, 127.0.0.1:${SWITCHBOARD_KAFKA_PORT:-19092} (controller 19093),
#              SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:${SWITCHBOARD_KAFKA_SASL_PORT:-19094}
#   cassandra  Cassandra CassandraDaemon, CQL on 127.0.0.1:${SWITCHBOARD_CQL_PORT:-19042}, password
#              authentication, TLS optional on the same port
#   redis      redis-server on 127.0.0.1:${SWITCHBOARD_REDIS_PORT:-16379}
#   redis-cluster  a Redis Cluster of three primaries, 127.0.0.1:${SWITCHBOARD_REDIS_CLUSTER_PORT:-16380}
#              and the next two ports (ops/engines/redis-cluster.sh)
#
# Runs ops/engines/fetch.sh first (a no-op once the cache is filled). Each engine lives in
# ${SWITCHBOARD_ENGINES_RUN:-/tmp/switchboard-engines}/<engine>: config, data, <engine>.pid and logs;
# Kafka and Cassandra also tls/, with a throw-away CA (tls/ca.pem, for clients) and their
# certificate. Credentials: see common.sh.
# An engine already answering on its port is left alone. Data kept by `KEEP=1 stop.sh` is reused.
# Exits non-zero, with the last 50 lines of the engine's log, if one does not answer in time.
# Timeouts (seconds): SWITCHBOARD_KAFKA_TIMEOUT (120), SWITCHBOARD_CASSANDRA_TIMEOUT (240),
# SWITCHBOARD_REDIS_TIMEOUT (30). Heaps: SWITCHBOARD_KAFKA_HEAP (512m), SWITCHBOARD_CASSANDRA_HEAP (1g).
# Extra JVM flags (space-separated): SWITCHBOARD_KAFKA_JVM_OPTS, SWITCHBOARD_CASSANDRA_JVM_OPTS.
# Cassandra runs under SCHED_IDLE (SWITCHBOARD_CASSANDRA_SCHED=idle, the default) or at the
# default priority (normal); see ops/engines/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_HEAP="${SWITCHBOARD_KAFKA_HEAP:-512m}"
CASSANDRA_HEAP="${SWITCHBOARD_CASSANDRA_HEAP:-1g}"
CASSANDRA_SCHED="${SWITCHBOARD_CASSANDRA_SCHED:-idle}"

port_in_use() { # port
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

# launch NAME CMD...: run CMD in its own session in the background, in the engine's run
# directory, stdout/stderr to NAME.out, and record its pid in NAME.pid (written by the process
# itself, before exec).
launch() {
  local name="$1" dir="$RUN_ROOT/$1"
  shift
  rm -f "$dir/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  (cd "$dir" && exec setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' launch "$dir/$name.pid" "$@" \
    </dev/null >"$dir/$name.out" 2>&1) &
  for _ in $(seq 50); do
    [[ -s "$dir/$name.pid" ]] && return
    sleep 0.1
  done
  die "$name did not start (no pid file)"
}

engine_log() { # the engine's own log file
  case "$1" in
    kafka) printf '%s\n' "$RUN_ROOT/kafka/logs/server.log" ;;
    cassandra) printf '%s\n' "$RUN_ROOT/cassandra/logs/system.log" ;;
    redis) printf '%s\n' "$RUN_ROOT/redis/redis.log" ;;
    redis-cluster) printf '%s\n' "$RUN_ROOT/redis-cluster/$REDIS_CLUSTER_PORT/redis.log" ;;
  esac
}

show_failure() {
  local e="$1" f
  for f in "$(engine_log "$e")" "$RUN_ROOT/$e/$e.out"; do
    if [[ -s "$f" ]]; then
      log "last 50 lines of $f:"
      tail -n 50 "$f" >&2
    fi
  done
}

start_kafka() {
  local dir="$RUN_ROOT/kafka" java cid
  [[ -f "$KAFKA_HOME/.complete" ]] || die "kafka is not fetched ($KAFKA_HOME)"
  java="$(find_java)"
  mkdir -p "$dir/data" "$dir/logs"
  make_tls "$dir/tls"
  # Two client listeners: PLAINTEXT for most tests, and SASL_SSL with SCRAM-SHA-512, as a
  # production cluster would be reached.
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/server.p12
ssl.keystore.password=$TLS_STORE_PASSWORD
ssl.key.password=$TLS_STORE_PASSWORD
log.dirs=$dir/data
num.partitions=8
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=${SWITCHBOARD_KAFKA_AUTO_CREATE:-false}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=67108864
PROPS
  cat >"$dir/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
  local jvm=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -XX:MaxDirectMemorySize=256m -XX:MetaspaceSize=96m -Djava.awt.headless=true
    -Djava.net.preferIPv4Stack=true
    -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="file:$dir/log4j2.properties"
    -cp "$KAFKA_HOME/lib/*")
  # The SCRAM user is part of the cluster's first metadata, so kept data keeps it too.
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    cid="$(kafka_cluster_id)"
    log "kafka: formatting storage (cluster id $cid)"
    kafka_format_storage "$java" "$dir/server.properties" "$cid" \
      --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]" >"$dir/format.out" 2>&1 ||
      { cat "$dir/format.out" >&2; die "kafka storage format failed"; }
  fi
  local extra=()
  read -r -a extra <<<"${SWITCHBOARD_KAFKA_JVM_OPTS:-}"
  MALLOC_ARENA_MAX=4 launch kafka "$java" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" "${jvm[@]}" ${extra[@]+"${extra[@]}"} kafka.Kafka "$dir/server.properties"
}

start_cassandra() {
  local dir="$RUN_ROOT/cassandra" java jamm
  [[ -f "$CASSANDRA_HOME/.complete" ]] || die "cassandra is not fetched ($CASSANDRA_HOME)"
  java="$(find_java)"
  jamm="$(find "$CASSANDRA_HOME/lib" -name 'jamm-*.jar' | head -n1)"
  [[ -n "$jamm" ]] || die "no jamm jar in $CASSANDRA_HOME/lib"
  mkdir -p "$dir"/data/{data,commitlog,saved_caches,hints,cdc_raw} "$dir/logs" "$dir/triggers"
  make_tls "$dir/tls"
  cat >"$dir/cassandra.yaml" <<YAML
cluster_name: switchboard
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
auto_bootstrap: false
endpoint_snitch: SimpleSnitch
dynamic_snitch: false
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
start_native_transport: true
native_transport_port: $CQL_PORT
# Clients log in (as the default superuser, cassandra/cassandra), as in production.
authenticator: PasswordAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer
# TLS is optional, so that plain and TLS clients share the one CQL port.
client_encryption_options:
  enabled: true
  optional: true
  keystore: $dir/tls/server.p12
  keystore_password: $TLS_STORE_PASSWORD
  store_type: PKCS12
  require_client_auth: false
data_file_directories:
  - $dir/data/data
commitlog_directory: $dir/data/commitlog
saved_caches_directory: $dir/data/saved_caches
hints_directory: $dir/data/hints
cdc_raw_directory: $dir/data/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
commitlog_total_space: 256MiB
disk_optimization_strategy: ssd
# A quarter of the heap, Cassandra's own default. At 64 MiB a benchmark at 5,000 messages/s
# flushed a memtable about every second and kept a compaction running all along (4,401 flushes
# logged in one run; 240 at this size).
memtable_heap_space: 256MiB
memtable_offheap_space: 64MiB
# Tests create a keyspace of some twenty tables per server; the default slab allocator gives
# every memtable that is written a 1 MiB region of its own, which ran the heap out after a
# hundred keyspaces. Unslabbed buffers cost what the data costs.
memtable_allocation_type: unslabbed_heap_buffers
# Tests drop their keyspaces; a snapshot of each would only fill the disk.
auto_snapshot: false
key_cache_size: 8MiB
row_cache_size: 0MiB
counter_cache_size: 4MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 8
concurrent_compactors: 1
hinted_handoff_enabled: false
cdc_enabled: false
storage_compatibility_mode: CASSANDRA_4
YAML
  cat >"$dir/logback.xml" <<'XML'
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML
  local jvm=(
    -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k -XX:MaxDirectMemorySize=256m
    # G1 settings of conf/jvm17-server.options (region size left to the JVM: the heap is small)
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
    # from conf/jvm-server.options
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$dir/logs" -XX:+CrashOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true -Dio.netty.transport.noNative=false
    # JPMS: conf/jvm17-server.options
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    -javaagent:"$jamm"
    # a single throw-away node: skip the waits meant for real clusters
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=0
    -Dcassandra.shutdown_announce_in_ms=0
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT"
    -Dcassandra-foreground=yes
    -Dcassandra.config="file://$dir/cassandra.yaml"
    -Dcassandra.storagedir="$dir/data"
    -Dcassandra.logdir="$dir/logs"
    -Dcassandra.triggers_dir="$dir/triggers"
    -Dlogback.configurationFile="file://$dir/logback.xml"
    -cp "$CASSANDRA_HOME/lib/*"
  )
  local extra=()
  read -r -a extra <<<"${SWITCHBOARD_CASSANDRA_JVM_OPTS:-}"
  local sched=()
  case "$CASSANDRA_SCHED" in
    # Cassandra shares this machine's cores with Kafka, Redis and the nodes, and it holds only
    # read models: nothing on the way from a send to its delivery waits on its writes. It gets
    # the cores the others leave idle.
    idle) sched=(chrt --idle 0) ;;
    normal) ;;
    *) die "SWITCHBOARD_CASSANDRA_SCHED is '$CASSANDRA_SCHED'; use idle or normal" ;;
  esac
  # As cassandra-env.sh does: few malloc arenas keep the native footprint small.
  MALLOC_ARENA_MAX=4 launch cassandra ${sched[@]+"${sched[@]}"} "$java" "${jvm[@]}" ${extra[@]+"${extra[@]}"} org.apache.cassandra.service.CassandraDaemon
}

start_redis() {
  local dir="$RUN_ROOT/redis"
  command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (run ops/engines/fetch.sh redis)"
  mkdir -p "$dir"
  # Users' feeds live here when the nodes share them through Redis: an append-only file, synced
  # every second, lets them outlast a restart of Redis, as a production Redis holding them would.
  launch redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --daemonize no --dir "$dir" --logfile "$dir/redis.log"
}

start_redis-cluster() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (run ops/engines/fetch.sh redis)"
  mkdir -p "$RUN_ROOT/redis-cluster"
  launch redis-cluster "$ENGINES_DIR/redis-cluster.sh" "$RUN_ROOT/redis-cluster" "${REDIS_CLUSTER_PORTS[@]}"
}

engine_timeout() {
  case "$1" in
    kafka) printf '%s\n' "${SWITCHBOARD_KAFKA_TIMEOUT:-120}" ;;
    cassandra) printf '%s\n' "${SWITCHBOARD_CASSANDRA_TIMEOUT:-240}" ;;
    redis | redis-cluster) printf '%s\n' "${SWITCHBOARD_REDIS_TIMEOUT:-30}" ;;
  esac
}

# ready_or_failed ENGINE STARTED_AT: 0 = answers, 1 = still starting, 2 = failed (log shown,
# the engine stopped).
ready_or_failed() {
  local e="$1" t0="$2" limit pid
  limit="$(engine_timeout "$e")"
  if engine_answers "$e"; then
    log "$e answers on 127.0.0.1:$(engine_port "$e") (pid $(engine_pid "$e" || echo '?'), $((SECONDS - t0))s)"
    return 0
  fi
  if ! pid="$(engine_pid "$e")"; then
    log "$e exited before answering"
    show_failure "$e"
    return 2
  fi
  if ((SECONDS - t0 >= limit)); then
    log "$e (pid $pid) did not answer on port $(engine_port "$e") within ${limit}s"
    show_failure "$e"
    KEEP=1 "$ENGINES_DIR/stop.sh" "$e" >/dev/null 2>&1 || true
    return 2
  fi
  return 1
}

main() {
  select_engines "${1:-all}"
  local e pending=() failed=0
  declare -A started
  for e in "${ENGINES[@]}"; do
    "$ENGINES_DIR/fetch.sh" "$e"
  done
  mkdir -p "$RUN_ROOT"
  for e in "${ENGINES[@]}"; do
    if engine_answers "$e"; then
      log "$e already answers on 127.0.0.1:$(engine_port "$e"); leaving it"
      continue
    fi
    started[$e]="$SECONDS"
    if engine_pid "$e" >/dev/null; then
      log "$e is already starting (pid $(engine_pid "$e")); waiting for it"
    elif port_in_use "$(engine_port "$e")"; then
      die "port $(engine_port "$e") is taken by another process that does not answer as $e"
    else
      log "starting $e"
      "start_$e"
    fi
    pending+=("$e")
  done
  # Poll the engines in turn so each one's start time is its own.
  local rc still
  while ((${#pending[@]} > 0)); do
    still=()
    for e in "${pending[@]}"; do
      rc=0
      ready_or_failed "$e" "${started[$e]}" || rc=$?
      case "$rc" in
        0) ;;
        1) still+=("$e") ;;
        *) failed=1 ;;
      esac
    done
    pending=(${still[@]+"${still[@]}"})
    ((${#pending[@]} == 0)) || sleep 0.5
  done
  return "$failed"
}

main "$@"
