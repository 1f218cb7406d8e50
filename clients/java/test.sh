#!/usr/bin/env bash
# Runs the Java client's tests: unit tests (signing against tests/vectors, backoff, error
# mapping, retries against a stub) and integration tests against a real danmaku server, which
# this script starts on a free loopback port with embedded engines and two gift secrets
# (rotation), and stops on exit. Fails if the server cannot start.
#
# Usage: clients/java/test.sh [extra mvn args, e.g. -Dtest=ServerIntegrationTest]
# Env:   DANMAKU_BIN (default $CARGO_TARGET_DIR/debug/danmaku;
#        CARGO_TARGET_DIR default ~/.cache/danmaku-target)
#        DANMAKU_TEST_PORT: the server's port (default: a free one)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
bin="${DANMAKU_BIN:-$target/debug/danmaku}"

fail() { echo "clients/java/test.sh: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "no server binary at $bin (cargo build, or set DANMAKU_BIN)"
command -v javac >/dev/null || fail "javac not found (Debian: openjdk-17-jdk-headless)"
command -v mvn >/dev/null || fail "mvn not found (Debian: maven)"

free_port() {
  if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  for _ in $(seq 1 50); do # no python3: a random high port nothing answers on
    local p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  fail "no free loopback port found"
}
port="${DANMAKU_TEST_PORT:-$(free_port)}"
url="http://127.0.0.1:$port"
# Both listed at once: the rotation test signs with the first, then the second.
secrets="java-test-gift-secret-old,java-test-gift-secret-new"

work="$(mktemp -d /tmp/danmaku-java-test.XXXXXX)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_server EXIT

env DANMAKU_LISTEN="127.0.0.1:$port" \
  DANMAKU_GIFT_SECRETS="$secrets" \
  DANMAKU_JWT_SECRET="java-test-jwt-secret" \
  DANMAKU_SERVER__SHUTDOWN_GRACE_MS=500 \
  DANMAKU_LOG="${DANMAKU_LOG:-warn}" \
  "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 300); do # up to 30 s
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$work/server.log" >&2
    fail "the server exited during start-up"
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
    && [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" 2>/dev/null || true)" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  cat "$work/server.log" >&2
  fail "the server did not become ready on $url within 30 s"
fi

cd "$here"
rm -rf target/surefire-reports # the summary below counts this run only
status=0
DANMAKU_URL="$url" DANMAKU_TEST_GIFT_SECRETS="$secrets" mvn -B -q test "$@" || status=$?

# mvn -q prints nothing on success: one closing line from surefire's reports.
summary="$(command -v python3 >/dev/null && cat target/surefire-reports/TEST-*.xml 2>/dev/null | python3 -c '
import re, sys
t = f = e = s = 0
for m in re.finditer(r"<testsuite [^>]*>", sys.stdin.read()):
    a = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(0)))
    t += int(a["tests"]); f += int(a["failures"]); e += int(a["errors"]); s += int(a["skipped"])
print(f"{t - f - e - s} passed, {f + e} failed, {s} skipped")
' || true)"
echo "java-client: ${summary:-no test report}"
if [ "$status" -ne 0 ]; then
  echo "--- server log (tail)" >&2
  tail -n 50 "$work/server.log" >&2 || true
fi
exit "$status"
