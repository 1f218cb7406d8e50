#!/usr/bin/env bash
# Checks the operator files in deploy/:
#   1. promtool check rules  deploy/prometheus/alerts.yml
#   2. promtool test rules   deploy/prometheus/alerts_test.yml
#   3. the Grafana dashboard is valid JSON with a Prometheus datasource variable
#   4. every metric name the dashboard, the rules and the rule tests use is one
#      the server exports: a real server (DANMAKU_BIN) is started on a free
#      loopback port with embedded engines, fed a few messages so series exist,
#      and its /metrics compared (deploy/metric_names.py).
# Exit status 0 only if all pass. promtool comes from Debian's `prometheus`
# package, installed with apt-get when missing (needs root or sudo).
#
#   DANMAKU_BIN   server binary (default $CARGO_TARGET_DIR/debug/danmaku,
#                 CARGO_TARGET_DIR default ~/.cache/danmaku-target)
set -euo pipefail

cd "$(dirname "$0")/.."
DEPLOY=deploy
RULES=$DEPLOY/prometheus/alerts.yml
RULES_TEST=$DEPLOY/prometheus/alerts_test.yml
DASHBOARD=$DEPLOY/grafana/danmaku.json
BIN=${DANMAKU_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}/debug/danmaku}

fail() {
  echo "deploy/check.sh: $*" >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# --- tools -------------------------------------------------------------------
if ! command -v promtool >/dev/null; then
  echo "== installing promtool (Debian package prometheus)"
  apt_install prometheus
fi
PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  apt_install python3-yaml
  PY=/usr/bin/python3
fi
command -v curl >/dev/null || apt_install curl

WORK=$(mktemp -d)
. scripts/lib/server.sh
cleanup() {
  danmaku_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1, 2: rules ---------------------------------------------------------------
echo "== promtool check rules $RULES"
promtool check rules "$RULES"
echo "== promtool test rules $RULES_TEST"
promtool test rules "$RULES_TEST"

# --- 3: dashboard --------------------------------------------------------------
echo "== dashboard $DASHBOARD"
"$PY" -m json.tool "$DASHBOARD" >/dev/null || fail "$DASHBOARD is not valid JSON"
"$PY" - "$DASHBOARD" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
problems = []
for key in ("title", "uid", "panels", "templating", "schemaVersion"):
    if key not in d:
        problems.append(f"no {key!r}")
ds = [v for v in d.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
if not any(v.get("name") == "DS_PROMETHEUS" and v.get("query") == "prometheus" for v in ds):
    problems.append("no datasource variable DS_PROMETHEUS of type prometheus")
ids = set()
for p in d.get("panels", []):
    if p.get("id") in ids:
        problems.append(f"panel id {p.get('id')} twice")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        problems.append(f"panel {p.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        problems.append(f"panel {p.get('title')!r}: no queries")
    for t in p.get("targets", []):
        if not t.get("expr"):
            problems.append(f"panel {p.get('title')!r}: a query without expr")
if problems:
    sys.exit("dashboard: " + "; ".join(problems))
print(f"dashboard: {sum(1 for p in d['panels'] if p.get('type') != 'row')} panels, valid")
EOF
# Every panel query must parse as PromQL: promtool checks them as recording
# rules, Grafana's variables replaced by values they could take.
"$PY" - "$DASHBOARD" >"$WORK/dashboard_queries.yml" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
values = {"${DS_PROMETHEUS}": "x", "$__rate_interval": "5m", "$__interval": "1m",
          "$instance": ".*", "$bus_cap": "80000"}
print("groups:\n  - name: dashboard\n    rules:")
n = 0
for p in d["panels"]:
    for t in p.get("targets", []):
        expr = t["expr"]
        for k, v in values.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            sys.exit(f"dashboard: panel {p['title']!r}: unknown variable in {t['expr']!r}")
        n += 1
        print(f"      - record: dashboard_query_{n}\n        expr: {json.dumps(expr)}")
EOF
promtool check rules "$WORK/dashboard_queries.yml" >/dev/null ||
  fail "a dashboard query is not valid PromQL (promtool says which, above)"
echo "dashboard: every query parses"

# --- 4: metric names against a running server ---------------------------------
PORT=$(danmaku_free_port)
URL=http://127.0.0.1:$PORT
echo "== metric names: $BIN on 127.0.0.1:$PORT (embedded engines)"
# The embedded defaults: no DANMAKU_* of the caller's may select Redis or Kafka.
danmaku_start "$BIN" "$PORT" "$WORK/server.log" DANMAKU_LOG=warn ||
  fail "the server did not start"
curl -fs "$URL/healthz" >/dev/null || fail "the server did not answer /healthz"

# Traffic so that series exist: a viewer token; a WebSocket, an SSE stream and
# a long-poll held open; danmaku (one retried, one refused); a signed gift; a
# snapshot.
post() { curl -s -o /dev/null -m 5 -X POST "$@"; }
TOKEN=$(curl -fs -m 5 -X POST "$URL/v1/demo/token" -d '{"name":"check"}' |
  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["token"])')
"$PY" - "$PORT" <<'WS' &
import base64, os, socket, sys, time
# A bare WebSocket viewer: the handshake, then it reads frames for 3 s.
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /v1/rooms/check/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
end = time.time() + 3
while time.time() < end:
    try:
        if not s.recv(65536):
            break
    except socket.timeout:
        pass
WS
WS_PID=$!
curl -s -N -m 3 "$URL/v1/rooms/check/sse" >/dev/null &
SSE_PID=$!
curl -s -m 3 "$URL/v1/rooms/check/poll?wait_ms=2500" >/dev/null &
POLL_PID=$!
sleep 0.5
for body in '{"client_msg_id":"c1","text":"hello"}' '{"client_msg_id":"c1","text":"hello"}' \
  '{"client_msg_id":"c2","text":"\u202eevil"}'; do
  post "$URL/v1/rooms/check/danmaku" -H "Authorization: Bearer $TOKEN" -d "$body"
done
GIFT='{"kind":"gift","user":{"id":"u9","name":"Bob"},"gift":{"gift_id":"rocket","count":1,"value":1}}'
SIGNED=$("$PY" - "$GIFT" <<'EOF'
import hashlib, hmac, sys, time
ts = str(int(time.time()))
canonical = "\n".join([ts, "POST", "/v1/rooms/check/events", "check-1", sys.argv[1]])
mac = hmac.new(b"danmaku-dev-gift-secret-not-for-production", canonical.encode(), hashlib.sha256)
print(ts, "v2=" + mac.hexdigest())
EOF
)
post "$URL/v1/rooms/check/events" -H "X-Timestamp: ${SIGNED% *}" -H "X-Signature: ${SIGNED#* }" \
  -H "Idempotency-Key: check-1" -d "$GIFT"
sleep 0.5 # the WebSocket is in step now: the hub writes the next frame to it itself
post "$URL/v1/rooms/check/danmaku" -H "Authorization: Bearer $TOKEN" -d '{"client_msg_id":"c3","text":"again"}'
sleep 1.5 # a few hub ticks, the processor's writes
curl -s -o /dev/null -m 5 "$URL/v1/rooms/check/snapshot"
curl -fs -m 5 "$URL/metrics" >"$WORK/metrics.txt" || fail "GET /metrics failed"
wait "$WS_PID" "$SSE_PID" "$POLL_PID" 2>/dev/null || true

"$PY" "$DEPLOY/metric_names.py" src "$WORK/metrics.txt" "$RULES" "$RULES_TEST" "$DASHBOARD"
echo "deploy/check.sh: all checks passed"
