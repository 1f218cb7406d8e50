#!/usr/bin/env bash
# The platform mix (issue 21): two `front` processes and a `processor` on
# Redis + Apache Kafka (one KRaft node, scripts/kafka.sh), loaded by
# `danmaku-bench platform`: a top room with TOP_SHARE of the viewers, a Zipf
# tail, message rates by room size; per front CPU and RSS, Redis commands/s
# (INFO commandstats), deliveries/s, latency p99 per size class, losses.
# Three runs on the same rooms, to show what Redis reads grow with:
#   base    VIEWERS_LOW viewers in ROOMS rooms;
#   viewers VIEWERS_HIGH viewers in the same rooms at the same rates (rooms
#           classed as with VIEWERS_LOW; the fronts' big_room_threshold scaled
#           by VIEWERS_HIGH / VIEWERS_LOW, so the same rooms are big);
#   quiet   VIEWERS_LOW viewers plus QUIET rooms of 2 viewers where nothing
#           is posted.
# Then a table of the three. The tool spawns the fronts and the processor
# for each run (fresh processes, their own Kafka topic); Redis is flushed
# between runs. Loopback only; bounded in time.
# Needs redis-server, java and mvn (or the jars cached by scripts/kafka.sh
# fetch) and a release build:
#   cargo build --release --bin danmaku --bin danmaku-bench
# Usage: benches/platform-bench.sh [base|viewers|quiet|all]   (default all)
# Env: VIEWERS_LOW (2000), VIEWERS_HIGH (6000), ROOMS (50), QUIET (300),
#      TOP_SHARE (0.4), RATE_BIG (20), RATE_MEDIUM (2), RATE_SMALL (0.5) msg/s
#      per room, BIG_MIN (100: also the fronts' big_room_threshold; medium from 10),
#      DURATION (20s), WARMUP (3s), REPEAT (1), PORT_BASE (18700),
#      OUT (directory for the JSON reports; default a temporary one, removed),
#      BIN_DIR (where danmaku and danmaku-bench are; default the release build),
#      COMPRESS=1 (viewers offer permessage-deflate; bytes are wire bytes).
# Text: the realistic mixed Chinese/English corpus (--realistic-text).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
T="${BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}/release}"
base="${PORT_BASE:-18700}"
redis_port=$base; kafka_port=$((base + 1)); kafka_controller_port=$((base + 2))
proc_port=$((base + 3)); front1=$((base + 4)); front2=$((base + 5))
work="$(mktemp -d /tmp/danmaku-pbench.XXXXXX)"
out="${OUT:-$work}"
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/kafka.sh stop "$work/kafka" || true
  rm -rf "$work"
}
trap cleanup EXIT
for bin in danmaku danmaku-bench; do
  [ -x "$T/$bin" ] || { echo "no $T/$bin: cargo build --release --bin danmaku --bin danmaku-bench" >&2; exit 1; }
done

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
scripts/kafka.sh start "$kafka_port" "$work/kafka" "$kafka_controller_port"

# The spawned fronts and processor inherit these (config via env DANMAKU_*).
export DANMAKU_STORE__ENGINE=redis DANMAKU_REDIS_URL="redis://127.0.0.1:$redis_port"
export DANMAKU_BUS__ENGINE=kafka DANMAKU_KAFKA_BROKERS="127.0.0.1:$kafka_port"
export DANMAKU_LOG=warn

big_min="${BIG_MIN:-100}"; low="${VIEWERS_LOW:-2000}"; high="${VIEWERS_HIGH:-6000}"

# mix LABEL SCALE [extra danmaku-bench options]: SCALE multiplies big_room_threshold.
mix() {
  local label=$1 scale=$2; shift 2
  export DANMAKU_BUS__TOPIC="platform-$$-$label" DANMAKU_BUS__GROUP_ID="platform-$$-$label"
  redis-cli -p "$redis_port" flushall >/dev/null
  echo "== $label"
  "$T/danmaku-bench" platform --spawn "$T/danmaku" --server-config benches/fanout.toml \
    --server-cpus "0-$(($(nproc) - 1))" \
    --front "http://127.0.0.1:$front1" --front "http://127.0.0.1:$front2" \
    --processor "http://127.0.0.1:$proc_port" --redis-url "redis://127.0.0.1:$redis_port" \
    --room "p$label" --rooms "${ROOMS:-50}" --top-share "${TOP_SHARE:-0.4}" \
    --big-min "$big_min" --classes-at "$low" \
    --server-env "DANMAKU_FANOUT__BIG_ROOM_THRESHOLD=$((big_min * scale))" --rate-big "${RATE_BIG:-20}" --rate-medium "${RATE_MEDIUM:-2}" \
    --rate-small "${RATE_SMALL:-0.5}" --duration "${DURATION:-20s}" --warmup "${WARMUP:-3s}" \
    --repeat "${REPEAT:-1}" --latency-every 4 --realistic-text ${COMPRESS:+--compress} \
    --quiet --json "$out/$label.json" "$@"
}

case "$what" in base|all) mix base 1 --viewers "$low" ;; esac
case "$what" in viewers|all) mix viewers $((high / low)) --viewers "$high" ;; esac
case "$what" in quiet|all) mix quiet 1 --viewers "$low" --quiet-rooms "${QUIET:-300}" ;; esac

echo
echo "== summary (per run; with REPEAT > 1, run 1 of each)"
printf '%-8s %7s %6s %10s %9s %12s %14s %18s %22s %9s %12s %6s\n' run viewers rooms "deliv/s" "pub/s" "redis cmd/s" "zrangebyscore/s" "front CPU %" "p99 ms big/med/small" "B/deliv" "frames/CPU-s" lost
for label in base viewers quiet; do
  f="$out/$label.json"
  [ -f "$f" ] || continue
  jq -r '(if .runs then .runs[0] else . end) as $r |
    [ "'"$label"'", ($r.clients|tostring), ($r.mix.rooms|tostring),
      ($r.deliveries_per_s|floor|tostring), ($r.publish.accepted_per_s*10|round/10|tostring),
      ($r.redis.commands_per_s*10|round/10|tostring),
      (($r.redis.by_command_per_s.zrangebyscore // 0)*10|round/10|tostring),
      ([$r.fronts[].process.cpu_util*100|round|tostring]|join("+")),
      ([($r.classes.big, $r.classes.medium, $r.classes.small)|.latency_ms.p99_ms|round|tostring]|join("/")),
      (([$r.fronts[].bytes_per_s]|add) / ([$r.fronts[].deliveries_per_s]|add)|round|tostring),
      (([$r.fronts[].frames_per_s]|add) / ([$r.fronts[].process.cpu_util]|add)|round|tostring),
      ($r.lost|tostring) ] | @tsv' "$f" |
    awk -F'\t' '{printf "%-8s %7s %6s %10s %9s %12s %14s %18s %22s %9s %12s %6s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12}'
done
