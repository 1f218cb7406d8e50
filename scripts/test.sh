#!/usr/bin/env bash
# Runs every test. Installs what the tests need if it is missing (Debian
# packages, the tansu Kafka-compatible broker), starts it on loopback ports,
# runs lint and all test suites (embedded engines, then the same integration
# suite on Redis), and stops the services again on exit.
#
# Usage: scripts/test.sh [extra args for cargo test's test binaries]
# Env:   CARGO_TARGET_DIR (default ~/.cache/danmaku-target, outside the clone)
#        DANMAKU_TEST_PORT_BASE (default 16300): services use BASE..BASE+9
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
base="${DANMAKU_TEST_PORT_BASE:-16300}"
redis_port=$((base + 0))
kafka_port=$((base + 2))
work="$(mktemp -d /tmp/danmaku-test.XXXXXX)"
pids=()

log() { printf '\n== %s\n' "$*"; }

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# tansu: an Apache Kafka-compatible broker, built once into ~/.cargo/bin.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null; then
  log "installing tansu (Kafka-compatible broker; ~10 minutes, once per machine)"
  cargo install tansu --locked --features dynostore
fi

wait_port() { # name port seconds
  for _ in $(seq 1 $(($3 * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not open 127.0.0.1:$2 in $3 s" >&2
  return 1
}

log "starting redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_port redis "$redis_port" 20

log "starting tansu on 127.0.0.1:$kafka_port"
tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" \
  --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
wait_port tansu "$kafka_port" 60

export DANMAKU_REQUIRE_SERVICES=1
export DANMAKU_TEST_KAFKA_BROKERS="127.0.0.1:$kafka_port"
export DANMAKU_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"

log "format and lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

log "tests: unit + integration on the embedded engines + engine suites"
cargo test --all-targets --locked -- --include-ignored "$@"

log "integration suite again with the Redis live store"
DANMAKU_TEST_ENGINE=redis cargo test --locked --test embedded_api --test priority -- --include-ignored "$@"

log "all tests passed"
