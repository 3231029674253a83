#!/usr/bin/env bash
# A real 3-node Redis Cluster (3 masters, no replicas) on 127.0.0.1, for proving that the
# store's scripts run unchanged on Cluster (every key of one script shares a hash tag).
#   deploy/local/redis-cluster.sh start|stop|status
# Env: REDIS_CLUSTER_PORTS ("7000 7001 7002"), METERING_LOCAL_STATE.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORTS=(${REDIS_CLUSTER_PORTS:-7000 7001 7002})
DIR="$STATE/redis-cluster"

ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]; }
cluster_ok() { redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

start() {
  "$HERE/redis.sh" provision >/dev/null  # installs redis-server/redis-cli when missing
  command -v redis-cli >/dev/null 2>&1 || die "redis-cluster: redis-cli not found (apt-get install redis-tools)"
  if cluster_ok; then log "redis-cluster: already running on ports ${PORTS[*]}"; return 0; fi
  for port in "${PORTS[@]}"; do
    if ping "$port"; then continue; fi
    port_in_use "$port" && die "redis-cluster: port 127.0.0.1:$port is already in use (pid $(listener_pid "$port"))"
    mkdir -p "$DIR/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$DIR/$port/nodes.conf" --cluster-node-timeout 5000 \
      --appendonly yes --save "" --dir "$DIR/$port" --daemonize yes \
      --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log" \
      || die "redis-cluster: node $port failed to start"
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 50); do ping "$port" && break; sleep 0.2; done
    ping "$port" || die "redis-cluster: node $port gives no PONG"
  done
  if ! cluster_ok; then
    local known
    known="$(redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info | grep cluster_known_nodes | tr -dc 0-9)"
    if [ "${known:-1}" -lt "${#PORTS[@]}" ]; then
      redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 --cluster-yes \
        >"$DIR/create.log" 2>&1 || die "redis-cluster: cluster create failed: $(tail -1 "$DIR/create.log")"
    fi
    for _ in $(seq 1 100); do cluster_ok && break; sleep 0.2; done
    cluster_ok || die "redis-cluster: cluster_state is not ok after 20 s"
  fi
  log "redis-cluster: ready on ports ${PORTS[*]}"
}

stop() {
  for port in "${PORTS[@]}"; do
    local pidf="$DIR/$port/redis.pid"
    if pid_alive "$pidf"; then kill -TERM "$(cat "$pidf")"; fi
  done
  sleep 0.5
  log "redis-cluster: stopped"
}

status() {
  if cluster_ok; then echo "redis-cluster: running on ports ${PORTS[*]}"; return 0; fi
  echo "redis-cluster: not running"; return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
