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

port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
work="$(mktemp -d /tmp/danmaku-js-client.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

admin_token="js-client-test-admin-$(date +%s)-$$"
: > "$work/config.toml"
echo "== starting $bin on 127.0.0.1:$port (log: $out/server.log)"
(
  # The embedded defaults (memory store and bus, development secrets: demo
  # tokens), none of the caller's DANMAKU_* settings, plus what the tests need.
  for v in $(compgen -e | grep '^DANMAKU_' || true); do unset "$v"; done
  export DANMAKU_ADMIN_TOKEN="$admin_token"         # retractions
  export DANMAKU_INGEST__BLOCKED_WORDS="forbiddenword" # a refusal with a code
  # Every test posts from 127.0.0.1: the per-address limit would get in the way.
  export DANMAKU_INGEST__IP_RATE_PER_S=10000 DANMAKU_INGEST__IP_BURST=10000
  export DANMAKU_INGEST__USER_RATE_PER_S=1000 DANMAKU_INGEST__USER_BURST=1000
  export DANMAKU_FANOUT__PING_S=1 # SSE keep-alive every second: the silence test can be short
  cd "$work"
  exec "$bin" serve --config "$work/config.toml" --listen "127.0.0.1:$port"
) >"$out/server.log" 2>&1 &
server_pid=$!
up=""
for _ in $(seq 1 200); do
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' \
    "http://127.0.0.1:$port/healthz" 2>/dev/null; then
    up=1
    break
  fi
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "the server did not start; log:" >&2
  cat "$out/server.log" >&2
  exit 1
fi

# Node 20 has a global WebSocket only behind a flag (22 and later: always).
flags=()
if [ "$(node -e 'console.log(typeof WebSocket)')" = "undefined" ]; then flags+=(--experimental-websocket); fi

echo "== node --test"
# The embedded development gift secret (config/default.toml): the signature test posts with it.
DANMAKU_URL="http://127.0.0.1:$port" DANMAKU_TEST_ADMIN_TOKEN="$admin_token" \
  DANMAKU_TEST_GIFT_SECRET="danmaku-dev-gift-secret-not-for-production" \
  node "${flags[@]}" --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
