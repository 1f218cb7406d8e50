// Receiving: each transport in order without duplicates, the fallback when
// a transport is refused, exact resume after a dropped connection, and a
// reset when the stream the client held is not the room's.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DanmakuClient } from "../dist/index.js";
import { BASE, assertExactly, freshRoom, joined, post, postMany, refusedPort, sleep, startProxy, until } from "./helpers.mjs";

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: posted messages arrive in order, each once`, async (t) => {
    const room = freshRoom(`order-${kind}`);
    const { rec } = await joined(t, DanmakuClient, { room, transports: [kind] }, kind);
    const ids = await postMany(room, 12, `over ${kind}`);
    await until(() => rec.messages.length >= ids.length, () => `12 messages, have ${rec.messages.length}`);
    await sleep(400); // anything late would be a duplicate
    assertExactly(rec, ids, kind);
    assert.ok(rec.messages.every((m) => m.room === room && m.kind === "danmaku"));
    assert.equal(rec.resets.length, 0, "no reset on a fresh join");
  });
}

test("fallback: WebSocket refused → SSE, and receiving works there", async (t) => {
  const room = freshRoom("fallback-sse");
  const ws = `ws://127.0.0.1:${await refusedPort()}/v1/rooms/${room}/ws`;
  const { rec } = await joined(t, DanmakuClient, { room, urls: { ws } }, "sse");
  const tried = rec.states.map((s) => `${s.transport}:${s.state}`);
  assert.ok(tried.includes("ws:reconnecting"), `backed off on ws before falling back: ${tried}`);
  assert.ok(rec.states.some((s) => /ws failed .*falling back to sse/.test(s.detail)), "says why");
  const ids = await postMany(room, 3, "after the fallback");
  await until(() => rec.messages.length >= 3, "3 messages over SSE");
  assertExactly(rec, ids, "sse after fallback");
});

test("fallback: WebSocket and SSE refused → long-poll", async (t) => {
  const room = freshRoom("fallback-poll");
  const port = await refusedPort();
  const urls = { ws: `ws://127.0.0.1:${port}/ws`, sse: `http://127.0.0.1:${port}/sse` };
  const { rec } = await joined(t, DanmakuClient, { room, urls }, "poll");
  const ids = await postMany(room, 3, "by long-poll");
  await until(() => rec.messages.length >= 3, "3 messages by long-poll");
  assertExactly(rec, ids, "poll after fallback");
});

test("fallback: a probe switches back to WebSocket once it works again, losing nothing", async (t) => {
  const room = freshRoom("upgrade");
  const proxy = await startProxy();
  t.after(() => proxy.close());
  // WebSocket through the proxy (blocked at first), the rest straight to the server.
  const ws = `${proxy.url.replace(/^http/, "ws")}/v1/rooms/${room}/ws`;
  proxy.block();
  const { client, rec } = await joined(t, DanmakuClient, { room, urls: { ws }, upgradeProbeMs: 300 }, "sse");
  const before = await postMany(room, 2, "on sse");
  await until(() => rec.messages.length >= 2, "2 messages on SSE");
  proxy.unblock();
  await until(() => client.transport === "ws" && rec.isOpen("ws"), "back on the WebSocket");
  const after = await postMany(room, 2, "on ws");
  await until(() => rec.messages.length >= 4, "4 messages");
  await sleep(300);
  assertExactly(rec, [...before, ...after], "across the switch back");
});

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: a dropped connection resumes with exactly the missed messages`, async (t) => {
    const room = freshRoom(`resume-${kind}`);
    const proxy = await startProxy();
    t.after(() => proxy.close());
    const { rec } = await joined(t, DanmakuClient, { room, baseUrl: proxy.url, transports: [kind] }, kind);
    const first = await postMany(room, 3, "before the drop");
    await until(() => rec.messages.length >= 3, "3 messages before the drop");
    // The network fails: open connections drop, new ones are refused for a while.
    proxy.block();
    assert.ok(proxy.cut() >= 1, "a connection was open");
    const missed = await postMany(room, 5, "while disconnected");
    await until(() => rec.states.some((s) => s.state === "reconnecting"), "the client noticed");
    await sleep(300);
    const resumedFrom = proxy.requests.length;
    proxy.unblock();
    await until(() => rec.messages.length >= 8, () => `8 messages, have ${rec.messages.length}`);
    const after = await postMany(room, 2, "after the resume");
    await until(() => rec.messages.length >= 10, "10 messages");
    await sleep(400);
    assertExactly(rec, [...first, ...missed, ...after], `${kind} resume`);
    const again = proxy.requests.slice(resumedFrom).find((r) => r.includes(`/${kind}?`));
    assert.ok(again, `reconnected over ${kind}: ${proxy.requests.slice(resumedFrom)}`);
    assert.match(again, /[?&]cursor=\d+/, "with the cursor");
    assert.match(again, /[?&]epoch=/, "and the epoch");
    assert.equal(rec.resets.length, 0);
  });
}

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: a connection gone silent (dead path, no close) is noticed and resumed`, async (t) => {
    const room = freshRoom(`silent-${kind}`);
    const proxy = await startProxy();
    t.after(() => proxy.close());
    // test.sh has the server's SSE keep-alive every second; a healthy quiet stream is never silent this long.
    const opts = { room, baseUrl: proxy.url, transports: [kind], silentAfterMs: 2500, pingIntervalMs: 500, pollWaitMs: 1000 };
    const { rec } = await joined(t, DanmakuClient, opts, kind);
    const first = await postMany(room, 2, "before the stall");
    await until(() => rec.messages.length >= 2, "2 messages");
    await sleep(3000); // quiet but healthy: no reconnect
    assert.ok(!rec.states.some((s) => s.state === "reconnecting"), `a quiet stream stays: ${JSON.stringify(rec.states)}`);
    proxy.stall();
    const missed = await postMany(room, 3, "into the void");
    await until(() => rec.states.some((s) => s.state === "reconnecting"), "the client noticed the silence", 8000);
    proxy.unstall();
    await until(() => rec.messages.length >= 5, () => `5 messages, have ${rec.messages.length}`, 15000);
    await sleep(300);
    assertExactly(rec, [...first, ...missed], `${kind} after silence`);
  });
}

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: an unknown epoch is surfaced as a reset, then the room's stream from its start`, async (t) => {
    const room = freshRoom(`reset-${kind}`);
    const earlier = await postMany(room, 2, "already in the room");
    const { client, rec } = await joined(t, DanmakuClient, { room, transports: [kind], cursor: 1, epoch: "no-such-epoch" }, kind);
    await until(() => rec.resets.length >= 1, "a reset event");
    assert.equal(rec.resets[0].previousEpoch, "no-such-epoch");
    assert.notEqual(rec.resets[0].epoch, "no-such-epoch");
    assert.equal(client.position.epoch, rec.resets[0].epoch, "the client follows the room's epoch");
    await until(() => rec.messages.length >= 2, "the room's messages from the start");
    assert.equal(rec.events[0], "reset", `the reset comes first: ${rec.events}`);
    const later = await post(room, "after the reset");
    await until(() => rec.messages.length >= 3, "the next message");
    await sleep(300);
    assertExactly(rec, [...earlier, later], `${kind} after reset`);
    assert.equal(rec.resets.length, 1, "one reset");
  });
}

test("resume across clients: a saved position gets exactly what came after it", async (t) => {
  const room = freshRoom("saved");
  const first = await joined(t, DanmakuClient, { room, transports: ["ws"] }, "ws");
  const seen = await postMany(room, 2, "seen by the first client");
  await until(() => first.rec.messages.length >= 2, "2 messages");
  const { cursor, epoch } = first.client.position;
  first.client.close();
  const missed = await postMany(room, 3, "while nobody watched");
  const second = await joined(t, DanmakuClient, { room, transports: ["sse"], cursor, epoch }, "sse");
  await until(() => second.rec.messages.length >= 3, "the 3 missed messages");
  await sleep(300);
  assertExactly(second.rec, missed, "resumed from the saved position");
  assert.equal(second.rec.history.length, 0, "no history when resuming");
  assert.ok(!missed.some((id) => seen.includes(id)));
});

test("close() stops everything: no events after it, sends are refused", async (t) => {
  const room = freshRoom("close");
  const { client, rec } = await joined(t, DanmakuClient, { room, transports: ["ws"] }, "ws");
  client.close();
  assert.equal(client.state.state, "closed");
  const n = rec.states.length;
  await post(room, "nobody listens");
  await sleep(500);
  assert.equal(rec.messages.length, 0);
  assert.equal(rec.states.length, n, "no state changes after close");
  await assert.rejects(client.send("hi", { token: "x" }), (e) => e.code === "closed" && e.source === "client");
  assert.equal(BASE.startsWith("http"), true);
});
