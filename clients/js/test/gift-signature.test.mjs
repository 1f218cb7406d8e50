// The v2 gift signature against the vectors the server and the Java client
// test too (tests/vectors/gift_signature_v2.json), then against the server.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { canonicalGiftRequest, giftRequestHeaders, signGiftRequest } from "../dist/gift-signature.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const vectors = JSON.parse(
  fs.readFileSync(path.join(here, "../../../tests/vectors/gift_signature_v2.json"), "utf8"),
);

test("every shared vector: canonical string and signature", async () => {
  assert.ok(vectors.cases.length >= 2);
  for (const c of vectors.cases) {
    const r = {
      timestamp: c.timestamp,
      method: c.method,
      path: c.path,
      idempotencyKey: c.idempotency_key,
      body: c.body,
    };
    assert.equal(new TextDecoder().decode(canonicalGiftRequest(r)), c.canonical, c.name);
    assert.equal(await signGiftRequest(c.secret, r), c.signature, c.name);
  }
});

test("a signed gift is accepted by the server; a changed body is refused", async () => {
  const base = process.env.DANMAKU_URL;
  assert.ok(base, "DANMAKU_URL is set by test.sh");
  const secret = process.env.DANMAKU_TEST_GIFT_SECRET;
  assert.ok(secret, "DANMAKU_TEST_GIFT_SECRET is set by test.sh");
  const room = `sig-${Date.now()}`;
  const path = `/v1/rooms/${room}/events`;
  const body = JSON.stringify({
    kind: "gift",
    user: { id: "u9", name: "Bob" },
    gift: { gift_id: "rocket", count: 1, value: 100 },
  });
  const key = `order-${Date.now()}`;
  const headers = await giftRequestHeaders(secret, { method: "POST", path, idempotencyKey: key, body });
  const ok = await fetch(base + path, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body });
  assert.equal(ok.status, 202, await ok.clone().text());
  assert.ok((await ok.json()).id);
  const tampered = body.replace('"count":1', '"count":9');
  const bad = await fetch(base + path, {
    method: "POST",
    headers: { ...headers, "Idempotency-Key": key + "-b", "content-type": "application/json" },
    body: tampered,
  });
  assert.equal(bad.status, 401);
  assert.equal((await bad.json()).error.code, "bad_signature");
});
