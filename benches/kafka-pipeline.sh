#!/usr/bin/env bash
# The write path front → Apache Kafka (one KRaft node, scripts/kafka.sh) →
# processor → Redis, as separate processes, measured with danmaku-bench:
#   1. ingest: acknowledged posts/s, loss and end-to-end delay p50/p99 post →
#      viewer at rising publish rates, each held for DURATION (default 60s);
#      RATES (default "1000 2000 4000 8000") lists the rates;
#   2. burst: steady load, the processor stalled (SIGSTOP) for 3 s, then
#      resumed: delay and gear of the (room, kind) sampled every 250 ms; run
#      with gears on, then again with the (room, kind) locked in gear 1
#      (up_ms out of reach) for comparison.
# Loopback only; bounded in time. Needs redis-server on PATH, java and mvn
# (or the broker's jars cached by scripts/kafka.sh fetch) and a release
# build: cargo build --release --bin danmaku --bin danmaku-bench
# Usage: benches/kafka-pipeline.sh [ingest|burst|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
T="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}/release"
base="${PORT_BASE:-18500}"
redis_port=$base; kafka_port=$((base + 1)); front_port=$((base + 2)); proc_port=$((base + 3))
kafka_controller_port=$((base + 4))
work="$(mktemp -d /tmp/danmaku-kbench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/kafka.sh stop "$work/kafka" || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_http() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

# The bench profile with gears that never shift up: gear 1 throughout.
{ cat benches/fanout.toml; printf '\n[gears]\nup_ms = [3600000, 3600001, 3600002]\n'; } >"$work/gear1.toml"

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
pids+=($!)
scripts/kafka.sh start "$kafka_port" "$work/kafka" "$kafka_controller_port"
export DANMAKU_STORE__ENGINE=redis DANMAKU_REDIS_URL="redis://127.0.0.1:$redis_port"
export DANMAKU_BUS__ENGINE=kafka DANMAKU_KAFKA_BROKERS="127.0.0.1:$kafka_port"
export DANMAKU_LOG=warn

# start_pipeline CONFIG: a processor and a front on their own topic.
start_pipeline() {
  export DANMAKU_BUS__TOPIC="bench-$$-$RANDOM" DANMAKU_BUS__GROUP_ID="bench-$$-$RANDOM"
  "$T/danmaku" --config "$1" --listen "127.0.0.1:$proc_port" processor &
  proc_pid=$!; pids+=($proc_pid)
  "$T/danmaku" --config "$1" --listen "127.0.0.1:$front_port" front &
  front_pid=$!; pids+=($front_pid)
  wait_http "http://127.0.0.1:$proc_port/readyz"
  wait_http "http://127.0.0.1:$front_port/readyz"
}
stop_pipeline() {
  kill "$front_pid" "$proc_pid" 2>/dev/null || true
  wait "$front_pid" "$proc_pid" 2>/dev/null || true
}

if [ "$what" = ingest ] || [ "$what" = all ]; then
  start_pipeline benches/fanout.toml
  for rate in ${RATES:-1000 2000 4000 8000}; do
    echo "== ingest at $rate msg/s (1 viewer, ${PUBLISHERS:-16} publishers, ${DURATION:-60s})"
    "$T/danmaku-bench" \
      fanout --url "http://127.0.0.1:$front_port" --server-pid "$front_pid" --quiet --room "ingest-$rate" --viewers 1 --publishers "${PUBLISHERS:-16}" --rate "$rate" \
      --duration "${DURATION:-60s}" --warmup 2s --drain 5s || true
  done
  stop_pipeline
fi

# burst LABEL CONFIG
burst() {
  start_pipeline "$2"
  echo "== gear burst ($1): 1000 msg/s into one room; processor stalled 3 s at t=4 s"
  "$T/danmaku-bench" \
    fanout --url "http://127.0.0.1:$front_port" --server-pid "$front_pid" --quiet --room burst --viewers 1 --publishers 16 --rate 1000 --duration 20s --warmup 1s \
    --drain 3s >"$work/burst-report.txt" 2>&1 &
  bench=$!
  start=$(date +%s.%N)
  last_sum=0; last_count=0
  echo "t_s,gear,bus_pending,mean_delay_ms_in_interval"
  for i in $(seq 0 95); do
    t=$(echo "$(date +%s.%N) - $start" | bc)
    if [ "$i" -eq 16 ]; then kill -STOP "$proc_pid"; echo "# t=$t processor SIGSTOP"; fi
    if [ "$i" -eq 28 ]; then kill -CONT "$proc_pid"; echo "# t=$t processor SIGCONT"; fi
    m=$(curl -s --max-time 0.2 "http://127.0.0.1:$proc_port/metrics" || true)
    gear=$(echo "$m" | awk -F' ' '/^danmaku_gear\{kind="danmaku",room="burst"\}/{print $2}')
    pending=$(curl -s --max-time 0.2 "http://127.0.0.1:$front_port/metrics" | awk '/^danmaku_bus_pending /{print $2}')
    sum=$(echo "$m" | awk '/^danmaku_process_delay_seconds_sum[{ ]/{s+=$2; n++} END{if (n) print s}')
    count=$(echo "$m" | awk '/^danmaku_process_delay_seconds_count[{ ]/{s+=$2; n++} END{if (n) print s}')
    mean=""
    if [ -n "$sum" ] && [ -n "$count" ] && [ "$count" != "$last_count" ]; then
      mean=$(echo "($sum - $last_sum) * 1000 / ($count - $last_count)" | bc -l | xargs printf '%.0f')
      last_sum=$sum; last_count=$count
    fi
    printf '%.2f,%s,%s,%s\n' "$t" "${gear:-1}" "${pending:-?}" "${mean:-}"
    sleep 0.25
  done
  wait "$bench" || true
  echo "-- load tool report:"; cat "$work/burst-report.txt"
  echo "-- shifts (processor):"; curl -s "http://127.0.0.1:$proc_port/metrics" | grep '^danmaku_gear_shifts_total' || true
  stop_pipeline
}

if [ "$what" = burst ] || [ "$what" = all ]; then
  burst "gears on" benches/fanout.toml
  burst "locked in gear 1" "$work/gear1.toml"
fi
