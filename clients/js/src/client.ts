// DanmakuClient: one room's live stream for a viewer. It joins with the
// room's recent messages (the snapshot), then follows the stream from the
// snapshot's cursor over WebSocket, SSE or long-poll, falling back in that
// order and probing back up; every reconnect resumes from the cursor and
// epoch, so nothing is lost or shown twice; sends go over the open socket
// (ack) or HTTP.

import { Backoff } from "./backoff.js";
import { DanmakuError, errorFromResponse } from "./errors.js";
import { Emitter } from "./emitter.js";
import { BoundedSet } from "./seen.js";
import { longPoll } from "./transports/poll.js";
import { serverSentEvents } from "./transports/sse.js";
import type { Connection, Transport, TransportContext } from "./transports/types.js";
import { websocket } from "./transports/ws.js";
import type {
  Batch,
  ConnectionState,
  DanmakuClientOptions,
  DanmakuEvents,
  FetchLike,
  Hello,
  Message,
  SendOptions,
  SendResult,
  Snapshot,
  StateChange,
  TokenSource,
  TransportKind,
  WebSocketConstructor,
} from "./types.js";

const TRANSPORTS: Record<TransportKind, Transport> = { ws: websocket, sse: serverSentEvents, poll: longPoll };
const ALL_TRANSPORTS: TransportKind[] = ["ws", "sse", "poll"];
/** Refusals a fresh token may cure (a token source that is a function is asked again, once). */
const TOKEN_CODES = new Set(["invalid_token", "token_expired", "missing_token"]);
/** A connection that lived this long was a working one: the backoff starts over. */
const WORKED_MS = 5000;

interface Waiter {
  match(frame: Record<string, any>): boolean;
  resolve(frame: Record<string, any>): void;
  reject(e: DanmakuError): void;
  timer: ReturnType<typeof setTimeout>;
}

export class DanmakuClient extends Emitter<DanmakuEvents> {
  readonly room: string;
  private readonly baseUrl: string;
  private readonly options: DanmakuClientOptions;
  private readonly order: TransportKind[];
  private readonly fetchImpl: FetchLike;
  private readonly WebSocketImpl: WebSocketConstructor | undefined;
  private readonly backoff: Backoff;
  private readonly ctx: TransportContext;
  private tokenSource: TokenSource | undefined;

  // Where the stream stands: the next connection resumes from here.
  private cursor: number | null;
  private epoch: string | null;
  /** Seqs already emitted in this epoch; ids already retracted. */
  private readonly seen = new BoundedSet<number>(5000);
  private readonly retracted = new BoundedSet<string>(5000);

  private idx = 0; // into `order`: the transport in use
  private kind: TransportKind | null = null;
  private conn: Connection | null = null;
  private open = false; // the connection's hello arrived
  private openedAt = 0;
  private gen = 0; // callbacks of an older connection are ignored
  private failsBeforeHello = 0; // in a row, on the current transport
  private lastState: StateChange | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private helloTimer: ReturnType<typeof setTimeout> | null = null;
  private upgradeTimer: ReturnType<typeof setTimeout> | null = null;
  private onlineTimer: ReturnType<typeof setInterval> | null = null;
  private upgradeDelay: number;
  private probe: Connection | null = null;
  private waiters: Waiter[] = [];
  /** The token the open socket is authenticated with. */
  private socketToken: string | null = null;
  private started = false;
  private closed = false;
  private readonly onNetworkBack = () => {
    // The browser is online again: skip the rest of the backoff.
    if (this.reconnectTimer && !this.conn) {
      clearTimeout(this.reconnectTimer);
      this.connect("network is back");
    }
  };

  constructor(options: DanmakuClientOptions) {
    super();
    if (!options || !options.baseUrl || !options.room) throw new TypeError("DanmakuClient needs baseUrl and room");
    this.options = options;
    this.room = options.room;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.tokenSource = options.token;
    this.cursor = options.cursor ?? null;
    this.epoch = options.epoch ?? null;
    const g = globalThis as any;
    this.fetchImpl = options.fetch ?? ((input, init) => g.fetch(input, init));
    this.WebSocketImpl = options.WebSocket ?? g.WebSocket;
    const wanted = (options.transports ?? ALL_TRANSPORTS).filter((k) => ALL_TRANSPORTS.includes(k));
    // Without any WebSocket implementation (Node 20 without a flag) there is nothing to try.
    this.order = wanted.filter((k) => k !== "ws" || this.WebSocketImpl || options.urls?.ws);
    if (!this.order.length) throw new TypeError("DanmakuClient: no usable transport");
    this.backoff = new Backoff(options.backoff?.baseMs ?? 500, options.backoff?.capMs ?? 15000);
    this.upgradeDelay = this.upgradeBase;
    this.ctx = {
      url: (kind, extra) => this.url(kind, extra),
      WebSocket: this.WebSocketImpl,
      fetch: this.fetchImpl,
      pingIntervalMs: options.pingIntervalMs ?? 20000,
      pollWaitMs: options.pollWaitMs ?? 25000,
      silentAfterMs: options.silentAfterMs ?? 60000,
    };
  }

  /** The transport in use (or being tried). */
  get transport(): TransportKind | null {
    return this.kind;
  }

  /** The last state change (null before `start()`). */
  get state(): StateChange | null {
    return this.lastState;
  }

  /** Where the stream stands; pass both to a later client's options to resume exactly. */
  get position(): { cursor: number | null; epoch: string | null } {
    return { cursor: this.cursor, epoch: this.epoch };
  }

  /**
   * Joins the room: emits the recent messages (unless `history: false` or a
   * cursor was given), then connects. Resolves once connecting has begun.
   */
  async start(): Promise<void> {
    if (this.started || this.closed) return;
    this.started = true;
    (globalThis as any).addEventListener?.("online", this.onNetworkBack);
    if (this.options.history !== false && this.cursor == null) await this.loadHistory();
    if (!this.closed) this.connect();
  }

  /** Stops everything: the connection, timers, a pending probe; pending sends reject. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.gen++;
    for (const t of [this.reconnectTimer, this.helloTimer, this.upgradeTimer]) if (t) clearTimeout(t);
    if (this.onlineTimer) clearInterval(this.onlineTimer);
    this.probe?.close();
    this.probe = null;
    this.conn?.close();
    this.conn = null;
    this.open = false;
    (globalThis as any).removeEventListener?.("online", this.onNetworkBack);
    this.failWaiters(new DanmakuError("closed", "the client was closed", { source: "client" }));
    this.setState(this.kind ?? this.order[0], "closed", "closed by the client");
  }

  /**
   * Sends a danmaku; resolves with the server's ack. Over the open WebSocket
   * when there is one (authenticating it with an `auth` frame first), else
   * `POST /v1/rooms/{room}/danmaku`; a socket lost mid-send is retried over
   * HTTP with the same `client_msg_id` (stored once). Rejects with a
   * `DanmakuError` carrying the server's code (`blocked_content`,
   * `empty_text`, `rate_limited`, …).
   */
  async send(text: string, opts: SendOptions = {}): Promise<SendResult> {
    if (this.closed) throw new DanmakuError("closed", "the client was closed", { source: "client" });
    const source = opts.token ?? this.tokenSource;
    if (!source) throw new DanmakuError("missing_token", "a viewer token is needed to send", { source: "client" });
    const clientMsgId = opts.clientMsgId ?? randomId();
    const body: Record<string, unknown> = { client_msg_id: clientMsgId, text };
    if (opts.style) body.style = opts.style;
    let token = await resolveToken(source, false);
    let renewed = false;
    for (;;) {
      try {
        return await this.sendOnce(token, body, clientMsgId);
      } catch (e) {
        const curable = e instanceof DanmakuError && e.source === "server" && TOKEN_CODES.has(e.code);
        if (renewed || !curable || typeof source !== "function") throw e;
        renewed = true;
        token = await resolveToken(source, true);
      }
    }
  }

  /**
   * Replaces the token; an open socket that was authenticated is renewed at
   * once with an `auth` frame (rejects with the server's code if refused).
   */
  async setToken(token: TokenSource): Promise<void> {
    this.tokenSource = token;
    if (this.kind === "ws" && this.open && this.socketToken != null) {
      await this.authenticate(await resolveToken(token, false));
    }
  }

  // ───────────── joining ─────────────

  private async loadHistory(): Promise<void> {
    // Revalidated, not taken from the browser's cache as is: a cached copy
    // (max-age 1 s, stale-while-revalidate 2 s) could still hold a message
    // retracted since. The ETag makes an unchanged room a cheap 304.
    const snap = await this.fetchSnapshot("no-cache");
    if (!snap || this.closed) return;
    // The stream continues exactly where the snapshot ends.
    this.epoch = snap.epoch;
    this.cursor = snap.cursor;
    const buckets = snap.buckets ?? ({} as Snapshot["buckets"]);
    const all = [...(buckets.whitelist ?? []), ...(buckets.high ?? []), ...(buckets.low ?? [])];
    all.sort((a, b) => a.seq - b.seq);
    if (typeof snap.online === "number") this.emit("online", snap.online);
    this.deliver(all, "history");
  }

  private async fetchSnapshot(cache: RequestCache = "default"): Promise<Snapshot | null> {
    // A snapshot that does not come in time is skipped: joining must not hang on it.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.options.helloTimeoutMs ?? 8000);
    try {
      const url = `${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/snapshot`;
      const res = await this.fetchImpl(url, { signal: ac.signal, cache });
      if (!res.ok) return null;
      const snap = await res.json();
      return snap && typeof snap.epoch === "string" && typeof snap.cursor === "number" ? snap : null;
    } catch {
      return null; // no history: the stream alone
    } finally {
      clearTimeout(timer);
    }
  }

  // ───────────── connections ─────────────

  private url(kind: TransportKind, extra: Record<string, string | number> = {}): string {
    const q = new URLSearchParams();
    if (this.cursor != null) q.set("cursor", String(this.cursor));
    if (this.epoch) q.set("epoch", this.epoch);
    for (const [k, v] of Object.entries(extra)) q.set(k, String(v));
    let base = this.options.urls?.[kind];
    if (!base) {
      base = `${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/${kind}`;
      if (kind === "ws") base = base.replace(/^http/, "ws");
    }
    const query = q.toString();
    return query ? `${base}${base.includes("?") ? "&" : "?"}${query}` : base;
  }

  private get upgradeBase(): number {
    return this.options.upgradeProbeMs ?? 30000;
  }

  private connect(detail = ""): void {
    this.reconnectTimer = null;
    if (this.closed) return;
    const kind = this.order[this.idx];
    const gen = ++this.gen;
    const mine =
      <A extends unknown[]>(fn: (...a: A) => void) =>
      (...a: A) => {
        if (gen === this.gen && !this.closed) fn(...a);
      };
    this.kind = kind;
    this.open = false;
    this.socketToken = null;
    this.setState(kind, "connecting", detail);
    this.helloTimer = setTimeout(
      mine(() => {
        const conn = this.conn;
        this.conn = null;
        conn?.close();
        this.onDown(kind, "no hello from the server");
      }),
      this.options.helloTimeoutMs ?? 8000,
    );
    this.conn = TRANSPORTS[kind](this.ctx, {
      hello: mine((h: Hello) => this.onHello(kind, h)),
      batch: mine((b: Batch) => this.onBatch(b)),
      retract: mine((ids: string[]) => this.onRetract(ids)),
      online: mine((count: number) => this.emit("online", count)),
      reply: mine((m: Record<string, unknown>) => this.onReply(m)),
      down: mine((reason: string) => this.onDown(kind, reason)),
    });
  }

  private onHello(kind: TransportKind, h: Hello): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.open = true;
    this.openedAt = Date.now();
    this.failsBeforeHello = 0;
    this.emit("hello", h);
    const reset = this.adoptEpoch(h.epoch, !!h.reset);
    if (typeof h.cursor === "number" && Number.isFinite(h.cursor)) this.cursor = h.cursor;
    if (h.gap) this.emit("gap", { cursor: h.cursor });
    if (typeof h.online === "number") this.emit("online", h.online);
    let detail = "";
    if (reset) detail = "the room's stream restarted";
    else if (h.gap) detail = "some messages expired before you could see them";
    this.setState(kind, "open", detail);
    this.scheduleUpgrade();
    this.refreshOnline(h.online == null);
  }

  private onBatch(b: Batch): void {
    if (typeof b.epoch === "string") this.adoptEpoch(b.epoch, !!b.reset);
    if (typeof b.cursor === "number") this.cursor = b.cursor;
    if (typeof b.online === "number") this.emit("online", b.online);
    if (Array.isArray(b.messages)) this.deliver(b.messages, "live");
  }

  /** Takes the server's epoch; `true` (and a `reset` event) if the stream was replaced. */
  private adoptEpoch(epoch: string, flagged: boolean): boolean {
    if (!epoch) return false;
    const previousEpoch = this.epoch;
    const reset = flagged || (previousEpoch !== null && previousEpoch !== epoch);
    this.epoch = epoch;
    if (reset) {
      // Seqs start over in the new stream.
      this.seen.clear();
      this.emit("reset", { epoch, previousEpoch });
    }
    return reset;
  }

  private deliver(list: Message[], source: "history" | "live"): void {
    const fresh: Message[] = [];
    for (const m of list) {
      if (!m || typeof m.seq !== "number" || typeof m.id !== "string") continue;
      if (!this.seen.add(m.seq) || this.retracted.has(m.id)) continue;
      fresh.push(m);
    }
    if (fresh.length) this.emit("messages", fresh, { source });
  }

  private onRetract(ids: string[]): void {
    const fresh = ids.filter((id) => typeof id === "string" && this.retracted.add(id));
    if (fresh.length) this.emit("retract", fresh);
  }

  private onDown(kind: TransportKind, reason: string): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    if (this.onlineTimer) clearInterval(this.onlineTimer);
    const hadHello = this.open;
    const lived = hadHello ? Date.now() - this.openedAt : 0;
    this.conn = null;
    this.open = false;
    this.socketToken = null;
    this.failWaiters(new DanmakuError("closed", `connection lost: ${reason}`, { source: "transport" }));
    if (this.closed) return;
    if (!hadHello) this.failsBeforeHello++;
    if (lived > WORKED_MS) this.backoff.reset();
    if (this.failsBeforeHello >= (this.options.downgradeAfter ?? 2) && this.idx < this.order.length - 1) {
      this.idx++;
      this.upgradeDelay = this.upgradeBase;
      this.failsBeforeHello = 0;
      this.backoff.reset();
      const next = this.order[this.idx];
      const why = `${kind} failed (${reason}); falling back to ${next}`;
      this.reconnectTimer = setTimeout(() => this.connect(why), 100);
      this.setState(next, "connecting", why);
      return;
    }
    const delay = this.backoff.next();
    this.reconnectTimer = setTimeout(() => this.connect(`attempt ${this.backoff.attempts + 1}`), delay);
    this.setState(kind, "reconnecting", `${reason}; retrying in ${(delay / 1000).toFixed(1)} s`, delay);
  }

  /** On a fallback transport: now and then try the first one alongside. */
  private scheduleUpgrade(): void {
    if (this.upgradeTimer) clearTimeout(this.upgradeTimer);
    if (this.idx === 0 || this.closed) return;
    const delay = this.upgradeDelay;
    this.upgradeDelay = Math.min(this.upgradeDelay * 2, this.options.upgradeProbeMaxMs ?? 600000);
    this.upgradeTimer = setTimeout(() => this.probeUpgrade(), delay);
  }

  private probeUpgrade(): void {
    if (this.closed || this.idx === 0 || this.probe) return;
    const kind = this.order[0];
    let settled = false;
    const end = () => {
      settled = true;
      const p = this.probe;
      this.probe = null;
      p?.close();
    };
    const give = setTimeout(() => {
      if (settled) return;
      end();
      this.scheduleUpgrade();
    }, this.options.helloTimeoutMs ?? 8000);
    const ignore = () => {};
    this.probe = TRANSPORTS[kind](this.ctx, {
      hello: () => {
        if (settled) return;
        clearTimeout(give);
        end();
        if (this.closed) return;
        // It works again: switch over; the cursor makes the switch lossless.
        const from = this.kind;
        this.idx = 0;
        this.failsBeforeHello = 0;
        this.backoff.reset();
        this.upgradeDelay = this.upgradeBase;
        if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
        if (this.helloTimer) clearTimeout(this.helloTimer);
        this.conn?.close();
        this.conn = null;
        this.open = false;
        this.failWaiters(new DanmakuError("closed", "switching transport", { source: "transport" }));
        this.connect(`${kind} works again; leaving ${from}`);
      },
      batch: ignore,
      retract: ignore,
      online: ignore,
      reply: ignore,
      down: () => {
        if (settled) return;
        clearTimeout(give);
        end();
        this.scheduleUpgrade();
      },
    });
  }

  /** The server pushes the online figure (`online` frames, poll answers'
   *  field) when its hello carries one; an older server's hello alone does:
   *  then the snapshot keeps it current. */
  private refreshOnline(now: boolean): void {
    if (this.onlineTimer) clearInterval(this.onlineTimer);
    this.onlineTimer = null;
    const every = this.options.onlineRefreshMs ?? 10000;
    if (!every || !now) return;
    const gen = this.gen;
    const read = async () => {
      const snap = await this.fetchSnapshot();
      if (snap && typeof snap.online === "number" && gen === this.gen && !this.closed) this.emit("online", snap.online);
    };
    if (now) void read();
    this.onlineTimer = setInterval(read, every);
  }

  private setState(transport: TransportKind, state: ConnectionState, detail: string, delayMs?: number): void {
    this.lastState = delayMs == null ? { transport, state, detail } : { transport, state, detail, delayMs };
    this.emit("state", this.lastState);
  }

  // ───────────── sending ─────────────

  private async sendOnce(token: string, body: Record<string, unknown>, clientMsgId: string): Promise<SendResult> {
    if (this.kind === "ws" && this.open && this.conn?.send) {
      try {
        await this.authenticate(token);
        const r = await this.request(
          { type: "send", ...body },
          (m) => (m.type === "ack" || m.type === "error") && m.client_msg_id === clientMsgId,
          this.options.ackTimeoutMs ?? 5000,
        );
        if (r.type === "error") throw refusal(r);
        return { id: String(r.id ?? ""), clientMsgId, via: "ws" };
      } catch (e) {
        if (!(e instanceof DanmakuError) || e.source !== "transport") throw e;
        // The socket went away mid-send: the same client_msg_id over HTTP is stored once.
      }
    }
    let res: Response;
    try {
      res = await this.fetchImpl(`${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/danmaku`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
    } catch (e) {
      throw new DanmakuError("network", `could not reach the server: ${(e as Error).message}`, { source: "transport" });
    }
    if (!res.ok) throw await errorFromResponse(res);
    const j = await res.json().catch(() => ({}));
    return { id: String(j.id ?? ""), clientMsgId, via: "http" };
  }

  /** `{"type":"auth","token"}` on the open socket, unless it already carries this token. */
  private async authenticate(token: string): Promise<void> {
    if (this.socketToken === token) return;
    const r = await this.request(
      { type: "auth", token },
      (m) => m.type === "auth_ok" || (m.type === "error" && m.client_msg_id == null),
      this.options.ackTimeoutMs ?? 5000,
    );
    if (r.type === "error") throw refusal(r);
    this.socketToken = token;
  }

  /** Writes a frame on the socket; resolves with the first answer `match` accepts. */
  private request(
    frame: object,
    match: (m: Record<string, any>) => boolean,
    timeoutMs: number,
  ): Promise<Record<string, any>> {
    return new Promise((resolve, reject) => {
      const conn = this.conn;
      if (!conn?.send || !this.open) {
        return reject(new DanmakuError("not_connected", "no open WebSocket", { source: "transport" }));
      }
      const w: Waiter = {
        match,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new DanmakuError("timeout", "no answer over the WebSocket", { source: "transport" }));
        }, timeoutMs),
      };
      this.waiters.push(w);
      if (!conn.send(frame)) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new DanmakuError("not_connected", "the WebSocket is not open", { source: "transport" }));
      }
    });
  }

  private onReply(m: Record<string, any>): void {
    const w = this.waiters.find((x) => x.match(m));
    if (!w) return;
    this.waiters = this.waiters.filter((x) => x !== w);
    clearTimeout(w.timer);
    w.resolve(m);
  }

  private failWaiters(e: DanmakuError): void {
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) {
      clearTimeout(w.timer);
      w.reject(e);
    }
  }
}

/** A WebSocket `error` frame as a DanmakuError. */
function refusal(frame: Record<string, any>): DanmakuError {
  const retryAfter = typeof frame.retry_after_s === "number" ? frame.retry_after_s : null;
  return new DanmakuError(String(frame.code ?? "error"), String(frame.message ?? "refused"), { retryAfter });
}

async function resolveToken(source: TokenSource, renew: boolean): Promise<string> {
  return typeof source === "function" ? await source({ renew }) : source;
}

function randomId(): string {
  const c = (globalThis as any).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const bytes: number[] = [];
  for (let i = 0; i < 16; i++) bytes.push(Math.floor(Math.random() * 256));
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
}
