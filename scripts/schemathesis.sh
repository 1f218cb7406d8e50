#!/usr/bin/env bash
# Fuzzes the HTTP API against its OpenAPI document (src/http/openapi.json,
# served at /openapi.json) with schemathesis: no 5xx, and every answer's
# status, content type, headers and body as documented.
#
# Installs schemathesis (pinned) into a venv under ~/.cache/danmaku-venv if
# missing, builds and starts `danmaku serve` (embedded engines) on a loopback
# port, runs schemathesis with a viewer token, the admin token and signed gift
# requests, stops the server, and exits non-zero on any failure.
#
# Usage: scripts/schemathesis.sh [extra args for `schemathesis run`]
# Env:   CARGO_TARGET_DIR (default ~/.cache/danmaku-target)
#        DANMAKU_SCHEMATHESIS_PORT (default 16390)
#        DANMAKU_SCHEMATHESIS_EXAMPLES (default 50: test cases per operation)
#        DANMAKU_SCHEMATHESIS_SEED (default: random; printed for a re-run)
#        DANMAKU_HOOK_DEBUG=FILE appends every request's status and body to FILE
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
export PATH="$HOME/.cargo/bin:$PATH"
SCHEMATHESIS_VERSION=4.32.5
venv="$HOME/.cache/danmaku-venv"
port="${DANMAKU_SCHEMATHESIS_PORT:-16390}"
examples="${DANMAKU_SCHEMATHESIS_EXAMPLES:-50}"
base="http://127.0.0.1:$port"
work="$(mktemp -d /tmp/danmaku-schemathesis.XXXXXX)"

log() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

. scripts/lib/server.sh
cleanup() {
  danmaku_stop
  rm -rf "$work"
}
trap cleanup EXIT

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "building danmaku"
cargo build --locked --bin danmaku

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "127.0.0.1:$port is already in use (set DANMAKU_SCHEMATHESIS_PORT)" >&2
  exit 1
fi

export DANMAKU_ADMIN_TOKEN="schemathesis-admin-token-0123456789"
export DANMAKU_GIFT_SECRETS="schemathesis-gift-secret-0123456789"
log "starting danmaku serve on $base"
# The development JWT secret stays (POST /v1/demo/token works only with it).
# Fuzzing posts many messages from one user and address, and holds polls:
# generous rate limits and a short poll hold keep every case fast.
danmaku_start "$CARGO_TARGET_DIR/debug/danmaku" "$port" "$work/server.log" \
  DANMAKU_ADMIN_TOKEN="$DANMAKU_ADMIN_TOKEN" DANMAKU_GIFT_SECRETS="$DANMAKU_GIFT_SECRETS" \
  DANMAKU_INGEST__USER_RATE_PER_S=100000 DANMAKU_INGEST__USER_BURST=100000 \
  DANMAKU_INGEST__IP_RATE_PER_S=100000 DANMAKU_INGEST__IP_BURST=100000 \
  DANMAKU_POLL__MAX_WAIT_MS=200 DANMAKU_POLL__DEFAULT_WAIT_MS=100 \
  DANMAKU_ARCHIVE__SETTLE_MS=0 DANMAKU_ARCHIVE__POLL_INTERVAL_MS=100 \
  DANMAKU_LOG="${DANMAKU_LOG:-warn}"

DANMAKU_VIEWER_TOKEN="$(curl -sf -X POST "$base/v1/demo/token" -d '{"name":"fuzz"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
export DANMAKU_VIEWER_TOKEN

# An archived live with a message, so replay reads reach the archive (the
# hook sends valid-room replay and lives cases to this room).
export DANMAKU_REPLAY_ROOM=fuzzreplay
admin_post() { curl -sf -o /dev/null -X POST -H "Authorization: Bearer $DANMAKU_ADMIN_TOKEN" "$base$1"; }
admin_post "/v1/admin/rooms/$DANMAKU_REPLAY_ROOM/live/start"
curl -sf -o /dev/null -X POST -H "Authorization: Bearer $DANMAKU_VIEWER_TOKEN" \
  "$base/v1/rooms/$DANMAKU_REPLAY_ROOM/danmaku" -d '{"client_msg_id":"r1","text":"replayed"}'
sleep 0.5
admin_post "/v1/admin/rooms/$DANMAKU_REPLAY_ROOM/live/end"
for _ in $(seq 1 100); do
  curl -sf "$base/v1/rooms/$DANMAKU_REPLAY_ROOM/replay" | grep -q replayed && break
  sleep 0.1
done
curl -sf "$base/v1/rooms/$DANMAKU_REPLAY_ROOM/replay" | grep -q replayed ||
  { echo "the replay fixture was not archived" >&2; exit 1; }

# Credentials go in per operation, unless the case is a negative one for its
# headers (then the generated, invalid ones are sent: 401 is documented).
cat >"$work/hooks.py" <<'EOF'
import hashlib
import hmac
import json
import os
import re
import time

import schemathesis
from schemathesis.core.parameters import ParameterLocation

VIEWER = os.environ["DANMAKU_VIEWER_TOKEN"]
ADMIN = os.environ["DANMAKU_ADMIN_TOKEN"]
GIFT_SECRET = os.environ["DANMAKU_GIFT_SECRETS"].encode()
REPLAY_ROOM = os.environ["DANMAKU_REPLAY_ROOM"]


def raw_body(case):
    """The bytes the transport would send, so the signature covers exactly them."""
    kwargs = case.as_transport_kwargs()
    if "data" in kwargs:
        data = kwargs["data"]
        return data if isinstance(data, bytes) else str(data).encode()
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    return b""


@schemathesis.hook
def before_call(ctx, case, kwargs):
    path = case.operation.path
    if path.endswith(("/replay", "/lives")) and not (
        case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
    ):
        case.path_parameters = {**(case.path_parameters or {}), "room": REPLAY_ROOM}
    headers = dict(case.headers or {})
    meta = case.meta
    if meta is not None and meta.is_negative_at(ParameterLocation.HEADER):
        # Sign anyway when the signature headers are well-formed: then the
        # mutation is elsewhere (Idempotency-Key) and should reach the handler.
        signed = re.fullmatch(r"[0-9]{1,19}", headers.get("X-Timestamp", "")) and re.fullmatch(
            r"v2=[0-9a-fA-F]{64}", headers.get("X-Signature", "")
        )
        if not signed:
            return
    if path.startswith("/v1/admin/"):
        headers["Authorization"] = f"Bearer {ADMIN}"
    elif path.endswith("/danmaku"):
        headers["Authorization"] = f"Bearer {VIEWER}"
    elif path.endswith("/events") or path.endswith("/events:batch"):
        # v2 (DESIGN.md §4): the MAC covers timestamp, method, the request
        # path, the Idempotency-Key (empty line for a batch) and the body.
        body = raw_body(case)
        ts = str(int(time.time()))
        key = "" if path.endswith("/events:batch") else headers.get("Idempotency-Key", "")
        canonical = "\n".join([ts, case.method.upper(), case.formatted_path, str(key)]).encode()
        mac = hmac.new(GIFT_SECRET, canonical + b"\n" + body, hashlib.sha256).hexdigest()
        headers["X-Timestamp"] = ts
        headers["X-Signature"] = f"v2={mac}"
        kwargs["data"] = body
    else:
        return
    case.headers = headers


if os.environ.get("DANMAKU_HOOK_DEBUG"):

    @schemathesis.hook
    def after_call(ctx, case, response):
        meta = case.meta
        comps = {k.name: v.mode.value for k, v in meta.components.items()} if meta else None
        with open(os.environ["DANMAKU_HOOK_DEBUG"], "a") as f:
            f.write(f"{response.status_code} {case.method} {case.formatted_path} {comps} "
                    f"{case.headers} {response.text[:150]!r}\n")
EOF

cat >"$work/schemathesis.toml" <<EOF
hooks = "$work/hooks.py"
# One worker: concurrent workers hit a CPython 3.11 ast.parse thread-safety
# bug inside hypothesis ("AST constructor recursion depth mismatch").
workers = 1
request-timeout = 10
# SSE never ends: read the hello event only.
max-stream-events = 1

[generation]
max-examples = $examples
database = "none"
EOF

seed_args=()
if [ -n "${DANMAKU_SCHEMATHESIS_SEED:-}" ]; then
  seed_args=(--seed "$DANMAKU_SCHEMATHESIS_SEED")
fi

log "schemathesis run $base/openapi.json ($examples examples per operation)"
status=0
# From $work: schemathesis keeps its cache in ./.schemathesis.
(cd "$work" && timeout 600 "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" --no-color run \
  "$base/openapi.json" --url "$base" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  "${seed_args[@]}" "$@") || status=$?

if ! kill -0 "$danmaku_server_pid" 2>/dev/null; then
  echo "danmaku serve died during the run" >&2
  status=1
fi
if grep -q 'panicked' "$work/server.log"; then
  echo "danmaku serve panicked during the run:" >&2
  grep -A5 'panicked' "$work/server.log" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "--- server log (last 50 lines)" >&2
  tail -n 50 "$work/server.log" >&2
  exit "$status"
fi
log "schemathesis: no failures"
