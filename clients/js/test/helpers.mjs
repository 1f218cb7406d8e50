// Shared by the SDK tests: the server test.sh started, viewers posting
// through its API, a moderator retracting, a loopback proxy that can drop
// connections, and a recorder of what a client emitted.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import net from "node:net";

export const BASE = (process.env.DANMAKU_URL || "").replace(/\/$/, "");
assert.ok(BASE, "DANMAKU_URL is not set: run clients/js/test.sh (it starts the server)");
const ADMIN = process.env.DANMAKU_TEST_ADMIN_TOKEN || "";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let roomNo = 0;
/** A room of its own for each test. */
export const freshRoom = (what) => `js-${what}-${process.pid}-${Date.now().toString(36)}-${roomNo++}`;

/** Options every test client shares: quick backoff, WebSocket from Node's global. */
export const FAST = { backoff: { baseMs: 50, capMs: 400 }, helloTimeoutMs: 3000, onlineRefreshMs: 0 };

export async function demoToken(name) {
  const r = await fetch(`${BASE}/v1/demo/token`, { method: "POST", body: JSON.stringify({ name }) });
  assert.equal(r.status, 200, `demo token: ${r.status}`);
  return (await r.json()).token;
}

/** Posts a danmaku as a demo viewer straight to the server (not through the SDK). → id */
export async function post(room, text, name = "poster") {
  const token = await demoToken(name);
  const r = await fetch(`${BASE}/v1/rooms/${room}/danmaku`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ client_msg_id: crypto.randomUUID(), text }),
  });
  const j = await r.json();
  assert.equal(r.status, 202, `post: ${r.status} ${JSON.stringify(j)}`);
  return j.id;
}

/** Posts n messages one after another; → their ids in order. */
export async function postMany(room, n, prefix) {
  const ids = [];
  for (let i = 0; i < n; i++) ids.push(await post(room, `${prefix} ${i}`, `user${i % 3}`));
  return ids;
}

/** Retracts a message as the operator (admin token from test.sh). */
export async function retract(room, id) {
  assert.ok(ADMIN, "DANMAKU_TEST_ADMIN_TOKEN is not set (test.sh sets it)");
  const r = await fetch(`${BASE}/v1/admin/rooms/${room}/messages/${id}`, {
    method: "DELETE",
    headers: { authorization: `Bearer ${ADMIN}` },
  });
  assert.equal(r.status, 200, `retract: ${r.status} ${await r.text()}`);
}

/** Waits until `cond()` is truthy (checked every 20 ms); fails with `what` after `ms`. */
export async function until(cond, what, ms = 10000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
    await sleep(20);
  }
}

/** Everything a client emits, in order. */
export function record(client) {
  const r = { messages: [], history: [], live: [], retracted: [], resets: [], gaps: [], states: [], events: [] };
  client.on("messages", (list, info) => {
    for (const m of list) {
      r.messages.push(m);
      r[info.source].push(m);
    }
    r.events.push(`messages:${info.source}:${list.length}`);
  });
  client.on("retract", (ids) => {
    r.retracted.push(...ids);
    r.events.push(`retract:${ids.length}`);
  });
  client.on("reset", (info) => {
    r.resets.push(info);
    r.events.push("reset");
  });
  client.on("gap", (info) => r.gaps.push(info));
  client.on("state", (s) => r.states.push(s));
  r.ids = () => r.messages.map((m) => m.id);
  r.isOpen = (kind) => client.state && client.state.state === "open" && (!kind || client.state.transport === kind);
  return r;
}

/** Ids each once, in the order given, and seqs rising: what a viewer must see. */
export function assertExactly(rec, ids, what) {
  assert.deepEqual(rec.ids(), ids, `${what}: every message once, in order`);
  const seqs = rec.messages.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `${what}: seqs rise: ${seqs}`);
}

/**
 * A loopback TCP proxy in front of the server: `cut()` drops every open
 * connection (a network failure as the client sees it), `block()` refuses
 * new ones until `unblock()`, `stall()` turns the open ones and every new
 * one into black holes (open, nothing passes: a dead network path) until
 * `unstall()`; `requests` holds every HTTP request line seen.
 */
export async function startProxy() {
  const target = new URL(BASE);
  const conns = new Set(); // {client, upstream, stalled}
  const requests = [];
  let blocked = false;
  let stalling = false;
  const server = net.createServer((client) => {
    if (blocked) return client.destroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    const conn = { client, upstream, stalled: stalling };
    conns.add(conn);
    client.on("data", (d) => {
      if (conn.stalled) return;
      for (const m of d.toString("latin1").matchAll(/^(GET|POST|DELETE|PUT) (\S+) HTTP\/1\.1\r$/gm)) requests.push(`${m[1]} ${m[2]}`);
      upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (!conn.stalled) client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      conns.delete(conn);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    block() {
      blocked = true;
    },
    unblock() {
      blocked = false;
    },
    stall() {
      stalling = true;
      for (const c of conns) c.stalled = true;
    },
    unstall() {
      stalling = false;
    },
    /** Drops every open connection; → how many were open. */
    cut() {
      const n = conns.size;
      for (const c of [...conns]) {
        c.client.destroy();
        c.upstream.destroy();
      }
      return n;
    },
    close() {
      blocked = true;
      for (const c of [...conns]) {
        c.client.destroy();
        c.upstream.destroy();
      }
      return new Promise((r) => server.close(r));
    },
  };
}

/** A loopback port nothing listens on (connections are refused). */
export async function refusedPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * A started client (closed when the test ends) and its recorder; waits
 * until it is open on `waitOpen` (a transport kind, `true` for any, `false`: do not wait).
 */
export async function joined(t, DanmakuClient, options, waitOpen = true) {
  const client = new DanmakuClient({ baseUrl: BASE, ...FAST, ...options });
  t.after(() => client.close());
  const rec = record(client);
  await client.start();
  if (waitOpen) {
    const kind = typeof waitOpen === "string" ? waitOpen : undefined;
    await until(() => rec.isOpen(kind), () => `open on ${kind || "any transport"}; states: ${JSON.stringify(rec.states)}`);
  }
  return { client, rec };
}
