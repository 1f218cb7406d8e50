#!/usr/bin/env bash
# The JS SDK's tests against a real server process: installs the dev
# dependencies (npm ci), compiles dist/, starts the server binary on a free
# loopback port with the embedded engines and the development secrets (demo
# tokens), runs `node --test` on test/*.test.mjs, and stops the server on
# exit. Fails if the binary is missing or the server does not come up.
#
# Usage: clients/js/test.sh
# Env:   DANMAKU_BIN (default $CARGO_TARGET_DIR/debug/danmaku; build it with
#        `cargo build --bin danmaku`), CARGO_TARGET_DIR (default ~/.cache/danmaku-target)
set -euo pipefail
cd "$(dirname "$0")"
pkg="$(pwd)"
out="$pkg/../../test-output/js-client"
mkdir -p "$out"
bin="${DANMAKU_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}/debug/danmaku}"

command -v node >/dev/null || { echo "js client tests need node (>= 20) and npm" >&2; exit 1; }
if [ ! -x "$bin" ]; then
  echo "no server binary at $bin: run \`cargo build --bin danmaku\` or set DANMAKU_BIN" >&2
  exit 1
fi

echo "== npm ci (clients/js)"
npm ci --no-audit --no-fund --loglevel=error
echo "== compiling dist/, and a user's code against its type declarations"
npx tsc -p tsconfig.json
npx tsc -p tsconfig.consumer.json

. ../../scripts/lib/server.sh
trap danmaku_stop EXIT
port="$(danmaku_free_port)"
admin_token="js-client-test-admin-$(date +%s)-$$"
echo "== starting $bin on 127.0.0.1:$port (log: $out/server.log)"
# The embedded defaults (memory store and bus, development secrets: demo
# tokens), plus what the tests need:
#   the admin token (retractions), a blocked word (a refusal with a code),
#   generous per-address and per-user limits (every test posts from 127.0.0.1),
#   SSE keep-alive every second (the silence test can be short).
danmaku_start "$bin" "$port" "$out/server.log" \
  DANMAKU_ADMIN_TOKEN="$admin_token" DANMAKU_INGEST__BLOCKED_WORDS=forbiddenword \
  DANMAKU_INGEST__IP_RATE_PER_S=10000 DANMAKU_INGEST__IP_BURST=10000 \
  DANMAKU_INGEST__USER_RATE_PER_S=1000 DANMAKU_INGEST__USER_BURST=1000 \
  DANMAKU_FANOUT__PING_S=1

# Node 20 has a global WebSocket only behind a flag (22 and later: always).
flags=()
if [ "$(node -e 'console.log(typeof WebSocket)')" = "undefined" ]; then flags+=(--experimental-websocket); fi

echo "== node --test"
# The embedded development gift secret (config/default.toml): the signature test posts with it.
DANMAKU_URL="http://127.0.0.1:$port" DANMAKU_TEST_ADMIN_TOKEN="$admin_token" \
  DANMAKU_TEST_GIFT_SECRET="danmaku-dev-gift-secret-not-for-production" \
  node "${flags[@]}" --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
