"""Sizes of a long-poll answer and of an SSE event, plain and gzipped (level 6),
for batches of 1..100 synthetic messages shaped like the API's: BENCHMARKS.md,
"Online counts, gzip for poll/snapshot, SSE compression". Usage: python3 benches/gzip_sizes.py
"""
import gzip, json, zlib, random
random.seed(7)
texts = ["主播太强了!!!", "gg wp", "哈哈哈哈哈哈", "what a play", "666666", "来了来了", "前方高能", "awsl", "这波操作可以", "lol"]
def msg(seq):
    return {"id": "%032x" % random.getrandbits(128), "seq": seq, "room": "r1", "ts": 1765000000000 + seq,
            "kind": "danmaku", "priority": "low", "user": {"id": "u%d" % random.randint(1, 99999), "name": "viewer%d" % random.randint(1, 9999)},
            "text": random.choice(texts), "style": {"color": "#ffffff", "mode": "scroll"}}
for n in (1, 2, 5, 10, 20, 50, 100):
    batch = {"type": "batch", "room": "r1", "epoch": "k3v9x0", "cursor": 1000 + n, "messages": [msg(1000 + i) for i in range(n)], "online": 1234}
    body = json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode()
    gz = gzip.compress(body, 6)
    sse = b"id: %d\nevent: batch\ndata: " % (1000 + n) + body + b"\n\n"
    member = gzip.compress(sse, 6)
    print(f"{n:4d} msgs: body {len(body):6d} B  gzip {len(gz):6d} B ({len(gz)/len(body):.2f})  sse event {len(sse):6d} B, as its own gzip member {len(member):6d} B ({len(member)/len(sse):.2f})")
