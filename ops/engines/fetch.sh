#!/usr/bin/env bash
# Fetch the real engines into a cache outside the repository.
#
# Usage: ops/engines/fetch.sh [kafka|cassandra|redis|all]   (default: all)
#
#   kafka      org.apache.kafka:kafka_2.13 + runtime deps + log4j2 backend (Maven Central);
#              kafka_2.13 holds kafka.Kafka and kafka.tools.StorageTool. Kafka pins slf4j-api
#              1.7.x, so the binding is log4j-slf4j-impl (not the slf4j2 one), as Kafka ships it.
#   cassandra  org.apache.cassandra:cassandra-all + runtime deps (Maven Central)
#   redis      Debian's redis-server/redis-tools, installed only when redis-server is missing
#
# Jars land in ${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/engines/<engine>-<version>/lib.
# A finished fetch leaves a .complete marker; later runs see it and do nothing (no network).
# Versions and paths are in common.sh; all can be overridden from the environment.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# mvn_fetch HOME DEPENDENCIES_XML: resolve the dependencies (runtime scope, transitive)
# and copy all jars into HOME/lib.
mvn_fetch() {
  local home="$1" deps="$2" work
  command -v mvn >/dev/null 2>&1 || die "mvn is required (apt-get install -y maven)"
  work="$(mktemp -d)"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>switchboard.engines</groupId>
  <artifactId>fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
$deps
  </dependencies>
</project>
POM
  rm -rf "$home.partial"
  mkdir -p "$home.partial/lib"
  if ! (cd "$work" && mvn -B -q dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$home.partial/lib" >"$work/mvn.log" 2>&1); then
    sed -e 's/\x1b\[[0-9;]*m//g' "$work/mvn.log" | tail -n 40 >&2
    rm -rf "$work" "$home.partial"
    die "mvn could not resolve the dependencies for $(basename "$home")"
  fi
  rm -rf "$work"
  rm -rf "$home"
  mv "$home.partial" "$home"
  date -u +%FT%TZ >"$home/.complete"
}

dep() { # group artifact version
  printf '    <dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version></dependency>\n' "$1" "$2" "$3"
}

fetch_kafka() {
  if [[ -f "$KAFKA_HOME/.complete" ]]; then
    log "kafka $KAFKA_VERSION already in $KAFKA_HOME"
    return
  fi
  log "fetching kafka $KAFKA_VERSION into $KAFKA_HOME"
  mvn_fetch "$KAFKA_HOME" "$(
    dep org.apache.kafka kafka_2.13 "$KAFKA_VERSION"
    dep org.apache.logging.log4j log4j-core "$LOG4J2_VERSION"
    dep org.apache.logging.log4j log4j-slf4j-impl "$LOG4J2_VERSION"
  )"
  log "kafka: $(find "$KAFKA_HOME/lib" -name '*.jar' | wc -l) jars"
}

fetch_cassandra() {
  if [[ -f "$CASSANDRA_HOME/.complete" ]]; then
    log "cassandra $CASSANDRA_VERSION already in $CASSANDRA_HOME"
    return
  fi
  log "fetching cassandra $CASSANDRA_VERSION into $CASSANDRA_HOME"
  mvn_fetch "$CASSANDRA_HOME" "$(dep org.apache.cassandra cassandra-all "$CASSANDRA_VERSION")"
  ls "$CASSANDRA_HOME"/lib/jamm-*.jar >/dev/null 2>&1 || die "no jamm jar among cassandra's dependencies"
  log "cassandra: $(find "$CASSANDRA_HOME/lib" -name '*.jar' | wc -l) jars"
}

fetch_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    log "redis already installed: $(redis-server --version | head -n1)"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available"
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  log "installing redis-server with apt-get"
  # Fresh machines have no package lists yet.
  if ! apt-cache policy redis-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${sudo[@]}" apt-get update -q
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q redis-server redis-tools
  # Debian's package starts a system redis on 6379 where an init system runs; ours is separate.
}

# The cluster runs the same redis-server.
fetch_redis-cluster() { fetch_redis; }

main() {
  select_engines "${1:-all}"
  local e
  for e in "${ENGINES[@]}"; do
    "fetch_$e"
  done
}

main "$@"
