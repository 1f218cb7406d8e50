#!/usr/bin/env bash
# Apache Kafka for the tests and benches: one KRaft node (broker and
# controller in one JVM) on loopback ports, from the jars on Maven Central.
#
# Usage:
#   scripts/kafka.sh fetch
#       Resolves org.apache.kafka:kafka_2.13 and its runtime dependencies with
#       mvn (once; cached outside the clone) and prints the cache directory.
#   scripts/kafka.sh run PORT DIR [CONTROLLER_PORT [ADVERTISED_PORT]]
#       Formats DIR as a single-node KRaft log directory if it is new, writes
#       DIR/server.properties and replaces itself with the broker (exec), in
#       the foreground: its pid is the JVM's, so a SIGKILL kills the broker.
#       Run it again on the same DIR after a kill: the log is kept.
#   scripts/kafka.sh start PORT DIR [CONTROLLER_PORT [ADVERTISED_PORT]]
#       `run` in the background (log in DIR/kafka.log, pid in DIR/kafka.pid);
#       returns once the broker is ready, or fails within
#       DANMAKU_KAFKA_START_TIMEOUT seconds (default 90) with its log's tail.
#   scripts/kafka.sh stop DIR
#       SIGTERM (a clean shutdown), SIGKILL if it is not gone within 30 s.
#
# CONTROLLER_PORT defaults to a free loopback port; ADVERTISED_PORT (the
# address clients are told to use, e.g. a proxy's) to PORT.
# DANMAKU_KAFKA_HOST (default 127.0.0.1): the address the client listener
# binds to and advertises, e.g. a bridge address that processes in network
# namespaces reach (scripts/partitions.sh); the controller stays on loopback.
# Env: DANMAKU_KAFKA_VERSION (default 4.4.0), DANMAKU_KAFKA_CACHE (default
#      ~/.cache/danmaku-kafka), DANMAKU_KAFKA_HEAP (default 512m),
#      DANMAKU_KAFKA_PARTITIONS (auto-created topics' partitions, default 4),
#      JAVA (default: $JAVA_HOME/bin/java, else java on PATH; Java 17 or newer).
set -euo pipefail

version="${DANMAKU_KAFKA_VERSION:-4.4.0}"
cache="${DANMAKU_KAFKA_CACHE:-$HOME/.cache/danmaku-kafka}/$version"
java="${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/java}}"
java="${java:-java}"
# The message KafkaRaftServer logs once it serves clients.
ready_line="Kafka Server started"

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Resolves the broker's jars into $cache/libs (atomically, under a lock, so
# concurrent callers fetch once).
fetch() {
  [ -f "$cache/libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock -w 600 9 || die "waited 10 minutes for another fetch into $cache"
  if [ ! -f "$cache/libs/.complete" ]; then
    echo "kafka.sh: fetching Apache Kafka $version from Maven Central (once)" >&2
    # kafka_2.13 brings the broker, controller, storage tool and clients;
    # log4j-core comes with kafka-server. Added here: SLF4J 2 and its Log4j 2
    # binding (the release ships them in libs/; the pom leaves the binding
    # out), so the broker's log goes through log4j2.properties below.
    cat >"$cache/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>danmaku.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$version</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>2.0.17</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.25.5</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$cache/libs.tmp"
    if ! mvn -B -q -f "$cache/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$cache/libs.tmp" >"$cache/mvn.log" 2>&1; then
      tail -n 30 "$cache/mvn.log" >&2
      die "mvn could not resolve org.apache.kafka:kafka_2.13:$version (log: $cache/mvn.log)"
    fi
    ls "$cache/libs.tmp"/kafka_2.13-"$version".jar >/dev/null 2>&1 \
      || die "mvn ran but kafka_2.13-$version.jar is missing in $cache/libs.tmp"
    touch "$cache/libs.tmp/.complete"
    rm -rf "$cache/libs"
    mv "$cache/libs.tmp" "$cache/libs"
  fi
  flock -u 9
}

# Whether PID runs (a killed broker whose parent is gone can stay a zombie
# for a moment: that counts as gone).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [ "$state" != Z ]
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# configure PORT DIR [CONTROLLER_PORT [ADVERTISED_PORT]]: server.properties
# and log4j2.properties in DIR; formats DIR/data when it is new.
configure() {
  local port="$1" dir="$2" cport="${3:-}" adv="${4:-$1}" host="${DANMAKU_KAFKA_HOST:-127.0.0.1}"
  [ -n "$cport" ] || cport="$(free_port)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  cat >"$dir/server.properties" <<EOF
# Generated by scripts/kafka.sh: a single KRaft node for tests on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$host:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://$host:$adv
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=${DANMAKU_KAFKA_PARTITIONS:-4}
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
# One node: every internal topic has one replica, and few partitions (the
# 50 default partitions of __consumer_offsets slow the first group down).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumers and expect partitions at once.
group.initial.rebalance.delay.ms=0
# After a SIGKILL the restarted node's broker cannot register until the
# controller has expired the dead incarnation's session (9 s by default);
# broker and controller share the JVM here, so short is safe.
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=2000
# Whatever was acknowledged is in the page cache, which a SIGKILL of the
# JVM does not lose; on restart Kafka recovers the unflushed log segments.
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    # base64 of 16 random bytes without '+' and '/' (nor the base64url '-'
    # and '_'): an id starting with '-' reads as an option to the tool.
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' 'AB' | tr -d '=')"
    "$java" -Xmx256m -cp "$cache/libs/*" \
      -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting $dir/data failed"; }
  fi
  echo "$dir"
}

run() {
  [ $# -ge 2 ] || die "usage: kafka.sh run PORT DIR [CONTROLLER_PORT [ADVERTISED_PORT]]"
  fetch
  local dir
  dir="$(configure "$@")"
  local heap="${DANMAKU_KAFKA_HEAP:-512m}"
  exec "$java" -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$cache/libs/*" kafka.Kafka "$dir/server.properties"
}

start() {
  [ $# -ge 2 ] || die "usage: kafka.sh start PORT DIR [CONTROLLER_PORT [ADVERTISED_PORT]]"
  local port="$1" dir="$2"
  fetch
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/kafka.pid" ] && alive "$(cat "$dir/kafka.pid")"; then
    die "a broker already runs on $dir (pid $(cat "$dir/kafka.pid"))"
  fi
  local began=$SECONDS
  shift 2
  nohup bash "${BASH_SOURCE[0]}" run "$port" "$dir" "$@" >"$dir/kafka.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/kafka.pid"
  local limit="${DANMAKU_KAFKA_START_TIMEOUT:-90}"
  while ! grep -q "$ready_line" "$dir/kafka.log" 2>/dev/null; do
    if ! alive "$pid"; then
      tail -n 40 "$dir/kafka.log" >&2
      die "the broker exited before it was ready (log: $dir/kafka.log)"
    fi
    if [ $((SECONDS - began)) -ge "$limit" ]; then
      tail -n 40 "$dir/kafka.log" >&2
      kill -KILL "$pid" 2>/dev/null || true
      die "the broker was not ready on ${DANMAKU_KAFKA_HOST:-127.0.0.1}:$port in $limit s (log: $dir/kafka.log)"
    fi
    sleep 0.2
  done
  echo "kafka.sh: Apache Kafka $version ready on ${DANMAKU_KAFKA_HOST:-127.0.0.1}:$port in $((SECONDS - began)) s (pid $pid)" >&2
}

stop() {
  [ $# -eq 1 ] || die "usage: kafka.sh stop DIR"
  local pidfile="$1/kafka.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 300); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "kafka.sh: broker $pid still up 30 s after SIGTERM; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  fetch) fetch; echo "$cache" ;;
  run) run "$@" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: kafka.sh fetch | run PORT DIR [CPORT [ADV]] | start PORT DIR [CPORT [ADV]] | stop DIR" ;;
esac
