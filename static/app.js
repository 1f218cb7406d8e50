// danmaku viewer page (issue 9). Plain modern JS (an ES module), no build step of its own.
//
//   Player    — a generated stand-in video (canvas → captureStream → <video>)
//               and the clock every comment moves by; pausing stops both.
//   Overlay   — scrolling lanes without overlap, top/bottom fixed comments,
//               colours, density, a gift rail with combos, pinned notices.
//   Live      — the viewer SDK (clients/js, served as /danmaku-client.js):
//               WebSocket → SSE → long-poll, exact resume, backoff, history
//               on join (the chat panel), sending with ack. This page only
//               shows what it emits.
//   Sender    — demo viewer tokens, client-side checks, server errors shown.
//   ReplayApi — the only code that knows the replay routes' shapes.
//   Replay    — pick an ended live, scrub, comments follow the playhead,
//               windows fetched ahead.
//
// Testing hooks are plain DOM: every comment is an element with data-id,
// data-seq, data-kind, data-mode (data-offset in replay); #transport carries
// data-transport/data-state, #online data-online, #player data-time-ms,
// #stats data-shown/data-dropped/data-retracted.
//
// Retractions: the SDK's `retract` event (each id once, whatever the
// transport); the messages leave the overlay and the chat, and the SDK never
// emits them again. History on join goes to the chat only (li[data-history]).
import { DanmakuClient, DanmakuError, errorFromResponse } from "/danmaku-client.js";

const CFG = {
  maxChars: 200,          // server default ingest.max_text_chars
  scrollMs: 8000,         // time a scrolling comment takes to cross the player
  fixedMs: 4000,          // time a top/bottom comment stays
  giftMs: 6000,           // a gift card stays this long after its last hit
  laneGapPx: 28,          // least gap between two comments of one lane
  pendMs: 1500,           // a low comment waits this long for a free lane
  pendHighMs: 5000,       // whitelist danmaku waits longer
  maxPending: 60,
  maxNotices: 3,
  maxGiftCards: 4,
  maxLog: 300,
  replayWindowMs: 30000,
  densitySteps: [0, 0.25, 0.5, 0.75, 1],
};

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const fmt = (ms) => {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), ss = s % 60;
  const mmss = `${String(m).padStart(2, "0")}:${String(ss).padStart(2, "0")}`;
  return h ? `${h}:${mmss}` : mmss;
};
const codePoints = (s) => [...s].length;

// ─────────────────────────────── Player ───────────────────────────────

class Player {
  constructor(root, video, canvas) {
    this.root = root;
    this.video = video;
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.base = 0;
    this.since = performance.now();
    this.playing = true;
    this.duration = null; // replay: length of the live; live: null
    this.lastPaint = -1;
    this.listeners = new Set();
    if (canvas.captureStream) {
      video.srcObject = canvas.captureStream(30);
      this.paint(0, true);
      video.play().catch(() => {});
    } else {
      // No captureStream: show the canvas itself as the stand-in.
      video.hidden = true;
      canvas.classList.add("visible");
    }
    // Media keys pause and play the whole player (video and comments).
    if (navigator.mediaSession && navigator.mediaSession.setActionHandler) {
      try {
        navigator.mediaSession.setActionHandler("pause", () => this.pause());
        navigator.mediaSession.setActionHandler("play", () => this.play());
      } catch (_) { /* not supported */ }
    }
  }

  now() {
    const t = this.playing ? this.base + (performance.now() - this.since) : this.base;
    return this.duration != null ? Math.min(t, this.duration) : t;
  }

  play() {
    if (this.playing) return;
    if (this.duration != null && this.base >= this.duration) this.base = 0;
    this.since = performance.now();
    this.playing = true;
    if (this.video.srcObject) this.video.play().catch(() => {});
    this.emit("play");
  }

  pause() {
    if (!this.playing) return;
    this.base = this.now();
    this.playing = false;
    if (!this.video.paused) this.video.pause();
    this.emit("pause");
  }

  toggle() { this.playing ? this.pause() : this.play(); }

  seek(ms) {
    const max = this.duration != null ? this.duration : Infinity;
    this.base = Math.max(0, Math.min(ms, max));
    this.since = performance.now();
    this.paint(this.base, true);
    this.emit("seek");
  }

  setDuration(ms) { this.duration = ms; }

  on(fn) { this.listeners.add(fn); }
  emit(what) {
    this.root.dataset.playing = String(this.playing);
    for (const fn of this.listeners) fn(what);
  }

  /** Draws the stand-in video frame for time t (ms). */
  paint(t, force = false) {
    if (!force && (!this.playing || performance.now() - this.lastPaint < 33)) return;
    this.lastPaint = performance.now();
    const { ctx, canvas } = this;
    const w = canvas.width, h = canvas.height, s = t / 1000;
    const hue = (200 + s * 6) % 360;
    const g = ctx.createLinearGradient(0, 0, w, h);
    g.addColorStop(0, `hsl(${hue}, 45%, 16%)`);
    g.addColorStop(1, `hsl(${(hue + 60) % 360}, 50%, 9%)`);
    ctx.fillStyle = g;
    ctx.fillRect(0, 0, w, h);
    // A slow "scene": drifting discs and a horizon, so motion (and pause) is visible.
    for (let i = 0; i < 7; i++) {
      const x = ((i * 173 + s * (18 + i * 7)) % (w + 200)) - 100;
      const y = h * 0.25 + Math.sin(s * 0.6 + i) * h * 0.12 + i * 28;
      ctx.beginPath();
      ctx.fillStyle = `hsla(${(hue + i * 40) % 360}, 70%, 60%, 0.16)`;
      ctx.arc(x, y, 40 + i * 9, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.fillStyle = "rgba(255,255,255,0.06)";
    ctx.fillRect(0, h * 0.72, w, h * 0.28);
    ctx.strokeStyle = "rgba(255,255,255,0.25)";
    ctx.beginPath();
    ctx.moveTo(0, h * 0.72);
    for (let x = 0; x <= w; x += 16) ctx.lineTo(x, h * 0.72 + Math.sin(x / 60 + s) * 6);
    ctx.stroke();
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.font = "600 30px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(this.duration != null ? `REPLAY ${fmt(t)}` : `LIVE ${new Date().toLocaleTimeString()}`, w / 2, h * 0.86);
    ctx.font = "16px system-ui, sans-serif";
    ctx.fillStyle = "rgba(255,255,255,0.45)";
    ctx.fillText("stand-in video · generated in the page", w / 2, h * 0.86 + 28);
  }
}

// ─────────────────────────────── Overlay ───────────────────────────────

// Plain symbols (no emoji font needed); otherwise the gift's initial.
const GIFT_ICONS = { rocket: "▲", heart: "♥", flower: "✿", star: "★", crown: "♛", diamond: "◆" };

class Overlay {
  constructor(root) {
    this.root = root;
    this.lanesEl = root.querySelector("#lanes");
    this.noticesEl = root.querySelector("#notices");
    this.railEl = root.querySelector("#gift-rail");
    this.width = root.clientWidth || 960;
    this.height = root.clientHeight || 540;
    this.laneH = 34;
    this.density = 3;
    this.scroll = [];      // {el, lane, t0, w, v, end}
    this.fixed = [];       // {el, lane, mode, end}
    // One grid of lanes, top to bottom, below the pinned notices. Scrolling
    // and top comments fill it from the top, bottom comments from the bottom.
    this.laneLast = [];    // last scroll item entered per grid lane
    this.fixedUntil = [];  // per grid lane: a top/bottom comment stays until
    this.pending = [];     // {msg, deadline}
    this.gifts = new Map(); // user|gift → card
    this.mine = new Set();
    this.shown = 0;
    this.dropped = 0;
    this.retracted = 0;
    const resize = new ResizeObserver(() => {
      // The lanes sit below the pinned notices: pinning one moves them down.
      this.lanesEl.style.top = `${this.noticesEl.offsetHeight}px`;
      this.width = this.lanesEl.clientWidth;
      this.height = this.lanesEl.clientHeight;
      const lh = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--lane-h"));
      if (lh > 0) this.laneH = lh;
      this.root.dataset.lanes = String(this.laneCount());
    });
    resize.observe(root);
    resize.observe(this.noticesEl);
  }

  totalLanes() { return Math.max(0, Math.floor((this.height - 8) / this.laneH)); }

  /** Lanes in use at the current density (from the top; bottom comments from the bottom). */
  laneCount() {
    const total = this.totalLanes();
    const f = CFG.densitySteps[this.density] ?? 1;
    return f === 0 || total === 0 ? 0 : Math.max(1, Math.floor(total * f));
  }

  setDensity(level) {
    this.density = level;
    this.root.dataset.lanes = String(this.laneCount());
  }

  /** Shows a message that entered at time t0 (player clock); `now` is the clock. */
  add(msg, t0, now, { canWait = true } = {}) {
    if (msg.kind === "system") return this.pin(msg);
    if (msg.kind === "gift") return this.gift(msg, t0, now);
    const mode = (msg.style && msg.style.mode) || "scroll";
    const life = mode === "scroll" ? CFG.scrollMs : CFG.fixedMs;
    if (t0 + life <= now) return; // already gone at this playhead
    if (this.place(msg, mode, t0, now)) return;
    if (canWait && this.laneCount() > 0 && t0 >= now - 50) {
      const wait = msg.priority === "low" ? CFG.pendMs : CFG.pendHighMs;
      this.pending.push({ msg, deadline: now + wait });
      if (this.pending.length > CFG.maxPending) {
        const i = this.pending.findIndex((p) => p.msg.priority === "low");
        this.pending.splice(i >= 0 ? i : 0, 1);
        this.drop();
      }
    } else {
      this.drop();
    }
  }

  drop() { this.dropped++; this.stats(); }

  element(msg, cls) {
    const el = document.createElement("div");
    el.className = cls;
    el.dataset.id = msg.id;
    if (msg.seq != null) el.dataset.seq = String(msg.seq);
    el.dataset.kind = msg.kind;
    el.dataset.priority = msg.priority || "";
    if (msg.user) el.dataset.user = msg.user.name;
    if (msg.offset_ms != null) el.dataset.offset = String(msg.offset_ms);
    if (this.mine.has(msg.id)) el.classList.add("mine");
    return el;
  }

  place(msg, mode, t0, now) {
    const lanes = this.laneCount();
    if (lanes === 0) return false;
    const el = this.element(msg, "dm");
    el.dataset.mode = mode;
    el.title = `${msg.user ? msg.user.name : ""}`;
    if (msg.priority === "whitelist") {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = msg.user ? msg.user.name : "";
      el.append(who);
    }
    el.append(document.createTextNode(msg.text || ""));
    const color = msg.style && msg.style.color;
    if (color && /^#[0-9a-fA-F]{6}$/.test(color)) {
      el.style.color = color;
      el.dataset.color = color.toLowerCase();
    }
    el.style.visibility = "hidden";
    this.lanesEl.append(el);
    const w = el.offsetWidth;
    const total = this.totalLanes();
    const W = this.width;
    // Grid lanes this mode may use, in order of preference.
    const order = [];
    for (let i = 0; i < lanes; i++) order.push(mode === "bottom" ? total - 1 - i : i);
    let lane = -1;
    if (mode === "scroll") {
      const v = (W + w) / CFG.scrollMs;
      lane = order.find((g) => !(this.fixedUntil[g] > t0) && this.fits(this.laneLast[g], t0, v, W)) ?? -1;
      if (lane < 0) { el.remove(); return false; }
      const item = { el, lane, t0, w, v, end: t0 + CFG.scrollMs, gone: false };
      this.laneLast[lane] = item;
      this.scroll.push(item);
      el.style.transform = `translateX(${W - (now - t0) * v}px)`;
    } else {
      // Best: a lane whose scrolling comments have all passed the centre
      // (later ones avoid the lane while this stays); else any lane free of
      // top/bottom comments (a scrolling one may pass behind it).
      const left = (W - w) / 2 - CFG.laneGapPx;
      const clear = (g) => this.scroll.every((it) => it.lane !== g || W - (t0 - it.t0) * it.v + it.w < left);
      const free = order.filter((g) => !(this.fixedUntil[g] > t0));
      lane = free.find(clear) ?? free[0] ?? -1;
      if (lane < 0) { el.remove(); return false; }
      this.fixedUntil[lane] = t0 + CFG.fixedMs;
      this.fixed.push({ el, lane, mode, end: t0 + CFG.fixedMs });
      el.style.transform = "translateX(-50%)";
    }
    el.style.top = `${4 + lane * this.laneH}px`;
    el.dataset.lane = String(lane);
    el.style.visibility = "";
    this.shown++;
    this.stats();
    return true;
  }

  /** Can a comment entering at t0 with speed v follow `a` in its lane without touching it? */
  fits(a, t0, v, W) {
    if (!a || a.gone) return true;
    const gap = CFG.laneGapPx;
    // When b enters, a's tail must be gap pixels inside the right edge…
    const xa = W - (t0 - a.t0) * a.v;
    if (xa + a.w + gap > W) return false;
    // …and b (maybe faster) must not reach a's tail before a has left.
    if (a.end > t0 && W - (a.end - t0) * v < gap) return false;
    return true;
  }

  pin(msg) {
    const el = this.element(msg, "notice");
    el.dataset.mode = "pinned";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = msg.text || "";
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "×";
    close.title = "dismiss";
    close.onclick = () => el.remove();
    el.append(text, close);
    this.noticesEl.append(el);
    while (this.noticesEl.children.length > CFG.maxNotices) this.noticesEl.firstElementChild.remove();
    this.shown++;
    this.stats();
  }

  gift(msg, t0, now) {
    if (t0 + CFG.giftMs <= now) return;
    const g = msg.gift || { gift_id: "gift", count: 1 };
    const key = `${msg.user ? msg.user.id : ""}|${g.gift_id}`;
    const events = (msg.combo && msg.combo.events) || 1;
    let card = this.gifts.get(key);
    if (card && card.until > now) {
      card.total += g.count;
      card.events += events;
      card.el.dataset.ids += ` ${msg.id}`;
      card.el.classList.remove("bump");
      void card.el.offsetWidth; // restart the animation
      card.el.classList.add("bump");
    } else {
      if (card) card.el.remove();
      const el = this.element(msg, "gift");
      el.dataset.ids = msg.id;
      el.dataset.mode = "rail";
      const icon = document.createElement("span");
      icon.className = "icon";
      icon.textContent = GIFT_ICONS[g.gift_id] || (g.gift_id[0] || "?").toUpperCase();
      const what = document.createElement("span");
      what.className = "what";
      const who = document.createElement("b");
      who.textContent = msg.user ? msg.user.name : "someone";
      what.append(who, ` sent ${g.gift_id}`);
      if (msg.text) what.append(` · ${msg.text}`);
      const count = document.createElement("span");
      count.className = "count";
      const combo = document.createElement("span");
      combo.className = "combo";
      el.append(icon, what, count, combo);
      card = { el, count, combo, total: g.count, events, until: 0 };
      this.gifts.set(key, card);
      this.railEl.append(el);
      const cards = [...this.gifts.entries()].sort((a, b) => a[1].until - b[1].until);
      while (this.gifts.size > CFG.maxGiftCards) {
        const [k, c] = cards.shift();
        if (c === card) continue;
        c.el.remove();
        this.gifts.delete(k);
      }
    }
    card.until = Math.max(now, t0) + CFG.giftMs;
    card.count.textContent = `×${card.total}`;
    card.el.dataset.count = String(card.total);
    card.el.dataset.combo = String(card.events);
    card.combo.textContent = card.events > 1 ? `combo ${card.events}` : "";
    card.combo.hidden = card.events <= 1;
    this.shown++;
    this.stats();
  }

  /** Moves everything to the clock's time; drops what has finished. */
  tick(now) {
    const W = this.width;
    this.scroll = this.scroll.filter((it) => {
      if (now >= it.end) {
        it.gone = true;
        it.el.remove();
        return false;
      }
      it.el.style.transform = `translateX(${(W - (now - it.t0) * it.v).toFixed(1)}px)`;
      return true;
    });
    this.fixed = this.fixed.filter((it) => {
      if (now >= it.end) { it.el.remove(); return false; }
      return true;
    });
    if (this.pending.length) {
      const waiting = this.pending;
      this.pending = [];
      for (const p of waiting) {
        const mode = (p.msg.style && p.msg.style.mode) || "scroll";
        if (this.place(p.msg, mode, now, now)) continue;
        if (now < p.deadline && this.laneCount() > 0) this.pending.push(p);
        else this.drop();
      }
    }
    for (const [k, c] of this.gifts) {
      if (c.until <= now) { c.el.remove(); this.gifts.delete(k); }
    }
  }

  /** Empties the overlay (seek, room or mode change). */
  clear({ notices = true } = {}) {
    for (const it of this.scroll) it.gone = true;
    this.scroll = [];
    this.fixed = [];
    this.laneLast = [];
    this.fixedUntil = [];
    this.pending = [];
    this.gifts.clear();
    this.lanesEl.replaceChildren();
    this.railEl.replaceChildren();
    if (notices) this.noticesEl.replaceChildren();
  }

  /** Takes a retracted message off the overlay, wherever it is (waiting too). */
  retract(id) {
    let gone = 0;
    const drop = (it) => { if (it.el.dataset.id !== id) return true; it.gone = true; it.el.remove(); gone++; return false; };
    this.scroll = this.scroll.filter(drop);
    this.fixed = this.fixed.filter(drop);
    this.pending = this.pending.filter((p) => p.msg.id !== id);
    for (const [k, c] of this.gifts) {
      if (c.el.dataset.ids.split(" ").includes(id)) { c.el.remove(); this.gifts.delete(k); gone++; }
    }
    for (const el of this.noticesEl.querySelectorAll(`[data-id="${CSS.escape(id)}"]`)) { el.remove(); gone++; }
    if (gone) { this.retracted++; this.stats(); }
  }

  markMine(id) {
    this.mine.add(id);
    for (const el of this.root.querySelectorAll(`[data-id="${CSS.escape(id)}"]`)) el.classList.add("mine");
  }

  stats() {
    const s = $("stats");
    s.dataset.shown = String(this.shown);
    s.dataset.dropped = String(this.dropped);
    s.dataset.retracted = String(this.retracted);
    s.textContent = `shown ${this.shown} · dropped ${this.dropped}`;
  }
}

// ─────────────────────────────── Chat log ───────────────────────────────

const Log = {
  el: $("log"),
  add(msg, meta, { history = false } = {}) {
    const li = document.createElement("li");
    li.dataset.id = msg.id;
    if (history) li.dataset.history = "true";
    if (msg.seq != null) li.dataset.seq = String(msg.seq);
    li.dataset.kind = msg.kind;
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = meta;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = msg.user ? msg.user.name : "";
    const text = document.createElement("span");
    if (msg.kind === "gift" && msg.gift) {
      const combo = msg.combo && msg.combo.events > 1 ? ` (combo ${msg.combo.events})` : "";
      text.textContent = `sent ${msg.gift.gift_id} ×${msg.gift.count}${combo}${msg.text ? ` · ${msg.text}` : ""}`;
    } else {
      text.textContent = msg.kind === "system" ? `[notice] ${msg.text}` : msg.text;
      if (msg.style && /^#[0-9a-fA-F]{6}$/.test(msg.style.color || "") && msg.style.color.toLowerCase() !== "#ffffff") {
        text.style.color = msg.style.color;
      }
    }
    li.append(m, name, text);
    const stick = this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - 30;
    this.el.append(li);
    while (this.el.children.length > CFG.maxLog) this.el.firstElementChild.remove();
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  },
  clear() { this.el.replaceChildren(); },
  remove(id) {
    for (const li of this.el.querySelectorAll(`li[data-id="${CSS.escape(id)}"]`)) li.remove();
  },
};

// ─────────────────────────────── Sending ───────────────────────────────

const ERROR_TEXT = {
  rate_limited: (e) => `You are sending too fast — wait ${e.retryAfter || 1} s and try again.`,
  overloaded: () => "The room is very busy right now; your message was not sent. Try again shortly.",
  muted: () => "You are muted in this room.",
  user_muted: () => "You are muted in this room.",
  text_too_long: () => `Too long: at most ${CFG.maxChars} characters.`,
  empty_text: () => "Write something first.",
  blocked_content: () => "That message contains a blocked word.",
  control_characters: () => "The message contains control characters.",
  bad_text: () => "The message contains text-direction override characters.",
  bad_style: () => "That colour is not accepted.",
  bad_name: () => "Your name must be 1–32 characters.",
  missing_token: () => "Sign-in token missing; try again.",
  invalid_token: () => "Your viewer token was refused; try again.",
  token_expired: () => "Your viewer token expired; try again.",
  demo_unavailable: () => "This server does not hand out demo tokens (production secrets are set).",
  bus_full: () => "The server is busy; try again.",
  bus_unavailable: () => "The server is busy; try again.",
  shutting_down: () => "The server is restarting; try again in a moment.",
  network: () => "Could not reach the server.",
};

/** Demo viewer tokens, one per name (the SDK asks again with renew when one is refused). */
class Sender {
  constructor() { this.tokens = new Map(); }

  async token(name, fresh = false) {
    const t = this.tokens.get(name);
    if (t && !fresh && t.exp > Date.now()) return t.token;
    let res;
    try {
      res = await fetch("/v1/demo/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
      });
    } catch (_) {
      throw new DanmakuError("network", "network error", { source: "transport" });
    }
    if (res.status === 404) throw new DanmakuError("demo_unavailable", "no demo tokens here", { status: 404 });
    if (!res.ok) throw await errorFromResponse(res);
    const j = await res.json();
    this.tokens.set(name, { token: j.token, exp: Date.now() + (j.expires_in - 60) * 1000 });
    return j.token;
  }

  /** Sends as `name` through the live client; → {via: "ws"|"http", id}; throws DanmakuError. */
  send(live, name, text, style) {
    return live.send(text, { style: style || undefined, token: ({ renew }) => this.token(name, renew) });
  }
}

// ─────────────────────────────── Replay API ───────────────────────────────
// The replay routes are not in the server yet; these are the assumed shapes
// (issue 9 notes). Adjust here only:
//   GET /v1/rooms/{room}/lives → {"lives":[{"id","started_at","ended_at","duration_ms"}]}
//   GET /v1/rooms/{room}/replay?live=ID&from_ms=A&to_ms=B
//       → {"room","live","from_ms","to_ms","messages":[{...message, "offset_ms"}]}

const ReplayApi = {
  async lives(room) {
    const res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/lives`, { cache: "no-store" });
    if (!res.ok) throw await errorFromResponse(res);
    const j = await res.json();
    return (j.lives || [])
      .filter((l) => l && l.id != null && l.duration_ms > 0)
      .map((l) => ({ id: String(l.id), started_at: l.started_at, ended_at: l.ended_at, duration_ms: Number(l.duration_ms) }));
  },

  async window(room, live, fromMs, toMs) {
    const q = new URLSearchParams({ live, from_ms: String(fromMs), to_ms: String(toMs) });
    const res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/replay?${q}`, { cache: "force-cache" });
    if (!res.ok) throw await errorFromResponse(res);
    const j = await res.json();
    return (j.messages || [])
      .filter((m) => typeof m.offset_ms === "number")
      .sort((a, b) => a.offset_ms - b.offset_ms || (a.seq || 0) - (b.seq || 0));
  },
};

// ─────────────────────────────── Replay ───────────────────────────────

const lifetime = (m) => {
  if (m.kind === "system") return 1500;
  if (m.kind === "gift") return CFG.giftMs;
  const mode = (m.style && m.style.mode) || "scroll";
  return mode === "scroll" ? CFG.scrollMs : CFG.fixedMs;
};
const LOOKBACK_MS = Math.max(CFG.scrollMs, CFG.giftMs);

class Replay {
  constructor(room, player, overlay, ui) {
    this.room = room;
    this.player = player;
    this.overlay = overlay;
    this.ui = ui;
    this.live = null;
    this.windows = new Map();
    this.emitted = new Set();
    this.stopped = false;
  }

  async load(wantedId, startMs) {
    this.ui.status("loading ended lives…");
    let lives;
    try {
      lives = await ReplayApi.lives(this.room);
    } catch (e) {
      if (this.stopped) return;
      this.ui.lives([]);
      this.ui.status(e.status === 404
        ? "Replay is not available on this server yet."
        : `Could not list ended lives: ${e.message}`, "error");
      return;
    }
    if (this.stopped) return;
    this.lives = lives;
    this.ui.lives(lives);
    if (!lives.length) { this.ui.status(`No ended lives in room ${this.room}.`); return; }
    const pick = lives.find((l) => l.id === wantedId) || lives[0];
    this.open(pick.id, startMs || 0);
  }

  open(id, startMs = 0) {
    const live = this.lives.find((l) => l.id === id);
    if (!live) return;
    this.live = live;
    this.windows.clear();
    this.player.setDuration(live.duration_ms);
    this.ui.opened(live);
    this.seek(startMs);
    this.player.play();
    this.ui.status("");
  }

  seek(ms) {
    this.player.seek(ms);
    this.overlay.clear();
    this.emitted.clear();
    Log.clear();
  }

  windowAt(i) {
    if (i < 0 || !this.live || i * CFG.replayWindowMs >= this.live.duration_ms) return null;
    let w = this.windows.get(i);
    if (w && w.state === "error" && performance.now() >= w.retryAt) w = null;
    if (!w) {
      w = { state: "loading", messages: [] };
      this.windows.set(i, w);
      const live = this.live;
      ReplayApi.window(this.room, live.id, i * CFG.replayWindowMs, (i + 1) * CFG.replayWindowMs).then(
        (ms) => { w.messages = ms; w.state = "ready"; },
        (e) => {
          w.state = "error";
          w.retryAt = performance.now() + 3000;
          if (!this.stopped && this.live === live) this.ui.status(`replay window failed: ${e.message}; retrying`, "error");
        });
    }
    return w;
  }

  /** Emits what the playhead has reached; keeps the next window fetched ahead. */
  tick(now) {
    if (!this.live) return;
    const W = CFG.replayWindowMs;
    const i = Math.floor(now / W);
    this.windowAt(i + 1); // ahead
    if ((now % W) > W / 2) this.windowAt(i + 2);
    for (let j = Math.floor(Math.max(0, now - LOOKBACK_MS) / W); j <= i; j++) {
      const w = this.windowAt(j);
      if (!w || w.state !== "ready") continue;
      const ms = w.messages;
      // First message that can still be on screen (binary search on offset).
      let lo = 0, hi = ms.length;
      const from = now - LOOKBACK_MS;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (ms[mid].offset_ms < from) lo = mid + 1; else hi = mid; }
      for (let k = lo; k < ms.length && ms[k].offset_ms <= now; k++) {
        const m = ms[k];
        if (this.emitted.has(m.id)) continue;
        if (m.offset_ms + lifetime(m) <= now) continue;
        this.emitted.add(m.id);
        const fresh = now - m.offset_ms < 250;
        this.overlay.add(m, m.offset_ms, now, { canWait: fresh });
        Log.add(m, fmt(m.offset_ms));
      }
    }
    if (this.emitted.size > 5000) this.emitted = new Set([...this.emitted].slice(-2000));
  }

  stop() { this.stopped = true; this.live = null; }
}

// ─────────────────────────────── Page ───────────────────────────────

const player = new Player($("player"), $("video"), $("scene"));
const overlay = new Overlay($("overlay"));
const sender = new Sender();
let mode = params.get("mode") === "replay" ? "replay" : "live";
let room = /^[A-Za-z0-9_-]{1,64}$/.test(params.get("room") || "") ? params.get("room") : "demo";
let live = null;
let replay = null;
let pausedQueue = []; // live messages that arrived while paused
let scrubbing = false;

$("room").value = room;
$("name").value = localStorage.getItem("danmaku.name") || `guest${Math.floor(Math.random() * 900 + 100)}`;

const TRANSPORT_NAMES = { ws: "WebSocket", sse: "SSE", poll: "long-poll", none: "—" };

// What the page does with the live client's events (the SDK has already
// removed duplicates and anything retracted).
const liveHandlers = {
  messages(list, { source }) {
    if (source === "history") {
      // Recent messages from before the join: the chat panel only (they are not flying now).
      for (const m of list) Log.add(m, new Date(m.ts || Date.now()).toLocaleTimeString(), { history: true });
      return;
    }
    const now = player.now();
    for (const m of list) {
      Log.add(m, new Date(m.ts || Date.now()).toLocaleTimeString());
      if (player.playing) overlay.add(m, now, now);
      else {
        pausedQueue.push(m);
        if (pausedQueue.length > 100) pausedQueue.shift();
      }
    }
  },
  retract(ids) {
    for (const id of ids) {
      overlay.retract(id);
      Log.remove(id);
    }
    pausedQueue = pausedQueue.filter((m) => !ids.includes(m.id));
  },
  online(n) {
    const el = $("online");
    el.dataset.online = n == null ? "" : String(n);
    el.textContent = n == null ? "– online" : `${n} online`;
  },
  state({ transport, state, detail }) {
    const el = $("transport");
    el.dataset.transport = transport;
    el.dataset.state = state;
    el.textContent = state === "open" ? TRANSPORT_NAMES[transport] : `${TRANSPORT_NAMES[transport]} · ${state}…`;
    $("conn-detail").textContent = detail || "";
  },
};

/** The room's live client: ?transport=sse|poll starts further down the fallback order, ?probe_ms sets the upgrade probe. */
function joinLive(room) {
  const all = ["ws", "sse", "poll"];
  const forced = params.get("transport");
  const probe = Number(params.get("probe_ms"));
  const client = new DanmakuClient({
    baseUrl: location.origin,
    room,
    transports: all.includes(forced) ? all.slice(all.indexOf(forced)) : all,
    upgradeProbeMs: probe > 0 ? probe : undefined,
  });
  for (const [event, handler] of Object.entries(liveHandlers)) client.on(event, handler);
  client.start();
  return client;
}

const replayUi = {
  status(text, kind) {
    const s = $("replay-status");
    s.textContent = text;
    s.dataset.kind = kind || "";
  },
  lives(lives) {
    const sel = $("lives");
    sel.replaceChildren();
    if (!lives.length) {
      sel.append(new Option("none", ""));
      sel.disabled = true;
      $("timeline").disabled = true;
      return;
    }
    sel.disabled = false;
    for (const l of lives) {
      const when = l.started_at ? new Date(l.started_at).toLocaleString() : l.id;
      sel.append(new Option(`${when} · ${fmt(l.duration_ms)}`, l.id));
    }
  },
  opened(l) {
    $("lives").value = l.id;
    const t = $("timeline");
    t.max = String(l.duration_ms);
    t.disabled = false;
    syncUrl();
  },
};

function syncUrl() {
  const q = new URLSearchParams(location.search);
  q.set("room", room);
  if (mode === "replay") {
    q.set("mode", "replay");
    if (replay && replay.live) q.set("live", replay.live.id); else q.delete("live");
  } else {
    q.delete("mode");
    q.delete("live");
  }
  q.delete("t");
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function setMode(next, { start } = {}) {
  mode = next;
  document.body.dataset.mode = mode;
  $("mode-live").setAttribute("aria-pressed", String(mode === "live"));
  $("mode-replay").setAttribute("aria-pressed", String(mode === "replay"));
  if (live) { live.close(); live = null; }
  if (replay) { replay.stop(); replay = null; }
  overlay.clear();
  Log.clear();
  pausedQueue = [];
  if (mode === "live") {
    player.setDuration(null);
    player.seek(0);
    player.play();
    liveHandlers.online(null);
    live = joinLive(room);
  } else {
    player.pause();
    player.setDuration(0);
    player.seek(0);
    $("timeline").value = "0";
    $("timeline").max = "0";
    $("timeline").disabled = true;
    replay = new Replay(room, player, overlay, replayUi);
    replay.load(params.get("live"), Number(params.get("t")) || 0);
  }
  syncUrl();
}

// Controls ─────────────────────────────────────────────

player.on((what) => {
  const b = $("play");
  b.textContent = player.playing ? "❚❚ Pause" : "▶ Play";
  b.setAttribute("aria-pressed", String(!player.playing));
  if (what === "play" && mode === "live" && pausedQueue.length) {
    const now = player.now();
    const queued = pausedQueue;
    pausedQueue = [];
    for (const m of queued) overlay.add(m, now, now);
  }
});
$("play").onclick = () => {
  // Replaying from the end starts over.
  if (mode === "replay" && replay && replay.live && !player.playing && player.now() >= player.duration) replay.seek(0);
  player.toggle();
};
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !/^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(e.target.tagName)) {
    e.preventDefault();
    player.toggle();
  }
});

function showDensity() {
  const v = Number($("density").value);
  overlay.setDensity(v);
  $("density-label").textContent = v === 0 ? "off" : `${Math.round(CFG.densitySteps[v] * 100)}%`;
}
$("density").oninput = showDensity;
showDensity();

$("mode-live").onclick = () => { if (mode !== "live") setMode("live"); };
$("mode-replay").onclick = () => { if (mode !== "replay") setMode("replay"); };
$("room").onchange = () => {
  const v = $("room").value.trim();
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(v)) { $("room").value = room; return; }
  room = v;
  setMode(mode);
};

$("lives").onchange = () => { if (replay && $("lives").value) replay.open($("lives").value, 0); };
const timeline = $("timeline");
timeline.addEventListener("pointerdown", () => { scrubbing = true; });
addEventListener("pointerup", () => { scrubbing = false; });
timeline.addEventListener("input", () => { if (replay) replay.seek(Number(timeline.value)); });
timeline.addEventListener("change", () => { scrubbing = false; if (replay) replay.seek(Number(timeline.value)); });

// Sending ─────────────────────────────────────────────

const textEl = $("text");
function updateCount() {
  const n = codePoints(textEl.value);
  const c = $("char-count");
  c.textContent = `${n}/${CFG.maxChars}`;
  c.classList.toggle("over", n > CFG.maxChars);
}
textEl.addEventListener("input", updateCount);
updateCount();

function sendFeedback(err, ok) {
  const e = $("send-error"), s = $("send-status");
  e.dataset.code = err ? err.code : "";
  e.dataset.source = err ? err.source : "";
  e.textContent = err ? (ERROR_TEXT[err.code] ? ERROR_TEXT[err.code](err) : err.message) : "";
  e.title = err ? `${err.code}: ${err.message}` : "";
  s.dataset.state = ok ? "sent" : err ? "failed" : "sending";
  s.dataset.via = ok ? ok.via : "";
  s.textContent = ok ? `sent ✓ (${ok.via === "ws" ? "WebSocket" : "HTTP"})` : "";
}

$("send").onsubmit = async (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  const text = textEl.value;
  const n = codePoints(text);
  if (!name || codePoints(name) > 32) return sendFeedback(new DanmakuError("bad_name", "name must be 1-32 characters", { source: "client" }));
  if (!text.trim()) return sendFeedback(new DanmakuError("empty_text", "text must not be empty", { source: "client" }));
  if (n > CFG.maxChars) return sendFeedback(new DanmakuError("text_too_long", `text is ${n} characters, at most ${CFG.maxChars}`, { source: "client" }));
  localStorage.setItem("danmaku.name", name);
  const color = $("color").value.toLowerCase();
  const dmMode = $("dm-mode").value;
  const style = {};
  if (color !== "#ffffff") style.color = color;
  if (dmMode !== "scroll") style.mode = dmMode;
  sendFeedback(null, null);
  try {
    const r = await sender.send(live, name, text, Object.keys(style).length ? style : null);
    if (r.id) overlay.markMine(r.id);
    textEl.value = "";
    updateCount();
    sendFeedback(null, r);
  } catch (e) {
    sendFeedback(e instanceof DanmakuError ? e : new DanmakuError("network", String(e), { source: "transport" }));
  }
};

// Frame loop ─────────────────────────────────────────────

function frame() {
  let now = player.now();
  if (mode === "replay" && replay && replay.live) {
    if (player.playing && now >= player.duration) {
      player.pause();
      now = player.now();
    }
    replay.tick(now);
    if (!scrubbing) timeline.value = String(Math.floor(now));
    $("clock").textContent = `${fmt(now)} / ${fmt(player.duration)}`;
  } else if (mode === "live") {
    $("clock").textContent = `live · watched ${fmt(now)}`;
  } else {
    $("clock").textContent = "--:--";
  }
  overlay.tick(now);
  player.paint(now);
  $("player").dataset.timeMs = String(Math.floor(now));
  requestAnimationFrame(frame);
}

setMode(mode);
requestAnimationFrame(frame);
