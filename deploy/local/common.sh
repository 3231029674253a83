# Shared by deploy/local/*.sh. Sourced, never run.
# Everything lives under $STATE (git-ignored); ports are overridable so a test can run a
# second, throw-away instance beside the shared one.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${METERING_LOCAL_STATE:-$HERE/.state}"
mkdir -p "$STATE"

die() { echo "$1" >&2; exit 1; }
log() { echo "$*" >&2; }

# port_in_use PORT: true when something listens on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# listener_pid PORT: the pid listening on PORT, if ss can tell.
listener_pid() {
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true
}

# stop_pid NAME PIDFILE GRACE_SECONDS: SIGTERM the process, SIGKILL it after the grace
# period, forget the pid file. Stopping a stopped service is a no-op.
stop_pid() {
  local name="$1" pidf="$2" grace="$3" pid
  if ! pid_alive "$pidf"; then rm -f "$pidf"; log "$name: not running"; return 0; fi
  pid="$(cat "$pidf")"
  kill -TERM "$pid"
  for _ in $(seq 1 $((grace * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { log "$name: no exit after $grace s, killing"; kill -KILL "$pid"; }
  rm -f "$pidf"
  log "$name: stopped"
}
