// Joining shows the room's recent messages once, then the stream goes on
// from there; moderators' retractions reach every transport as retract events.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DanmakuClient } from "../dist/index.js";
import { assertExactly, freshRoom, joined, post, postMany, retract, sleep, until } from "./helpers.mjs";

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: history on join shows earlier messages once, then the live ones`, async (t) => {
    const room = freshRoom(`history-${kind}`);
    const earlier = await postMany(room, 4, "before you joined");
    await sleep(300); // stored
    const { rec } = await joined(t, DanmakuClient, { room, transports: [kind] }, kind);
    await until(() => rec.history.length >= 4, () => `4 history messages, have ${rec.history.length}`);
    assert.equal(rec.events[0], "messages:history:4", `history first: ${rec.events}`);
    const later = await postMany(room, 2, "after you joined");
    await until(() => rec.messages.length >= 6, "6 messages");
    await sleep(400);
    assertExactly(rec, [...earlier, ...later], `${kind} history then live`);
    assert.deepEqual(rec.live.map((m) => m.id), later);
  });
}

test("history: a message posted while joining is shown once (snapshot and stream overlap)", async (t) => {
  const room = freshRoom("history-race");
  const earlier = await postMany(room, 3, "old");
  await sleep(300);
  const client = new DanmakuClient({ baseUrl: process.env.DANMAKU_URL, room, transports: ["ws"], onlineRefreshMs: 0 });
  t.after(() => client.close());
  const seen = [];
  client.on("messages", (list) => seen.push(...list.map((m) => m.id)));
  const posting = postMany(room, 5, "racing the join");
  await client.start();
  const racing = await posting;
  await until(() => seen.length >= 8, () => `8 messages, have ${seen.length}`);
  await sleep(400);
  assert.deepEqual(seen, [...earlier, ...racing]);
});

test("history: a snapshot behind its own messages (a lagging cache) shows nothing twice", async (t) => {
  const room = freshRoom("history-overlap");
  const earlier = await postMany(room, 4, "old");
  await sleep(300);
  // The snapshot's cursor says 2 messages less than it holds: the stream
  // then starts 2 messages early and sends them again; dedup by seq keeps one.
  const lagging = async (url, init) => {
    const res = await fetch(url, init);
    if (!String(url).endsWith("/snapshot") || !res.ok) return res;
    const snap = await res.json();
    return new Response(JSON.stringify({ ...snap, cursor: snap.cursor - 2 }), { status: 200 });
  };
  const { rec } = await joined(t, DanmakuClient, { room, transports: ["ws"], fetch: lagging }, "ws");
  const later = await post(room, "new");
  await until(() => rec.messages.some((m) => m.id === later), "the new message");
  await sleep(400);
  assertExactly(rec, [...earlier, later], "history then stream");
  assert.equal(rec.history.length, 4);
});

test("history off: only new messages", async (t) => {
  const room = freshRoom("no-history");
  await postMany(room, 2, "old");
  await sleep(300);
  const { rec } = await joined(t, DanmakuClient, { room, history: false, transports: ["ws"] }, "ws");
  const id = await post(room, "new");
  await until(() => rec.messages.length >= 1, "the new message");
  await sleep(300);
  assert.deepEqual(rec.ids(), [id]);
});

for (const kind of ["ws", "sse", "poll"]) {
  test(`${kind}: a retracted message is surfaced as a retract event, once`, async (t) => {
    const room = freshRoom(`retract-${kind}`);
    const { rec } = await joined(t, DanmakuClient, { room, transports: [kind] }, kind);
    const [keep, gone] = await postMany(room, 2, "retract test");
    await until(() => rec.messages.length >= 2, "both messages");
    await retract(room, gone);
    await until(() => rec.retracted.length >= 1, "a retract event");
    assert.deepEqual(rec.retracted, [gone]);
    // Long-poll answers repeat recent retractions for a minute: still one event.
    await postMany(room, 3, "more traffic");
    await until(() => rec.messages.length >= 5, "5 messages");
    await sleep(400);
    assert.deepEqual(rec.retracted, [gone], "each id once");
    assert.ok(rec.ids().includes(keep));
  });
}

test("history leaves out retracted messages", async (t) => {
  const room = freshRoom("history-retracted");
  const [a, b, c] = await postMany(room, 3, "some of these go");
  await sleep(300);
  await retract(room, b);
  await sleep(1200); // the snapshot is recomputed at most once a second
  const { rec } = await joined(t, DanmakuClient, { room, transports: ["sse"] }, "sse");
  await until(() => rec.history.length >= 2, "history");
  await sleep(300);
  assert.deepEqual(rec.ids(), [a, c]);
});
