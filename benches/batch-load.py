#!/usr/bin/env python3
"""Posts signed system events into one room through `events:batch` (the gift
backend's path: one request per BATCH events, signature v2, docs/protocol.md
§9), paced to RATE events/s for SECONDS, on one keep-alive connection.
Prints what the server accepted. Loopback only; bounded in time.

Usage: batch-load.py URL ROOM RATE SECONDS [BATCH]
Env:   DANMAKU_GIFT_SECRET (default: the development secret)
"""
import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.parse

DEV_SECRET = "danmaku-dev-gift-secret-not-for-production"
# Short mixed-language lines, as danmaku are (the archive's size per row
# depends on them).
TEXTS = ["哈哈哈哈哈", "前方高能！", "awsl", "这波操作666", "GG wp", "主播好厉害",
         "第一次来，关注了", "lol that was close", "弹幕护体", "好听！再来一首",
         "2333333", "nice shot!", "泪目了", "谢谢老板的火箭", "来了来了"]


def main():
    url, room, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    target = urllib.parse.urlsplit(url)
    if target.hostname not in ("127.0.0.1", "localhost") and not target.hostname.startswith("127."):
        sys.exit("batch-load.py: loopback targets only")
    secret = os.environ.get("DANMAKU_GIFT_SECRET", DEV_SECRET).encode()
    path = f"/v1/rooms/{room}/events:batch"
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    run = f"{os.getpid()}-{int(time.time())}"
    sent = accepted = refused = failed = 0
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate)  # events that should have gone by now
        if sent >= due:
            time.sleep(min(0.005, (sent + 1) / rate - elapsed))
            continue
        n = min(batch, max(1, due - sent))
        events = [
            {"idempotency_key": f"b{run}-{sent + i}", "kind": "system",
             "user": {"id": "ops", "name": "Ops"}, "text": TEXTS[(sent + i) % len(TEXTS)]}
            for i in range(n)
        ]
        body = json.dumps({"events": events}, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        canonical = f"{ts}\nPOST\n{path}\n\n".encode() + body
        sig = "v2=" + hmac.new(secret, canonical, hashlib.sha256).hexdigest()
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json",
                                              "X-Timestamp": ts, "X-Signature": sig})
            resp = conn.getresponse()
            answer = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            failed += n
            sent += n
            continue
        if resp.status == 207:
            results = json.loads(answer)["results"]
            ok = sum(1 for r in results if r["status"] == 202)
            accepted += ok
            refused += len(results) - ok
        else:
            refused += n
        sent += n
    took = time.monotonic() - start
    print(f"events:batch: sent {sent} in {took:.1f} s; accepted {accepted} "
          f"({accepted / took:.0f}/s), refused {refused}, failed {failed}")


if __name__ == "__main__":
    main()
