// GENERATED from clients/js (npm run build): do not edit. The danmaku viewer SDK as one ES module.

// dist/backoff.js
var Backoff = class {
  constructor(baseMs, capMs, random = Math.random) {
    this.baseMs = baseMs;
    this.capMs = capMs;
    this.random = random;
    this.attempt = 0;
  }
  /** The next delay: uniformly within [½, 1] of min(cap, base·2^attempt). */
  next() {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling * (0.5 + this.random() / 2));
  }
  /** A connection worked for a while: start over from the base. */
  reset() {
    this.attempt = 0;
  }
  get attempts() {
    return this.attempt;
  }
};

// dist/errors.js
var DanmakuError = class extends Error {
  constructor(code, message, opts = {}) {
    super(message);
    this.name = "DanmakuError";
    this.code = code;
    this.status = opts.status ?? 0;
    this.retryAfter = opts.retryAfter ?? null;
    this.source = opts.source ?? "server";
  }
};
async function errorFromResponse(res) {
  let code = "http_error";
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error.code === "string") {
      code = body.error.code;
      message = String(body.error.message ?? message);
    }
  } catch {
  }
  const ra = Number(res.headers.get("retry-after"));
  const retryAfter = Number.isFinite(ra) && ra > 0 ? ra : null;
  return new DanmakuError(code, message, { status: res.status, retryAfter });
}

// dist/emitter.js
var Emitter = class {
  constructor() {
    this.listeners = {};
  }
  /** Adds a listener; returns the function that removes it. */
  on(event, fn) {
    var _a;
    const set = (_a = this.listeners)[event] ?? (_a[event] = /* @__PURE__ */ new Set());
    set.add(fn);
    return () => this.off(event, fn);
  }
  off(event, fn) {
    this.listeners[event]?.delete(fn);
  }
  /** Calls every listener; one that throws does not stop the others (nor the client). */
  emit(event, ...args) {
    for (const fn of [...this.listeners[event] ?? []]) {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
};

// dist/seen.js
var BoundedSet = class {
  constructor(max) {
    this.max = max;
    this.items = /* @__PURE__ */ new Set();
  }
  has(x) {
    return this.items.has(x);
  }
  /** Adds `x`; `false` if it was there already. Past `max`, the oldest half goes. */
  add(x) {
    if (this.items.has(x))
      return false;
    this.items.add(x);
    if (this.items.size > this.max) {
      this.items = new Set([...this.items].slice(-Math.floor(this.max / 2)));
    }
    return true;
  }
  clear() {
    this.items.clear();
  }
};

// dist/transports/poll.js
var longPoll = (ctx, cb) => {
  const ac = new AbortController();
  let done = false;
  (async () => {
    let first = true;
    while (!done) {
      let body;
      const wait = first ? 0 : ctx.pollWaitMs;
      const overdue = setTimeout(() => ac.abort(), wait + ctx.silentAfterMs / 4);
      try {
        const res = await ctx.fetch(ctx.url("poll", { wait_ms: wait }), {
          cache: "no-store",
          signal: ac.signal
        });
        if (!res.ok) {
          let code = "";
          try {
            code = (await res.json())?.error?.code ?? "";
          } catch {
          }
          throw new Error(`HTTP ${res.status}${code ? ` ${code}` : ""}`);
        }
        body = await res.json();
      } catch (e) {
        if (!done) {
          done = true;
          cb.down(e.name === "AbortError" ? "no answer in time" : `poll failed: ${e.message}`);
        }
        return;
      } finally {
        clearTimeout(overdue);
      }
      if (done)
        return;
      if (first) {
        first = false;
        const online = typeof body.online === "number" ? body.online : null;
        cb.hello({ type: "hello", room: body.room, epoch: body.epoch, cursor: body.cursor, online, reset: !!body.reset });
        body = { ...body, reset: false };
      }
      cb.batch(body);
      if (Array.isArray(body.retracted) && body.retracted.length)
        cb.retract(body.retracted);
    }
  })();
  return {
    close() {
      done = true;
      ac.abort();
    }
  };
};

// dist/transports/types.js
function parseFrame(text) {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

// dist/transports/sse.js
var serverSentEvents = (ctx, cb) => {
  const ac = new AbortController();
  let done = false;
  const fail = (reason) => {
    if (done)
      return;
    done = true;
    ac.abort();
    cb.down(reason);
  };
  const dispatch = (event, data) => {
    const m = parseFrame(data);
    if (!m)
      return;
    if (event === "hello")
      cb.hello(m);
    else if (event === "batch")
      cb.batch(m);
    else if (event === "retract")
      cb.retract(Array.isArray(m.ids) ? m.ids : []);
    else if (event === "online") {
      if (typeof m.online === "number")
        cb.online(m.online);
    } else if (event === "close")
      fail(`closed: ${m.reason ?? "by the server"}`);
  };
  (async () => {
    const res = await ctx.fetch(ctx.url("sse"), {
      headers: { accept: "text/event-stream" },
      cache: "no-store",
      signal: ac.signal
    });
    if (!res.ok || !res.body) {
      let code = "";
      try {
        code = (await res.json())?.error?.code ?? "";
      } catch {
      }
      return fail(`HTTP ${res.status}${code ? ` ${code}` : ""}`);
    }
    const reader = res.body.getReader();
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > ctx.silentAfterMs)
        fail("stream silent");
    }, ctx.silentAfterMs / 4);
    ac.signal.addEventListener("abort", () => clearInterval(watchdog));
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data = [];
    for (; ; ) {
      const { value, done: end } = await reader.read();
      heard = Date.now();
      if (done)
        return;
      if (end)
        return fail("stream ended");
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\n|\r(?=.)/s);
      buffer = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "") {
          if (data.length)
            dispatch(event, data.join("\n"));
          event = "message";
          data = [];
        } else if (line.startsWith(":")) {
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" "))
            val = val.slice(1);
          if (field === "event")
            event = val;
          else if (field === "data")
            data.push(val);
        }
        if (done)
          return;
      }
    }
  })().catch((e) => fail(e && e.name === "AbortError" ? "aborted" : `stream failed: ${e?.message ?? e}`));
  return {
    close() {
      done = true;
      ac.abort();
    }
  };
};

// dist/transports/ws.js
var websocket = (ctx, cb) => {
  const Impl = ctx.WebSocket;
  let ws;
  try {
    if (!Impl)
      throw new Error("no WebSocket implementation");
    ws = new Impl(ctx.url("ws"));
  } catch (e) {
    const reason = `WebSocket unavailable: ${e.message}`;
    setTimeout(() => cb.down(reason), 0);
    return { close() {
    } };
  }
  let done = false;
  const stop = () => {
    done = true;
    clearInterval(pinger);
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1e3);
    } catch {
    }
  };
  let heard = Date.now();
  const pinger = setInterval(() => {
    if (Date.now() - heard > ctx.silentAfterMs) {
      stop();
      cb.down("connection silent");
    } else if (ws.readyState === 1)
      ws.send('{"type":"ping"}');
  }, Math.min(ctx.pingIntervalMs, ctx.silentAfterMs / 2));
  ws.onmessage = (ev) => {
    heard = Date.now();
    if (done || typeof ev.data !== "string")
      return;
    const m = parseFrame(ev.data);
    if (!m)
      return;
    if (m.type === "hello")
      cb.hello(m);
    else if (m.type === "batch")
      cb.batch(m);
    else if (m.type === "retract")
      cb.retract(Array.isArray(m.ids) ? m.ids : []);
    else if (m.type === "online") {
      if (typeof m.online === "number")
        cb.online(m.online);
    } else
      cb.reply(m);
  };
  ws.onclose = (ev) => {
    if (done)
      return;
    stop();
    cb.down(ev.reason ? `closed (${ev.code}): ${ev.reason}` : `closed (${ev.code})`);
  };
  ws.onerror = () => {
  };
  return {
    close: stop,
    send(frame) {
      if (done || ws.readyState !== 1)
        return false;
      ws.send(JSON.stringify(frame));
      return true;
    }
  };
};

// dist/client.js
var TRANSPORTS = { ws: websocket, sse: serverSentEvents, poll: longPoll };
var ALL_TRANSPORTS = ["ws", "sse", "poll"];
var TOKEN_CODES = /* @__PURE__ */ new Set(["invalid_token", "token_expired", "missing_token"]);
var WORKED_MS = 5e3;
var DanmakuClient = class extends Emitter {
  constructor(options) {
    super();
    this.seen = new BoundedSet(5e3);
    this.retracted = new BoundedSet(5e3);
    this.idx = 0;
    this.kind = null;
    this.conn = null;
    this.open = false;
    this.openedAt = 0;
    this.gen = 0;
    this.failsBeforeHello = 0;
    this.lastState = null;
    this.reconnectTimer = null;
    this.helloTimer = null;
    this.upgradeTimer = null;
    this.onlineTimer = null;
    this.probe = null;
    this.waiters = [];
    this.socketToken = null;
    this.started = false;
    this.closed = false;
    this.onNetworkBack = () => {
      if (this.reconnectTimer && !this.conn) {
        clearTimeout(this.reconnectTimer);
        this.connect("network is back");
      }
    };
    if (!options || !options.baseUrl || !options.room)
      throw new TypeError("DanmakuClient needs baseUrl and room");
    this.options = options;
    this.room = options.room;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.tokenSource = options.token;
    this.cursor = options.cursor ?? null;
    this.epoch = options.epoch ?? null;
    const g = globalThis;
    this.fetchImpl = options.fetch ?? ((input, init) => g.fetch(input, init));
    this.WebSocketImpl = options.WebSocket ?? g.WebSocket;
    const wanted = (options.transports ?? ALL_TRANSPORTS).filter((k) => ALL_TRANSPORTS.includes(k));
    this.order = wanted.filter((k) => k !== "ws" || this.WebSocketImpl || options.urls?.ws);
    if (!this.order.length)
      throw new TypeError("DanmakuClient: no usable transport");
    this.backoff = new Backoff(options.backoff?.baseMs ?? 500, options.backoff?.capMs ?? 15e3);
    this.upgradeDelay = this.upgradeBase;
    this.ctx = {
      url: (kind, extra) => this.url(kind, extra),
      WebSocket: this.WebSocketImpl,
      fetch: this.fetchImpl,
      pingIntervalMs: options.pingIntervalMs ?? 2e4,
      pollWaitMs: options.pollWaitMs ?? 25e3,
      silentAfterMs: options.silentAfterMs ?? 6e4
    };
  }
  /** The transport in use (or being tried). */
  get transport() {
    return this.kind;
  }
  /** The last state change (null before `start()`). */
  get state() {
    return this.lastState;
  }
  /** Where the stream stands; pass both to a later client's options to resume exactly. */
  get position() {
    return { cursor: this.cursor, epoch: this.epoch };
  }
  /**
   * Joins the room: emits the recent messages (unless `history: false` or a
   * cursor was given), then connects. Resolves once connecting has begun.
   */
  async start() {
    if (this.started || this.closed)
      return;
    this.started = true;
    globalThis.addEventListener?.("online", this.onNetworkBack);
    if (this.options.history !== false && this.cursor == null)
      await this.loadHistory();
    if (!this.closed)
      this.connect();
  }
  /** Stops everything: the connection, timers, a pending probe; pending sends reject. */
  close() {
    if (this.closed)
      return;
    this.closed = true;
    this.gen++;
    for (const t of [this.reconnectTimer, this.helloTimer, this.upgradeTimer])
      if (t)
        clearTimeout(t);
    if (this.onlineTimer)
      clearInterval(this.onlineTimer);
    this.probe?.close();
    this.probe = null;
    this.conn?.close();
    this.conn = null;
    this.open = false;
    globalThis.removeEventListener?.("online", this.onNetworkBack);
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
  async send(text, opts = {}) {
    if (this.closed)
      throw new DanmakuError("closed", "the client was closed", { source: "client" });
    const source = opts.token ?? this.tokenSource;
    if (!source)
      throw new DanmakuError("missing_token", "a viewer token is needed to send", { source: "client" });
    const clientMsgId = opts.clientMsgId ?? randomId();
    const body = { client_msg_id: clientMsgId, text };
    if (opts.style)
      body.style = opts.style;
    let token = await resolveToken(source, false);
    let renewed = false;
    for (; ; ) {
      try {
        return await this.sendOnce(token, body, clientMsgId);
      } catch (e) {
        const curable = e instanceof DanmakuError && e.source === "server" && TOKEN_CODES.has(e.code);
        if (renewed || !curable || typeof source !== "function")
          throw e;
        renewed = true;
        token = await resolveToken(source, true);
      }
    }
  }
  /**
   * Replaces the token; an open socket that was authenticated is renewed at
   * once with an `auth` frame (rejects with the server's code if refused).
   */
  async setToken(token) {
    this.tokenSource = token;
    if (this.kind === "ws" && this.open && this.socketToken != null) {
      await this.authenticate(await resolveToken(token, false));
    }
  }
  // ───────────── joining ─────────────
  async loadHistory() {
    const snap = await this.fetchSnapshot("no-cache");
    if (!snap || this.closed)
      return;
    this.epoch = snap.epoch;
    this.cursor = snap.cursor;
    const buckets = snap.buckets ?? {};
    const all = [...buckets.whitelist ?? [], ...buckets.high ?? [], ...buckets.low ?? []];
    all.sort((a, b) => a.seq - b.seq);
    if (typeof snap.online === "number")
      this.emit("online", snap.online);
    this.deliver(all, "history");
  }
  async fetchSnapshot(cache = "default") {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.options.helloTimeoutMs ?? 8e3);
    try {
      const url = `${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/snapshot`;
      const res = await this.fetchImpl(url, { signal: ac.signal, cache });
      if (!res.ok)
        return null;
      const snap = await res.json();
      return snap && typeof snap.epoch === "string" && typeof snap.cursor === "number" ? snap : null;
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
    }
  }
  // ───────────── connections ─────────────
  url(kind, extra = {}) {
    const q = new URLSearchParams();
    if (this.cursor != null)
      q.set("cursor", String(this.cursor));
    if (this.epoch)
      q.set("epoch", this.epoch);
    for (const [k, v] of Object.entries(extra))
      q.set(k, String(v));
    let base = this.options.urls?.[kind];
    if (!base) {
      base = `${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/${kind}`;
      if (kind === "ws")
        base = base.replace(/^http/, "ws");
    }
    const query = q.toString();
    return query ? `${base}${base.includes("?") ? "&" : "?"}${query}` : base;
  }
  get upgradeBase() {
    return this.options.upgradeProbeMs ?? 3e4;
  }
  connect(detail = "") {
    this.reconnectTimer = null;
    if (this.closed)
      return;
    const kind = this.order[this.idx];
    const gen = ++this.gen;
    const mine = (fn) => (...a) => {
      if (gen === this.gen && !this.closed)
        fn(...a);
    };
    this.kind = kind;
    this.open = false;
    this.socketToken = null;
    this.setState(kind, "connecting", detail);
    this.helloTimer = setTimeout(mine(() => {
      const conn = this.conn;
      this.conn = null;
      conn?.close();
      this.onDown(kind, "no hello from the server");
    }), this.options.helloTimeoutMs ?? 8e3);
    this.conn = TRANSPORTS[kind](this.ctx, {
      hello: mine((h) => this.onHello(kind, h)),
      batch: mine((b) => this.onBatch(b)),
      retract: mine((ids) => this.onRetract(ids)),
      online: mine((count) => this.emit("online", count)),
      reply: mine((m) => this.onReply(m)),
      down: mine((reason) => this.onDown(kind, reason))
    });
  }
  onHello(kind, h) {
    if (this.helloTimer)
      clearTimeout(this.helloTimer);
    this.open = true;
    this.openedAt = Date.now();
    this.failsBeforeHello = 0;
    this.emit("hello", h);
    const reset = this.adoptEpoch(h.epoch, !!h.reset);
    if (typeof h.cursor === "number" && Number.isFinite(h.cursor))
      this.cursor = h.cursor;
    if (h.gap)
      this.emit("gap", { cursor: h.cursor });
    if (typeof h.online === "number")
      this.emit("online", h.online);
    let detail = "";
    if (reset)
      detail = "the room's stream restarted";
    else if (h.gap)
      detail = "some messages expired before you could see them";
    this.setState(kind, "open", detail);
    this.scheduleUpgrade();
    this.refreshOnline(h.online == null);
  }
  onBatch(b) {
    if (typeof b.epoch === "string")
      this.adoptEpoch(b.epoch, !!b.reset);
    if (typeof b.cursor === "number")
      this.cursor = b.cursor;
    if (typeof b.online === "number")
      this.emit("online", b.online);
    if (Array.isArray(b.messages))
      this.deliver(b.messages, "live");
  }
  /** Takes the server's epoch; `true` (and a `reset` event) if the stream was replaced. */
  adoptEpoch(epoch, flagged) {
    if (!epoch)
      return false;
    const previousEpoch = this.epoch;
    const reset = flagged || previousEpoch !== null && previousEpoch !== epoch;
    this.epoch = epoch;
    if (reset) {
      this.seen.clear();
      this.emit("reset", { epoch, previousEpoch });
    }
    return reset;
  }
  deliver(list, source) {
    const fresh = [];
    for (const m of list) {
      if (!m || typeof m.seq !== "number" || typeof m.id !== "string")
        continue;
      if (!this.seen.add(m.seq) || this.retracted.has(m.id))
        continue;
      fresh.push(m);
    }
    if (fresh.length)
      this.emit("messages", fresh, { source });
  }
  onRetract(ids) {
    const fresh = ids.filter((id) => typeof id === "string" && this.retracted.add(id));
    if (fresh.length)
      this.emit("retract", fresh);
  }
  onDown(kind, reason) {
    if (this.helloTimer)
      clearTimeout(this.helloTimer);
    if (this.onlineTimer)
      clearInterval(this.onlineTimer);
    const hadHello = this.open;
    const lived = hadHello ? Date.now() - this.openedAt : 0;
    this.conn = null;
    this.open = false;
    this.socketToken = null;
    this.failWaiters(new DanmakuError("closed", `connection lost: ${reason}`, { source: "transport" }));
    if (this.closed)
      return;
    if (!hadHello)
      this.failsBeforeHello++;
    if (lived > WORKED_MS)
      this.backoff.reset();
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
    this.setState(kind, "reconnecting", `${reason}; retrying in ${(delay / 1e3).toFixed(1)} s`, delay);
  }
  /** On a fallback transport: now and then try the first one alongside. */
  scheduleUpgrade() {
    if (this.upgradeTimer)
      clearTimeout(this.upgradeTimer);
    if (this.idx === 0 || this.closed)
      return;
    const delay = this.upgradeDelay;
    this.upgradeDelay = Math.min(this.upgradeDelay * 2, this.options.upgradeProbeMaxMs ?? 6e5);
    this.upgradeTimer = setTimeout(() => this.probeUpgrade(), delay);
  }
  probeUpgrade() {
    if (this.closed || this.idx === 0 || this.probe)
      return;
    const kind = this.order[0];
    let settled = false;
    const end = () => {
      settled = true;
      const p = this.probe;
      this.probe = null;
      p?.close();
    };
    const give = setTimeout(() => {
      if (settled)
        return;
      end();
      this.scheduleUpgrade();
    }, this.options.helloTimeoutMs ?? 8e3);
    const ignore = () => {
    };
    this.probe = TRANSPORTS[kind](this.ctx, {
      hello: () => {
        if (settled)
          return;
        clearTimeout(give);
        end();
        if (this.closed)
          return;
        const from = this.kind;
        this.idx = 0;
        this.failsBeforeHello = 0;
        this.backoff.reset();
        this.upgradeDelay = this.upgradeBase;
        if (this.reconnectTimer)
          clearTimeout(this.reconnectTimer);
        if (this.helloTimer)
          clearTimeout(this.helloTimer);
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
        if (settled)
          return;
        clearTimeout(give);
        end();
        this.scheduleUpgrade();
      }
    });
  }
  /** The server pushes the online figure (`online` frames, poll answers'
   *  field) when its hello carries one; an older server's hello alone does:
   *  then the snapshot keeps it current. */
  refreshOnline(now) {
    if (this.onlineTimer)
      clearInterval(this.onlineTimer);
    this.onlineTimer = null;
    const every = this.options.onlineRefreshMs ?? 1e4;
    if (!every || !now)
      return;
    const gen = this.gen;
    const read = async () => {
      const snap = await this.fetchSnapshot();
      if (snap && typeof snap.online === "number" && gen === this.gen && !this.closed)
        this.emit("online", snap.online);
    };
    if (now)
      void read();
    this.onlineTimer = setInterval(read, every);
  }
  setState(transport, state, detail, delayMs) {
    this.lastState = delayMs == null ? { transport, state, detail } : { transport, state, detail, delayMs };
    this.emit("state", this.lastState);
  }
  // ───────────── sending ─────────────
  async sendOnce(token, body, clientMsgId) {
    if (this.kind === "ws" && this.open && this.conn?.send) {
      try {
        await this.authenticate(token);
        const r = await this.request({ type: "send", ...body }, (m) => (m.type === "ack" || m.type === "error") && m.client_msg_id === clientMsgId, this.options.ackTimeoutMs ?? 5e3);
        if (r.type === "error")
          throw refusal(r);
        return { id: String(r.id ?? ""), clientMsgId, via: "ws" };
      } catch (e) {
        if (!(e instanceof DanmakuError) || e.source !== "transport")
          throw e;
      }
    }
    let res;
    try {
      res = await this.fetchImpl(`${this.baseUrl}/v1/rooms/${encodeURIComponent(this.room)}/danmaku`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify(body)
      });
    } catch (e) {
      throw new DanmakuError("network", `could not reach the server: ${e.message}`, { source: "transport" });
    }
    if (!res.ok)
      throw await errorFromResponse(res);
    const j = await res.json().catch(() => ({}));
    return { id: String(j.id ?? ""), clientMsgId, via: "http" };
  }
  /** `{"type":"auth","token"}` on the open socket, unless it already carries this token. */
  async authenticate(token) {
    if (this.socketToken === token)
      return;
    const r = await this.request({ type: "auth", token }, (m) => m.type === "auth_ok" || m.type === "error" && m.client_msg_id == null, this.options.ackTimeoutMs ?? 5e3);
    if (r.type === "error")
      throw refusal(r);
    this.socketToken = token;
  }
  /** Writes a frame on the socket; resolves with the first answer `match` accepts. */
  request(frame, match, timeoutMs) {
    return new Promise((resolve, reject) => {
      const conn = this.conn;
      if (!conn?.send || !this.open) {
        return reject(new DanmakuError("not_connected", "no open WebSocket", { source: "transport" }));
      }
      const w = {
        match,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new DanmakuError("timeout", "no answer over the WebSocket", { source: "transport" }));
        }, timeoutMs)
      };
      this.waiters.push(w);
      if (!conn.send(frame)) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new DanmakuError("not_connected", "the WebSocket is not open", { source: "transport" }));
      }
    });
  }
  onReply(m) {
    const w = this.waiters.find((x) => x.match(m));
    if (!w)
      return;
    this.waiters = this.waiters.filter((x) => x !== w);
    clearTimeout(w.timer);
    w.resolve(m);
  }
  failWaiters(e) {
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) {
      clearTimeout(w.timer);
      w.reject(e);
    }
  }
};
function refusal(frame) {
  const retryAfter = typeof frame.retry_after_s === "number" ? frame.retry_after_s : null;
  return new DanmakuError(String(frame.code ?? "error"), String(frame.message ?? "refused"), { retryAfter });
}
async function resolveToken(source, renew) {
  return typeof source === "function" ? await source({ renew }) : source;
}
function randomId() {
  const c = globalThis.crypto;
  if (c?.randomUUID)
    return c.randomUUID();
  const bytes = [];
  for (let i = 0; i < 16; i++)
    bytes.push(Math.floor(Math.random() * 256));
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
}
export {
  DanmakuClient,
  DanmakuError,
  errorFromResponse
};
