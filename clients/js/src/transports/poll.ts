// Long-poll: the first request does not wait (it gives the cursor at once
// and stands for the hello), then each holds until there is something after
// the cursor. An answer's `retracted` lists recent retractions (repeated
// for about a minute; the client applies each id once).

import type { Transport } from "./types.js";

export const longPoll: Transport = (ctx, cb) => {
  const ac = new AbortController();
  let done = false;
  (async () => {
    let first = true;
    while (!done) {
      let body: any;
      const wait = first ? 0 : ctx.pollWaitMs;
      // An answer is due within the wait; one that never comes is a dead connection.
      const overdue = setTimeout(() => ac.abort(), wait + ctx.silentAfterMs / 4);
      try {
        const res = await ctx.fetch(ctx.url("poll", { wait_ms: wait }), {
          cache: "no-store",
          signal: ac.signal,
        });
        if (!res.ok) {
          let code = "";
          try {
            code = (await res.json())?.error?.code ?? "";
          } catch {
            // not JSON
          }
          throw new Error(`HTTP ${res.status}${code ? ` ${code}` : ""}`);
        }
        body = await res.json();
      } catch (e) {
        if (!done) {
          done = true;
          cb.down((e as Error).name === "AbortError" ? "no answer in time" : `poll failed: ${(e as Error).message}`);
        }
        return;
      } finally {
        clearTimeout(overdue);
      }
      if (done) return;
      if (first) {
        first = false;
        // The first answer stands for the hello: the room's epoch (a reset
        // if ours was not it), and the online figure (none from older servers).
        const online = typeof body.online === "number" ? body.online : null;
        cb.hello({ type: "hello", room: body.room, epoch: body.epoch, cursor: body.cursor, online, reset: !!body.reset });
        body = { ...body, reset: false };
      }
      cb.batch(body);
      if (Array.isArray(body.retracted) && body.retracted.length) cb.retract(body.retracted);
    }
  })();
  return {
    close() {
      done = true;
      ac.abort();
    },
  };
};
