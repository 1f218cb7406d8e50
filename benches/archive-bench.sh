#!/usr/bin/env bash
# Continuous archiving (docs/replay.md, "Archiver"): front, processor and
# archiver as separate processes on Redis + Apache Kafka (one KRaft node,
# scripts/kafka.sh) + MariaDB (scripts/mariadb-test.sh), load from
# danmaku-bench:
#   1. lag: a live at RATE msg/s (default 5000) for DURATION (default 30s)
#      with the archiver running; its lag (danmaku_archiver_lag_seconds,
#      _messages) sampled every 250 ms; prints max and median, and the rows
#      archived against the posts accepted;
#   2. write: a live of the same load with the archiver stopped, then the
#      archiver started on the backlog: rows archived per second into MariaDB
#      from its first row to its last (the stored log read, the live looked
#      up, rows inserted in transactions of archive.batch_size, offsets
#      committed).
# Loopback only; bounded in time. Needs redis-server, mariadbd, java and mvn
# (or the broker's jars cached by scripts/kafka.sh fetch) and a release build:
#   cargo build --release --bin danmaku --bin danmaku-bench
# Usage: benches/archive-bench.sh [lag|write|all]
# Env:   RATE (5000), DURATION (30s), PORT_BASE (18600), LOAD=posts (viewer
#        danmaku from danmaku-bench, one request each) or LOAD=batch (the gift
#        backend's signed events:batch, 100 events per request:
#        benches/batch-load.py), for when one request per message is more than
#        the machine can carry beside the broker and MariaDB.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
T="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}/release"
base="${PORT_BASE:-18600}"
redis_port=$base; kafka_port=$((base + 1)); front_port=$((base + 2)); proc_port=$((base + 3))
kafka_controller_port=$((base + 4)); mysql_port=$((base + 5)); arch_port=$((base + 6))
rate="${RATE:-5000}"; duration="${DURATION:-30s}"
admin=bench-admin-token
work="$(mktemp -d /tmp/danmaku-abench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/kafka.sh stop "$work/kafka" || true
  scripts/mariadb-test.sh stop "$mysql_port" "$work/mariadb" || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
sql() { mariadb --no-defaults -uroot -h127.0.0.1 -P"$mysql_port" --protocol=tcp -N danmaku_test -e "$1"; }

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
scripts/kafka.sh start "$kafka_port" "$work/kafka" "$kafka_controller_port"
scripts/mariadb-test.sh start "$mysql_port" "$work/mariadb"
export DANMAKU_STORE__ENGINE=redis DANMAKU_REDIS_URL="redis://127.0.0.1:$redis_port"
export DANMAKU_BUS__ENGINE=kafka DANMAKU_KAFKA_BROKERS="127.0.0.1:$kafka_port"
export DANMAKU_ARCHIVE_URL="mysql://root@127.0.0.1:$mysql_port/danmaku_test"
export DANMAKU_ARCHIVE__RUN_ARCHIVER=false DANMAKU_ADMIN_TOKEN=$admin DANMAKU_LOG=warn
# The end does not wait: the bench measures the archiver, not the answer.
export DANMAKU_ARCHIVE__END_WAIT_MS=0

start_archiver() {
  "$T/danmaku" --config benches/fanout.toml --listen "127.0.0.1:$arch_port" archiver &
  arch_pid=$!; pids+=($arch_pid)
  wait_http "http://127.0.0.1:$arch_port/readyz"
}
# start_pipeline: a processor and a front on their own topics.
start_pipeline() {
  export DANMAKU_BUS__TOPIC="abench-$$-$RANDOM" DANMAKU_BUS__GROUP_ID="abench-$$-$RANDOM"
  "$T/danmaku" --config benches/fanout.toml --listen "127.0.0.1:$proc_port" processor &
  proc_pid=$!; pids+=($proc_pid)
  "$T/danmaku" --config benches/fanout.toml --listen "127.0.0.1:$front_port" front &
  front_pid=$!; pids+=($front_pid)
  wait_http "http://127.0.0.1:$proc_port/readyz"
  wait_http "http://127.0.0.1:$front_port/readyz"
}
stop_all() {
  kill "$front_pid" "$proc_pid" "${arch_pid:-}" 2>/dev/null || true
  wait "$front_pid" "$proc_pid" "${arch_pid:-}" 2>/dev/null || true
  arch_pid=""
}
live() { # start|end ROOM → the live id (start)
  curl -sf -X POST -H "authorization: Bearer $admin" \
    "http://127.0.0.1:$front_port/v1/admin/rooms/$2/live/$1" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p'
}
load() { # ROOM (LOAD=batch: signed system events via events:batch, 100 per request)
  if [ "${LOAD:-posts}" = batch ]; then
    python3 benches/batch-load.py "http://127.0.0.1:$front_port" "$1" "$rate" "${duration%s}"
    return
  fi
  "$T/danmaku-bench" fanout --url "http://127.0.0.1:$front_port" --server-pid "$front_pid" --quiet \
    --room "$1" --viewers 1 --publishers 16 --rate "$rate" --duration "$duration" --warmup 1s --drain 3s
}

if [ "$what" = lag ] || [ "$what" = all ]; then
  start_pipeline
  start_archiver
  room="lag-$$"
  id=$(live start "$room")
  echo "== archiver lag: a live at $rate msg/s for $duration (archive.settle_ms 1000)"
  ( while kill -0 "$arch_pid" 2>/dev/null; do
      echo "$(metric "$arch_port" danmaku_archiver_lag_seconds) $(metric "$arch_port" danmaku_archiver_lag_messages)"
      sleep 0.25
    done ) >"$work/lag.txt" &
  sampler=$!
  load "$room" | tee "$work/load.txt" | grep -E 'accepted|publish rate|lost' || true
  sleep 3
  live end "$room" >/dev/null || true
  sleep 2
  kill "$sampler" 2>/dev/null || true
  sort -g -k1 "$work/lag.txt" | awk '{s[NR]=$1} END {printf "lag seconds: max %s, median %s (%d samples)\n", s[NR], s[int((NR+1)/2)], NR}'
  sort -g -k2 "$work/lag.txt" | awk '{s[NR]=$2} END {printf "lag messages: max %s, median %s\n", s[NR], s[int((NR+1)/2)]}'
  echo "rows archived: $(sql "SELECT COUNT(*) FROM live_messages WHERE live_id = '$id'")"
  stop_all
fi

if [ "$what" = write ] || [ "$what" = all ]; then
  start_pipeline
  room="write-$$"
  id=$(live start "$room")
  echo "== archive write: a live at $rate msg/s for $duration with no archiver, then the archiver on the backlog"
  load "$room" | grep -E 'accepted|lost' || true
  live end "$room" >/dev/null || true
  sleep 2
  start_archiver
  t0=""; last=0
  for _ in $(seq 1 1200); do
    n=$(metric "$arch_port" danmaku_archive_rows_total); n=${n:-0}
    now=$(date +%s.%N)
    if [ -z "$t0" ] && [ "${n%.*}" -gt 0 ]; then t0=$now; n0=$n; fi
    if [ -n "$t0" ] && [ "${n%.*}" = "${last%.*}" ] && [ "$(metric "$arch_port" danmaku_archiver_lag_messages)" = 0 ]; then break; fi
    last=$n; t1=$now
    sleep 0.1
  done
  awk -v a="$t0" -v b="$t1" -v n="$last" -v n0="$n0" 'BEGIN {printf "archived %d rows in %.2f s: %.0f rows/s\n", n, b - a, (n - n0) / (b - a)}'
  echo "rows in MariaDB: $(sql "SELECT COUNT(*) FROM live_messages WHERE live_id = '$id'"); live archived at: $(sql "SELECT archived_at FROM lives WHERE id = '$id'")"
  # Size on disk (InnoDB data + indexes, after fresh statistics) per 1 M rows.
  sql "ANALYZE TABLE live_messages" >/dev/null
  sql "SELECT table_rows, data_length + index_length FROM information_schema.tables
       WHERE table_schema = DATABASE() AND table_name = 'live_messages'" |
    awk '{printf "archive size: %.1f MB for %d rows (InnoDB estimate) = %.0f MB per 1 M messages\n", $2 / 1e6, $1, $2 / $1}'
  sql "SELECT AVG(LENGTH(body)) FROM live_messages WHERE live_id = '$id'" 2>/dev/null |
    awk '{printf "average stored message: %.0f bytes of JSON\n", $1}' || true
  stop_all
fi
