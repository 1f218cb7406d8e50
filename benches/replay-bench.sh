#!/usr/bin/env bash
# Replay window throughput per tier: one release `danmaku serve` per tier
# (front cache; replay Redis with the cache off; the archive with both off),
# N GETs by curl -Z (16 parallel) cycling 20 aligned windows of one archived
# live, which this script writes into MariaDB first (10 000 messages, one
# every 60 ms, ~250 B each). Prints req/s per tier and the replay metrics that
# show which tier answered. BENCHMARKS.md ("Replay tiers") has the figures.
#
#   BIN=target/release/danmaku MYSQL_PORT=16662 REPLAY_REDIS=redis://127.0.0.1:16661/ \
#     PORT0=16663 N=4000 W=30000 benches/replay-bench.sh
#
# Needs: a MariaDB (scripts/mariadb-test.sh start PORT DIR), a redis-server for
# the replay tier, the `mariadb` client and curl >= 7.66.
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/danmaku}
MYSQL_PORT=${MYSQL_PORT:-16662}
MYSQL=mysql://root@127.0.0.1:$MYSQL_PORT/danmaku_test
REPLAY_REDIS=${REPLAY_REDIS:-redis://127.0.0.1:16661/}
PORT0=${PORT0:-16663}
N=${N:-4000}; W=${W:-30000}
LIVE=benchlive$(date +%s); ROOM=bench-replay
DIR=$(mktemp -d /tmp/replay-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

start() { # port, extra env...
  local port=$1; shift
  env DANMAKU_LISTEN=127.0.0.1:$port DANMAKU_ARCHIVE_URL=$MYSQL DANMAKU_ARCHIVE__RUN_ARCHIVER=false \
      DANMAKU_LOG=warn "$@" "$BIN" serve >"$DIR/$port.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server on $port did not start:" >&2; cat "$DIR/$port.log" >&2; exit 1
}

seed() { # the archived live, straight into MariaDB (after the first server migrated it)
  local t0=$(( $(date +%s) * 1000 - 3600000 ))
  mariadb --no-defaults -uroot -h127.0.0.1 -P"$MYSQL_PORT" --protocol=tcp danmaku_test <<SQL
SET SESSION max_recursive_iterations = 100000;
INSERT INTO lives (id, room, started_at, ended_at, archived_through_seq, archived_at)
  VALUES ('$LIVE', '$ROOM', $t0, $t0 + 600001, 10000, $t0 + 600002);
INSERT INTO live_messages (live_id, seq, offset_ms, ts, body, msg_id)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
SELECT '$LIVE', i, i * 60, $t0 + i * 60,
  CONCAT('{"id":"b', i, '","seq":', i, ',"room":"$ROOM","kind":"danmaku","priority":"low",',
         '"user":{"id":"u', i % 100, '","name":"bench viewer"},',
         '"text":"replay benchmark message number ', i, ', long enough to weigh what a real one does",',
         '"ts":', $t0 + i * 60, ',"offset_ms":', i * 60, '}'),
  CONCAT('b', i)
FROM n;
SQL
}

urls() { # port
  for i in $(seq 0 $((N - 1))); do k=$((i % 20))
    echo "url = \"http://127.0.0.1:$1/v1/rooms/$ROOM/replay?live=$LIVE&from_ms=$((k * W))&to_ms=$(((k + 1) * W))\""
    echo 'output = "/dev/null"'
  done > "$DIR/urls.$1"
}

bench() { # label port
  urls "$2"
  # Warm the live look-up (and, for the cache tier, nothing else: the run fills it).
  curl -s -o /dev/null "http://127.0.0.1:$2/v1/rooms/$ROOM/replay?live=$LIVE&from_ms=0&to_ms=1"
  local t0 t1 ok bytes
  t0=$(date +%s.%N)
  curl -s --no-progress-meter -Z --parallel-max 16 -K "$DIR/urls.$2" -w '%{http_code} %{size_download}\n' > "$DIR/out.$2"
  t1=$(date +%s.%N)
  ok=$(grep -c '^200 ' "$DIR/out.$2" || true); bytes=$(awk '{s+=$2} END {print s}' "$DIR/out.$2")
  echo "$1: $N requests ($ok x 200, $((bytes / N)) B each) in $(echo "$t1 - $t0" | bc) s = $(echo "$N / ($t1 - $t0)" | bc) req/s"
  curl -s "http://127.0.0.1:$2/metrics" \
    | grep -E '^danmaku_replay_(reads_total|archive_queries_total|redis_errors_total|coalesced_total)' | sed 's/^/    /'
}

start $PORT0
seed
start $((PORT0 + 1)) DANMAKU_ARCHIVE__REPLAY_CACHE_MESSAGES=0 DANMAKU_STORE__REPLAY_REDIS_URL=$REPLAY_REDIS
start $((PORT0 + 2)) DANMAKU_ARCHIVE__REPLAY_CACHE_MESSAGES=0
bench "front cache (moka)" $PORT0
bench "replay Redis (front cache off)" $((PORT0 + 1))
bench "MariaDB archive (front cache and replay Redis off)" $((PORT0 + 2))
