#!/usr/bin/env bash
# A throw-away Redis Cluster for tests: 3 masters, no replicas, loopback only,
# no persistence (Debian's redis-server with cluster-enabled yes).
#   scripts/redis-cluster.sh start   BASE DIR  # nodes on BASE, BASE+1, BASE+2 (bus: +10000)
#   scripts/redis-cluster.sh restart PORT DIR [DOWN_S]  # one node: SHUTDOWN SAVE, stay
#                       # down DOWN_S seconds (default 0), start again (same port,
#                       # same nodes.conf, its RDB)
#   scripts/redis-cluster.sh stop    DIR
# `start` returns once every node reports cluster_state:ok. After it, tests use
#   DANMAKU_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:BASE,redis://127.0.0.1:BASE+1,redis://127.0.0.1:BASE+2
# cluster-require-full-coverage is off: while one master is away the other
# masters keep serving their slots (docs/architecture.md, "Redis Cluster").
set -euo pipefail
cmd=${1:?start|restart|stop}

start_node() { # port dir
  local port=$1 dir=$2/$1
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout 5000 --cluster-require-full-coverage no \
    --dir "$dir" --dbfilename dump.rdb --logfile "$dir/redis.log" \
    --pidfile "$dir/redis.pid" --daemonize yes
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis node $port did not start (see $dir/redis.log)" >&2
  return 1
}

wait_ok() { # seconds port...
  local seconds=$1; shift
  for _ in $(seq 1 $((seconds * 10))); do
    local all=1
    for port in "$@"; do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || all=""
    done
    [ -n "$all" ] && return 0
    sleep 0.1
  done
  echo "redis cluster on ports $* did not reach cluster_state:ok in $seconds s" >&2
  return 1
}

case "$cmd" in
start)
  base=${2:?BASE}; dir=${3:?DIR}
  ports=("$base" $((base + 1)) $((base + 2)))
  mkdir -p "$dir"
  for port in "${ports[@]}"; do start_node "$port" "$dir"; done
  if ! redis-cli -p "$base" cluster info | grep -q '^cluster_state:ok'; then
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
      >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; exit 1; }
  fi
  wait_ok 30 "${ports[@]}"
  ;;
restart)
  port=${2:?PORT}; dir=${3:?DIR}; down_s=${4:-0}
  # SHUTDOWN SAVE writes the RDB even with no save points: the node comes
  # back with its keys (a restart, not a loss of the shard).
  redis-cli -p "$port" shutdown save >/dev/null 2>&1 || true
  pid=$(cat "$dir/$port/redis.pid" 2>/dev/null || true)
  for _ in $(seq 1 100); do
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep "$down_s"
  start_node "$port" "$dir"
  wait_ok 30 "$port"
  ;;
stop)
  dir=${2:?DIR}
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # A node a failed test left frozen (SIGSTOP) would not act on TERM.
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  ;;
*) echo "usage: $0 start BASE DIR | restart PORT DIR [DOWN_S] | stop DIR" >&2; exit 2 ;;
esac
