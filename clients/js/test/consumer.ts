// Compiled (never run) by test.sh against dist/*.d.ts: what a TypeScript
// user writes type-checks, and misuse does not (the @ts-expect-error lines).
import { DanmakuClient, DanmakuError, type Message, type SendResult } from "../dist/index.js";

const client = new DanmakuClient({ baseUrl: "http://127.0.0.1:8080", room: "r1", token: ({ renew }) => (renew ? "b" : "a") });
client.on("messages", (list: Message[], info) => {
  const first: string = list[0].text;
  const seq: number = list[0].seq;
  const source: "history" | "live" = info.source;
  void [first, seq, source];
});
client.on("retract", (ids: string[]) => void ids);
client.on("reset", ({ epoch, previousEpoch }) => void [epoch.length, previousEpoch?.length]);
client.on("state", ({ transport, state }) => void [transport === "ws", state === "open"]);
const sent: Promise<SendResult> = client.send("hi", { style: { color: "#ffffff", mode: "top" } });
sent.catch((e: unknown) => {
  if (e instanceof DanmakuError) void [e.code, e.status, e.retryAfter, e.source];
});
const { cursor, epoch } = client.position;
void [cursor, epoch];

// @ts-expect-error: no such event
client.on("message", () => {});
// @ts-expect-error: no such transport
new DanmakuClient({ baseUrl: "x", room: "r", transports: ["tcp"] });
// @ts-expect-error: mode is scroll | top | bottom
client.send("x", { style: { mode: "left" } });
