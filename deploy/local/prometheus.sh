#!/usr/bin/env bash
# A real Prometheus on 127.0.0.1 scraping the metering service, with the alert rules loaded.
#   deploy/local/prometheus.sh start|stop|status
# Debian's prometheus (installed with apt-get when missing and root). The config is written
# from deploy/prometheus/prometheus.yml with the scrape target replaced by PROMETHEUS_TARGET
# and the rules path pointing at deploy/prometheus/alerts.yml (edit it, then `start` again:
# a running server reloads). Idempotent like redis.sh.
# Env: PROMETHEUS_PORT (9090), PROMETHEUS_TARGET (127.0.0.1:9400),
#      PROMETHEUS_START_TIMEOUT (30 s), METERING_LOCAL_STATE.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${PROMETHEUS_PORT:-9090}"
TARGET="${PROMETHEUS_TARGET:-127.0.0.1:9400}"
TIMEOUT="${PROMETHEUS_START_TIMEOUT:-30}"
SRC="$(cd "$HERE/../prometheus" && pwd)"
DIR="$STATE/prometheus-$PORT"
CONF="$DIR/prometheus.yml"
PIDF="$DIR/prometheus.pid"
OUT="$DIR/prometheus.out"
# The literal target of the checked-in config (the compose service name).
PLACEHOLDER="metering:9400"

provision() {
  if ! command -v prometheus >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      # No recommends (node-exporter etc.). On a host with systemd the package also starts its
      # own service on :9090; this script then refuses that port in one line (set PROMETHEUS_PORT).
      log "prometheus: installing Debian's prometheus"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
        >"$STATE/apt-prometheus.log" 2>&1 \
        || die "prometheus: apt-get install prometheus failed (see $STATE/apt-prometheus.log)"
    else
      die "prometheus: no prometheus binary; install it (apt-get install -y prometheus) or run this as root"
    fi
  fi
  command -v prometheus >/dev/null 2>&1 || die "prometheus: no prometheus binary found after apt-get install"
}

write_config() {
  [[ "$TARGET" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "prometheus: PROMETHEUS_TARGET must be host:port, not '$TARGET'"
  grep -q -- "- $PLACEHOLDER\$" "$SRC/prometheus.yml" \
    || die "prometheus: $SRC/prometheus.yml no longer names the target $PLACEHOLDER to replace"
  grep -q -- "- alerts.yml\$" "$SRC/prometheus.yml" \
    || die "prometheus: $SRC/prometheus.yml no longer loads alerts.yml"
  mkdir -p "$DIR"
  sed -e "s|- $PLACEHOLDER\$|- $TARGET|" -e "s|- alerts.yml\$|- $SRC/alerts.yml|" \
    "$SRC/prometheus.yml" >"$CONF.tmp"
  if command -v promtool >/dev/null 2>&1; then
    promtool check config "$CONF.tmp" >"$DIR/check.out" 2>&1 \
      || die "prometheus: config or alerts invalid: $(grep -m1 -iE 'FAILED|error' "$DIR/check.out" | cut -c1-300)"
  fi
  mv "$CONF.tmp" "$CONF"
}

ready() {
  curl -fsS -m 2 "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1
}

start() {
  provision
  write_config
  if pid_alive "$PIDF"; then
    # Running already: pick up a new target or edited alerts (SIGHUP = reload).
    kill -HUP "$(cat "$PIDF")"
  else
    if port_in_use "$PORT"; then
      die "prometheus: port 127.0.0.1:$PORT is already in use by another process (pid $(listener_pid "$PORT")); stop it or set PROMETHEUS_PORT"
    fi
    # setsid: the server outlives the shell (and pytest) that started it.
    setsid prometheus \
      --config.file="$CONF" \
      --storage.tsdb.path="$DIR/data" \
      --storage.tsdb.retention.time=2d \
      --web.listen-address="127.0.0.1:$PORT" \
      --web.enable-lifecycle \
      >"$OUT" 2>&1 </dev/null &
    echo $! >"$PIDF"
  fi
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until ready; do
    if ! pid_alive "$PIDF"; then
      local why
      why="$(grep -hE 'level=(error|fatal)|err=' "$OUT" 2>/dev/null | tail -1 | cut -c1-300)"
      rm -f "$PIDF"
      die "prometheus: server exited during start-up: ${why:-see $OUT}"
    fi
    [ "$(date +%s)" -ge "$deadline" ] && die "prometheus: /-/ready not answering after ${TIMEOUT}s (see $OUT)"
    sleep 0.2
  done
  log "prometheus: ready on http://127.0.0.1:$PORT (pid $(cat "$PIDF")), scraping $TARGET"
}

stop() {
  stop_pid prometheus "$PIDF" 15
}

status() {
  if pid_alive "$PIDF" && ready; then
    echo "prometheus: running (pid $(cat "$PIDF")) on http://127.0.0.1:$PORT"; return 0
  fi
  echo "prometheus: not running"; return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
