#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on
# 127.0.0.1, from Maven Central's jars on this machine's JDK.
#   deploy/local/kafka.sh provision|start|stop|status|version
# Idempotent: start on a running broker only re-checks readiness; stop on a stopped one is a no-op.
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_SASL_PORT (9094), KAFKA_START_TIMEOUT (90 s),
#      JAVA_BIN (java), KAFKA_LIBS (jar folder), METERING_LOCAL_STATE (deploy/local/.state).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
SPORT="${KAFKA_SASL_PORT:-9094}"  # SASL_PLAINTEXT with SCRAM-SHA-256/512 (users are created with the admin API)
TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
JAVA="${JAVA_BIN:-java}"
LIBS="${KAFKA_LIBS:-$STATE/kafka-libs}"
DATA="$STATE/kafka-data"
CONF="$STATE/kafka-server.properties"
LOG4J="$STATE/kafka-log4j2.properties"
PIDF="$STATE/kafka.pid"
OUT="$STATE/kafka.out"

provision() {
  # A fresh machine of this kind has a JDK and Maven; install them when root and missing
  # (never when JAVA_BIN names a specific binary: that is a deliberate choice to honour).
  if [ -z "${JAVA_BIN:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
      log "kafka: installing a JDK and Maven with apt-get"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven) \
        >"$STATE/apt-java.log" 2>&1 || die "kafka: apt-get install of a JDK/Maven failed (see $STATE/apt-java.log)"
    fi
  fi
  command -v "$JAVA" >/dev/null 2>&1 || die "kafka: Java not found ('$JAVA'); install a JDK 17+ (apt-get install -y openjdk-17-jre-headless)"
  if ! ls "$LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
    command -v mvn >/dev/null 2>&1 || die "kafka: Maven (mvn) not found; it fetches the broker jars (apt-get install -y maven)"
    log "kafka: fetching broker jars from Maven Central into $LIBS"
    rm -rf "$LIBS.tmp"
    mvn -q -B -f "$HERE/kafka-pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$LIBS.tmp" >"$STATE/mvn.log" 2>&1 \
      || die "kafka: mvn could not fetch the broker jars (see $STATE/mvn.log: $(tail -1 "$STATE/mvn.log"))"
    mv "$LIBS.tmp" "$LIBS"
  fi
  cat >"$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT,SASL_PLAINTEXT://127.0.0.1:$SPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT,SASL_PLAINTEXT://127.0.0.1:$SPORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=8
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
log.segment.bytes=268435456
CONF
  cat >"$LOG4J" <<'L4J'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/kafka-server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = file
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
L4J
  if [ ! -f "$DATA/meta.properties" ]; then
    local id
    id="$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    [ -n "$id" ] || die "kafka: StorageTool random-uuid failed (java: $("$JAVA" -version 2>&1 | head -1))"
    "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool format --standalone -t "$id" -c "$CONF" >"$STATE/kafka-format.log" 2>&1 \
      || die "kafka: formatting $DATA failed: $(tail -1 "$STATE/kafka-format.log")"
  fi
}

ready() {
  python3 "$HERE/kafka_ready.py" "127.0.0.1:$PORT" >/dev/null 2>&1
}

start() {
  if pid_alive "$PIDF"; then
    ready && { log "kafka: already running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; return 0; }
  else
    if port_in_use "$PORT"; then
      die "kafka: port 127.0.0.1:$PORT is already in use by another process (pid $(listener_pid "$PORT")); stop it or set KAFKA_PORT"
    fi
    port_in_use "$SPORT" && die "kafka: SASL port 127.0.0.1:$SPORT is already in use (pid $(listener_pid "$SPORT")); stop it or set KAFKA_SASL_PORT"
    port_in_use "$CPORT" && die "kafka: controller port 127.0.0.1:$CPORT is already in use (pid $(listener_pid "$CPORT")); stop it or set KAFKA_CONTROLLER_PORT"
    provision
    mkdir -p "$STATE/kafka-logs"
    # setsid: the broker outlives the shell (and pytest) that started it.
    setsid "$JAVA" -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
      -Dkafka.logs.dir="$STATE/kafka-logs" -Dlog4j2.configurationFile="$LOG4J" \
      -cp "$LIBS/*" kafka.Kafka "$CONF" >"$OUT" 2>&1 </dev/null &
    echo $! >"$PIDF"
  fi
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until ready; do
    if ! pid_alive "$PIDF"; then
      local why
      why="$(grep -hE 'ERROR|Exception' "$OUT" "$STATE/kafka-logs/kafka-server.log" 2>/dev/null | tail -1 | cut -c1-300)"
      rm -f "$PIDF"
      die "kafka: broker exited during start-up: ${why:-see $STATE/kafka-logs/kafka-server.log}"
    fi
    [ "$(date +%s)" -ge "$deadline" ] && die "kafka: broker not ready after ${TIMEOUT}s (see $STATE/kafka-logs/kafka-server.log)"
    sleep 1
  done
  log "kafka: ready on 127.0.0.1:$PORT (Apache Kafka $(version))"
}

stop() {
  stop_pid kafka "$PIDF" 30
}

status() {
  if pid_alive "$PIDF" && ready; then echo "kafka: running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT, Apache Kafka $(version)"; return 0; fi
  echo "kafka: not running"; return 3
}

version() {
  local jar; jar="$(ls "$LIBS"/kafka_2.13-*.jar 2>/dev/null | head -1)"
  [ -n "$jar" ] && basename "$jar" .jar | sed 's/^kafka_2.13-//' || echo unknown
}

case "${1:-}" in
  provision) provision ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  version) version ;;
  *) die "usage: $0 provision|start|stop|status|version" ;;
esac
