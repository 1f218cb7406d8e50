// WebSocket: hello, then batch, retract and online frames; the client's own frames
// (send, auth, ping) are answered in order among them.

import { parseFrame, type Transport } from "./types.js";

export const websocket: Transport = (ctx, cb) => {
  const Impl = ctx.WebSocket;
  let ws: import("../types.js").WebSocketLike;
  try {
    if (!Impl) throw new Error("no WebSocket implementation");
    ws = new Impl(ctx.url("ws"));
  } catch (e) {
    const reason = `WebSocket unavailable: ${(e as Error).message}`;
    setTimeout(() => cb.down(reason), 0);
    return { close() {} };
  }
  let done = false;
  const stop = () => {
    done = true;
    clearInterval(pinger);
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch {
      // already closed
    }
  };
  let heard = Date.now();
  // Keeps the socket from the server's idle cut while the viewer only
  // watches; the pong it gets shows the connection is alive.
  const pinger = setInterval(() => {
    if (Date.now() - heard > ctx.silentAfterMs) {
      stop();
      cb.down("connection silent");
    } else if (ws.readyState === 1) ws.send('{"type":"ping"}');
  }, Math.min(ctx.pingIntervalMs, ctx.silentAfterMs / 2));
  ws.onmessage = (ev) => {
    heard = Date.now();
    if (done || typeof ev.data !== "string") return;
    const m = parseFrame(ev.data);
    if (!m) return;
    if (m.type === "hello") cb.hello(m as any);
    else if (m.type === "batch") cb.batch(m as any);
    else if (m.type === "retract") cb.retract(Array.isArray(m.ids) ? m.ids : []);
    else if (m.type === "online") {
      if (typeof m.online === "number") cb.online(m.online);
    }
    else cb.reply(m);
  };
  ws.onclose = (ev) => {
    if (done) return;
    stop();
    cb.down(ev.reason ? `closed (${ev.code}): ${ev.reason}` : `closed (${ev.code})`);
  };
  ws.onerror = () => {
    // a close event follows
  };
  return {
    close: stop,
    send(frame) {
      if (done || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(frame));
      return true;
    },
  };
};
