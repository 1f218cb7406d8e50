#!/usr/bin/env bash
# End-to-end browser test of the viewer page (issue 9): builds the server,
# starts it on a free loopback port with the embedded defaults (no DANMAKU_*
# settings from the caller's environment), drives Debian's Chromium with
# playwright-core (tests/browser/live.spec.mjs) and stops the server again.
# Screenshots and the server log go to test-output/browser/.
#
# Usage: tests/browser/run.sh
# Env:   CARGO_TARGET_DIR (default ~/.cache/danmaku-target), CHROMIUM (default /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
chromium_bin="${CHROMIUM:-/usr/bin/chromium}"
out="$root/test-output/browser"
rm -rf "$out"
mkdir -p "$out"

log() { printf '\n== %s\n' "$*"; }

if [ ! -x "$chromium_bin" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "browser test needs $chromium_bin: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
command -v node >/dev/null || { echo "browser test needs node (>= 20) and npm" >&2; exit 1; }

log "npm dependencies (tests/browser)"
(
  cd tests/browser
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
)

log "building the server"
cargo build --locked --bin danmaku
bin="$CARGO_TARGET_DIR/debug/danmaku"

. scripts/lib/server.sh
trap danmaku_stop EXIT
port="$(danmaku_free_port)"
admin_token="browser-test-admin-$(date +%s)-$$"
# The embedded defaults (development secrets → demo tokens and the dev gift
# secret the test signs with), plus: admin routes on, for the retraction
# steps; one post a second per user (default 2), so the rate-limit step gets
# its refusal within a few sends even when a loaded machine slows the page.
log "starting the server on 127.0.0.1:$port"
danmaku_start "$bin" "$port" "$out/server.log" \
  DANMAKU_ADMIN_TOKEN="$admin_token" DANMAKU_INGEST__USER_RATE_PER_S=1

log "browser test (headless $("$chromium_bin" --version 2>/dev/null | head -1))"
started=$(date +%s)
status=0
DANMAKU_URL="http://127.0.0.1:$port" OUT_DIR="$out" CHROMIUM="$chromium_bin" \
  DANMAKU_TEST_ADMIN_TOKEN="$admin_token" \
  node tests/browser/live.spec.mjs || status=$?
echo "browser test took $(( $(date +%s) - started )) s; output in $out"
exit "$status"
