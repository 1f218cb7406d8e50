// Server-Sent Events over fetch streaming rather than EventSource: the same
// code in browsers and Node, no automatic reconnect to suppress (EventSource
// retries on its own schedule with Last-Event-ID but without the epoch), an
// HTTP refusal's status and error code are visible, and a custom fetch
// works. Events: hello, batch, retract, online, close; `: ping` comments are skipped.

import { parseFrame, type Transport } from "./types.js";

export const serverSentEvents: Transport = (ctx, cb) => {
  const ac = new AbortController();
  let done = false;
  const fail = (reason: string) => {
    if (done) return;
    done = true;
    ac.abort();
    cb.down(reason);
  };
  const dispatch = (event: string, data: string) => {
    const m = parseFrame(data);
    if (!m) return;
    if (event === "hello") cb.hello(m as any);
    else if (event === "batch") cb.batch(m as any);
    else if (event === "retract") cb.retract(Array.isArray(m.ids) ? m.ids : []);
    else if (event === "online") {
      if (typeof m.online === "number") cb.online(m.online);
    }
    else if (event === "close") fail(`closed: ${m.reason ?? "by the server"}`);
  };
  (async () => {
    const res = await ctx.fetch(ctx.url("sse"), {
      headers: { accept: "text/event-stream" },
      cache: "no-store",
      signal: ac.signal,
    });
    if (!res.ok || !res.body) {
      let code = "";
      try {
        code = (await res.json())?.error?.code ?? "";
      } catch {
        // not JSON
      }
      return fail(`HTTP ${res.status}${code ? ` ${code}` : ""}`);
    }
    const reader = res.body.getReader();
    // The server writes a keep-alive comment every 25 s: silence means a dead connection.
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > ctx.silentAfterMs) fail("stream silent");
    }, ctx.silentAfterMs / 4);
    ac.signal.addEventListener("abort", () => clearInterval(watchdog));
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data: string[] = [];
    for (;;) {
      const { value, done: end } = await reader.read();
      heard = Date.now();
      if (done) return;
      if (end) return fail("stream ended");
      buffer += decoder.decode(value, { stream: true });
      // Complete lines only; a CR at the end may be half of a CRLF.
      const lines = buffer.split(/\r\n|\n|\r(?=.)/s);
      buffer = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") {
          if (data.length) dispatch(event, data.join("\n"));
          event = "message";
          data = [];
        } else if (line.startsWith(":")) {
          // comment (keep-alive)
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
          // `id` is the cursor, which every batch carries too.
        }
        if (done) return;
      }
    }
  })().catch((e: Error) => fail(e && e.name === "AbortError" ? "aborted" : `stream failed: ${e?.message ?? e}`));
  return {
    close() {
      done = true;
      ac.abort();
    },
  };
};
