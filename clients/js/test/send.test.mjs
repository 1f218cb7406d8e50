// Sending: resolves on the server's ack (over the socket, or HTTP without
// one), rejects with the server's error code, renews a refused token once.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DanmakuClient, DanmakuError } from "../dist/index.js";
import { demoToken, freshRoom, joined, sleep, until } from "./helpers.mjs";

for (const [kind, via] of [["ws", "ws"], ["sse", "http"], ["poll", "http"]]) {
  test(`${kind}: send() resolves with the ack (via ${via}) and the message arrives once`, async (t) => {
    const room = freshRoom(`send-${kind}`);
    const token = await demoToken("sender");
    const { client, rec } = await joined(t, DanmakuClient, { room, token, transports: [kind] }, kind);
    const ack = await client.send("hello through the SDK", { style: { color: "#ff8800", mode: "top" } });
    assert.equal(ack.via, via);
    assert.match(ack.id, /\S+/);
    assert.match(ack.clientMsgId, /\S+/);
    await until(() => rec.messages.some((m) => m.id === ack.id), "the sent message on the stream");
    await sleep(300);
    const mine = rec.messages.filter((m) => m.id === ack.id);
    assert.equal(mine.length, 1);
    assert.equal(mine[0].text, "hello through the SDK");
    assert.equal(mine[0].user.name, "sender");
    assert.deepEqual(mine[0].style, { color: "#ff8800", mode: "top" });
  });
}

for (const kind of ["ws", "sse"]) {
  test(`${kind}: a refused message rejects with the server's code (blocked word, empty text)`, async (t) => {
    const room = freshRoom(`refuse-${kind}`);
    const token = await demoToken("refused");
    const { client, rec } = await joined(t, DanmakuClient, { room, token, transports: [kind] }, kind);
    await assert.rejects(client.send("this has a forbiddenword in it"), (e) => {
      assert.ok(e instanceof DanmakuError);
      assert.equal(e.code, "blocked_content");
      assert.equal(e.source, "server");
      if (kind === "sse") assert.equal(e.status, 400);
      return true;
    });
    await assert.rejects(client.send("   "), (e) => e instanceof DanmakuError && e.code === "empty_text");
    // The connection is unharmed: the next send goes through.
    const ok = await client.send("fine words");
    await until(() => rec.messages.some((m) => m.id === ok.id), "the accepted message");
    assert.equal(rec.messages.length, 1, "refused messages never reach viewers");
  });
}

test("the same clientMsgId sent twice is stored once", async (t) => {
  const room = freshRoom("dedup");
  const token = await demoToken("twice");
  const { client, rec } = await joined(t, DanmakuClient, { room, token, transports: ["ws"] }, "ws");
  const a = await client.send("only once", { clientMsgId: "fixed-id-1" });
  const b = await client.send("only once", { clientMsgId: "fixed-id-1" });
  assert.equal(a.id, b.id);
  await until(() => rec.messages.length >= 1, "the message");
  await sleep(400);
  assert.equal(rec.messages.length, 1);
});

for (const kind of ["ws", "sse"]) {
  test(`${kind}: a refused token is renewed once through the token function`, async (t) => {
    const room = freshRoom(`renew-${kind}`);
    const good = await demoToken("renewer");
    const asked = [];
    const token = ({ renew }) => {
      asked.push(renew);
      return renew ? good : "not-a-valid-token";
    };
    const { client } = await joined(t, DanmakuClient, { room, token, transports: [kind] }, kind);
    const ack = await client.send("after a renewal");
    assert.deepEqual(asked, [false, true]);
    assert.match(ack.id, /\S+/);
    // A plain string cannot be renewed: the refusal reaches the caller.
    await assert.rejects(client.send("x", { token: "not-a-valid-token" }), (e) => e.code === "invalid_token");
  });
}

test("setToken() renews the socket's authentication with an auth frame", async (t) => {
  const room = freshRoom("set-token");
  const { client, rec } = await joined(t, DanmakuClient, { room, token: await demoToken("first"), transports: ["ws"] }, "ws");
  const a = await client.send("as first");
  await client.setToken(await demoToken("second"));
  const b = await client.send("as second");
  assert.equal(b.via, "ws");
  await until(() => rec.messages.length >= 2, "both messages");
  assert.deepEqual(rec.messages.map((m) => [m.id, m.user.name]), [[a.id, "first"], [b.id, "second"]]);
  await assert.rejects(client.setToken("garbage"), (e) => e.code === "invalid_token" && e.source === "server");
});

test("send() without a token is refused before asking the server", async (t) => {
  const { client } = await joined(t, DanmakuClient, { room: freshRoom("no-token"), transports: ["sse"] }, "sse");
  await assert.rejects(client.send("hi"), (e) => e.code === "missing_token" && e.source === "client");
});
