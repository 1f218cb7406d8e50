#!/usr/bin/env bash
# Replay window throughput: one release `danmaku serve` per tier, curl -Z (16 parallel).
set -eu
BIN=$HOME/.cache/danmaku-target/release/danmaku
MYSQL=mysql://root@127.0.0.1:13306/danmaku_test
LIVE=benchlive0000000000000000000000001; ROOM=bench-replay; N=${N:-4000}; W=${W:-30000}
start() { # port, extra env...
  local port=$1; shift
  env DANMAKU_LISTEN=127.0.0.1:$port DANMAKU_ARCHIVE_URL=$MYSQL DANMAKU_ARCHIVE__COPIER=false \
      DANMAKU_LOG=warn "$@" "$BIN" serve >/tmp/rbench/$port.log 2>&1 &
  echo $! > /tmp/rbench/$port.pid
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && return; sleep 0.1; done
}
urls() { # port
  for i in $(seq 0 $((N-1))); do k=$((i % 20));
    echo "url = \"http://127.0.0.1:$1/v1/rooms/$ROOM/replay?live=$LIVE&from_ms=$((k*W))&to_ms=$(((k+1)*W))\""
    echo 'output = "/dev/null"'; done > /tmp/rbench/urls.$1
}
bench() { # label port
  urls $2
  curl -s -o /dev/null "http://127.0.0.1:$2/v1/rooms/$ROOM/replay?live=$LIVE&from_ms=0&to_ms=30000" # warm live lookup
  local t0=$(date +%s.%N)
  curl -s -Z --parallel-max 16 -K /tmp/rbench/urls.$2 -w '%{http_code} %{size_download}\n' > /tmp/rbench/out.$2
  local t1=$(date +%s.%N)
  local ok=$(grep -c '^200 ' /tmp/rbench/out.$2); local bytes=$(awk '{s+=$2} END {print s}' /tmp/rbench/out.$2)
  echo "$1: $N requests ($ok x 200, $((bytes/N)) B each) in $(echo "$t1 - $t0" | bc) s = $(echo "$N / ($t1 - $t0)" | bc) req/s"
  curl -s http://127.0.0.1:$2/metrics | grep -E '^danmaku_replay_(reads_total|archive_queries_total|redis_errors_total)'
}
start 18091
start 18092 DANMAKU_ARCHIVE__REPLAY_CACHE_MESSAGES=0
start 18093 DANMAKU_ARCHIVE__REPLAY_CACHE_MESSAGES=0 DANMAKU_REPLAY_REDIS_URL=redis://127.0.0.1:16392/
bench "cache (front moka)" 18091
bench "archive (MariaDB, cache off)" 18092
bench "replay redis (cache off)" 18093
for p in 18091 18092 18093; do kill $(cat /tmp/rbench/$p.pid); done
