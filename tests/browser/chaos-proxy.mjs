// A transparent loopback HTTP + WebSocket proxy in front of the real server,
// so the browser test can kill a transport route the way a network does:
// `cut(kind)` drops the open connections of that route (TCP reset as far as
// the page can tell) and `block(kind)` refuses new ones. Kinds are the viewer
// transports: "ws", "sse", "poll". Everything else passes through untouched.
// (Playwright's page.route cannot end an EventSource that is already
// streaming, and context.setOffline does not either; a proxy can.)
import http from "node:http";
import net from "node:net";

const ROUTE = /^\/v1\/rooms\/[^/]+\/(ws|sse|poll)$/;

export async function startChaosProxy(targetHost, targetPort) {
  const blocked = new Set();
  const open = { ws: new Set(), sse: new Set(), poll: new Set() };
  const requests = []; // {kind, url} of every transport request seen
  const kindOf = (url) => {
    const m = new URL(url, "http://proxy").pathname.match(ROUTE);
    return m ? m[1] : null;
  };
  const track = (kind, socket) => {
    open[kind].add(socket);
    socket.once("close", () => open[kind].delete(socket));
  };

  const server = http.createServer((req, res) => {
    const kind = kindOf(req.url);
    if (kind) requests.push({ kind, url: req.url, blocked: blocked.has(kind) });
    if (kind && blocked.has(kind)) {
      req.socket.destroy();
      return;
    }
    const up = http.request(
      { host: targetHost, port: targetPort, method: req.method, path: req.url, headers: req.headers },
      (ur) => {
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
    if (kind) track(kind, req.socket);
  });

  server.on("upgrade", (req, socket, head) => {
    const kind = kindOf(req.url);
    if (kind) requests.push({ kind, url: req.url, blocked: blocked.has(kind) });
    if (!kind || blocked.has(kind)) {
      socket.destroy();
      return;
    }
    const up = net.connect(targetPort, targetHost, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head && head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    up.on("close", () => socket.destroy());
    socket.on("error", () => up.destroy());
    socket.on("close", () => up.destroy());
    track("ws", socket);
  });

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    requests,
    block(kind) { blocked.add(kind); },
    unblock(kind) { blocked.delete(kind); },
    /** Drops every open connection of the route; returns how many. */
    cut(kind) {
      const n = open[kind].size;
      for (const s of open[kind]) s.destroy();
      return n;
    },
    openCount(kind) { return open[kind].size; },
    close() {
      for (const k of Object.keys(open)) for (const s of open[k]) s.destroy();
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
