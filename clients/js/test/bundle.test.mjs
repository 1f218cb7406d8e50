// The viewer page's copy of the SDK (static/danmaku-client.js, served by the
// server) is exactly what `npm run build` makes from this source; and the
// backoff stays within its bounds.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { Backoff } from "../dist/backoff.js";

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

test("static/danmaku-client.js equals a fresh build of clients/js", () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "danmaku-bundle-"));
  try {
    const out = path.join(tmp, "danmaku-client.js");
    execFileSync(process.execPath, [path.join(pkg, "scripts/bundle.mjs"), out], { stdio: "inherit" });
    const fresh = fs.readFileSync(out, "utf8");
    const committed = fs.readFileSync(path.join(pkg, "../../static/danmaku-client.js"), "utf8");
    assert.ok(fresh.includes("class extends Emitter") || fresh.includes("DanmakuClient"), "the bundle holds the client");
    assert.ok(fresh === committed, "static/danmaku-client.js is stale: run `npm run build` in clients/js and commit it");
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test("backoff: jittered within [½, 1] of min(cap, base·2^n), and starts over on reset", () => {
  for (const r of [0, 0.5, 0.999]) {
    const b = new Backoff(500, 15000, () => r);
    const got = Array.from({ length: 8 }, () => b.next());
    got.forEach((d, n) => {
      const ceiling = Math.min(15000, 500 * 2 ** n);
      assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${n}: ${d} within [${ceiling / 2}, ${ceiling}]`);
    });
    b.reset();
    assert.ok(b.next() <= 500);
  }
  const spread = new Set(Array.from({ length: 20 }, () => new Backoff(1000, 1000).next()));
  assert.ok(spread.size > 5, "delays differ between clients (jitter)");
});
