#!/usr/bin/env bash
# Redis with Sentinel on loopback, for the failover test (tests/redis_failover.rs)
# and by hand: a primary, two replicas and three sentinels with a fast failover
# (down-after-milliseconds 1000, failover-timeout 5000). Needs only
# redis-server (sentinels run as `redis-server <conf> --sentinel`; no
# redis-sentinel package). No persistence: what a killed node held is gone.
#
# Two replicas, not one: with store.redis_wait_replicas = 1 an append waits
# for a replica, and after a failover the promoted one still has the other.
#
# Usage:
#   scripts/redis-sentinel.sh start DIR PRIMARY REPLICA1 REPLICA2 SENTINEL1 SENTINEL2 SENTINEL3
#       Starts them (pids in DIR/<port>.pid, logs in DIR/<port>.log) and
#       returns once both replicas are in sync and every sentinel knows both
#       replicas and the other two sentinels; fails within
#       DANMAKU_SENTINEL_START_TIMEOUT seconds (default 30) otherwise.
#       Clients: redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/danmaku
#   scripts/redis-sentinel.sh stop DIR
#       SIGTERM to every process it started (and SIGKILL after 5 s).
# Env: DANMAKU_SENTINEL_MASTER (default danmaku): the monitored name.
set -euo pipefail

master="${DANMAKU_SENTINEL_MASTER:-danmaku}"
# 60 s: sentinels learn replicas from INFO every 10 s and each other from
# hellos every 2 s; on a loaded 2-core machine 30 s was once not enough.
timeout_s="${DANMAKU_SENTINEL_START_TIMEOUT:-60}"

die() { echo "redis-sentinel.sh: $*" >&2; exit 1; }

# Waits until `cmd` (a shell snippet) succeeds, or dies with `what`.
wait_for() { # what cmd
  local deadline=$((SECONDS + timeout_s))
  until eval "$2" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$1 not within ${timeout_s} s (logs in $dir)"
    sleep 0.2
  done
}

start() {
  [ $# -eq 7 ] || die "usage: start DIR PRIMARY REPLICA1 REPLICA2 SENTINEL1 SENTINEL2 SENTINEL3"
  dir="$1"; primary="$2"; replicas=("$3" "$4"); sentinels=("$5" "$6" "$7")
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  for port in "$primary" "${replicas[@]}"; do
    mkdir -p "$dir/data-$port"
    local of=()
    [ "$port" = "$primary" ] || of=(--replicaof 127.0.0.1 "$primary")
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$dir/data-$port" --daemonize yes --pidfile "$dir/$port.pid" \
      --logfile "$dir/$port.log" "${of[@]}"
  done
  for port in "${replicas[@]}"; do
    wait_for "replica $port in sync" \
      "redis-cli -p $port INFO replication | grep -q master_link_status:up"
  done
  for port in "${sentinels[@]}"; do
    cat >"$dir/sentinel-$port.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/$port.pid
logfile $dir/$port.log
dir $dir
sentinel monitor $master 127.0.0.1 $primary 2
sentinel down-after-milliseconds $master 1000
sentinel failover-timeout $master 5000
sentinel parallel-syncs $master 2
EOF
    redis-server "$dir/sentinel-$port.conf" --sentinel
  done
  for port in "${sentinels[@]}"; do
    wait_for "sentinel $port to know 2 replicas and 2 sentinels" \
      "redis-cli -p $port SENTINEL master $master | tr -d '\r' | paste - - \
        | grep -qx 'num-slaves	2' && redis-cli -p $port SENTINEL master $master \
        | tr -d '\r' | paste - - | grep -qx 'num-other-sentinels	2'"
  done
}

stop() {
  [ $# -eq 1 ] || die "usage: stop DIR"
  dir="$1"
  local pids=()
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: $0 start DIR PRIMARY REPLICA1 REPLICA2 SENTINEL1 SENTINEL2 SENTINEL3 | stop DIR" ;;
esac
