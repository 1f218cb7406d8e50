"""A viewer on the Python `websockets` library (Debian's python3-websockets)
with permessage-deflate: run by tests/python_websockets.rs against a real
server. It connects offering compression (the library's default), prints one
JSON line once the hello arrived (what was negotiated), then reads batch
frames until it has N messages and prints a second line: the messages in the
order received, and how many data frames came compressed (RSV1), counted
where the library inflates them.

Usage: ws_deflate_client.py URL N TIMEOUT_S
"""

import asyncio
import json
import sys

import websockets
from websockets.extensions import permessage_deflate

compressed_frames = 0
_decode = permessage_deflate.PerMessageDeflate.decode


def _counting_decode(self, frame, *, max_size=None):
    global compressed_frames
    if frame.rsv1:
        compressed_frames += 1
    return _decode(self, frame, max_size=max_size)


permessage_deflate.PerMessageDeflate.decode = _counting_decode


async def main(url, n, timeout_s):
    async with websockets.connect(url, compression="deflate", max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        print(
            json.dumps(
                {
                    "hello": hello,
                    "extensions": [type(e).__name__ for e in ws.extensions],
                    "answer": ws.response_headers.get("Sec-WebSocket-Extensions"),
                }
            ),
            flush=True,
        )
        messages = []
        batches = 0

        async def read():
            nonlocal batches
            while len(messages) < n:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "batch":
                    batches += 1
                    messages.extend(frame["messages"])

        try:
            await asyncio.wait_for(read(), timeout_s)
        except asyncio.TimeoutError:
            pass
        print(
            json.dumps(
                {
                    "messages": [{"seq": m["seq"], "text": m["text"]} for m in messages],
                    "batches": batches,
                    "compressed_frames": compressed_frames,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
