// Minimal live viewer: WebSocket with cursor resume, a scrolling overlay,
// and sending with a demo token. (The full page is issue 9.)
const $ = (id) => document.getElementById(id);
const state = { cursor: null, epoch: null, ws: null, token: null, lane: 0, backoff: 500 };

function connect() {
  const room = $("room").value;
  const q = new URLSearchParams();
  if (state.cursor !== null) q.set("cursor", state.cursor);
  if (state.epoch) q.set("epoch", state.epoch);
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/rooms/${room}/ws?${q}`;
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "hello") {
      state.epoch = m.epoch; state.cursor = m.cursor; state.backoff = 500;
      $("status").textContent = `room ${m.room} · online ${m.online}`;
    } else if (m.type === "batch") {
      state.cursor = m.cursor;
      m.messages.forEach(show);
    } else if (m.type === "error") {
      $("error").textContent = m.message;
    }
  };
  ws.onclose = () => {
    $("status").textContent = "reconnecting…";
    const wait = state.backoff * (0.5 + Math.random());
    state.backoff = Math.min(state.backoff * 2, 15000);
    setTimeout(connect, wait);
  };
}

function show(m) {
  const el = document.createElement("div");
  el.className = `dm ${m.kind}`;
  el.textContent = m.kind === "gift" && m.gift
    ? `${m.user.name} sent ${m.gift.gift_id} ×${m.gift.count}`
    : `${m.user.name}: ${m.text}`;
  if (m.style && m.style.color) el.style.color = m.style.color;
  const stage = $("stage");
  el.style.top = `${(state.lane++ % 10) * 10 + 2}%`;
  stage.appendChild(el);
  const width = stage.clientWidth + el.clientWidth;
  el.animate([{ transform: "translateX(0)" }, { transform: `translateX(-${width}px)` }],
    { duration: 8000, easing: "linear" }).onfinish = () => el.remove();
}

async function token() {
  if (state.token) return state.token;
  const r = await fetch("/v1/demo/token", { method: "POST", body: JSON.stringify({ name: $("name").value }) });
  if (!r.ok) throw new Error("no demo token (production secrets configured?)");
  state.token = (await r.json()).token;
  return state.token;
}

$("send").onsubmit = async (e) => {
  e.preventDefault();
  $("error").textContent = "";
  const text = $("text").value;
  if (!text.trim() || [...text].length > 200) { $("error").textContent = "1–200 characters"; return; }
  try {
    const r = await fetch(`/v1/rooms/${$("room").value}/danmaku`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${await token()}` },
      body: JSON.stringify({ client_msg_id: crypto.randomUUID(), text }),
    });
    if (!r.ok) $("error").textContent = (await r.json()).error.message;
    else $("text").value = "";
  } catch (err) { $("error").textContent = err.message; }
};
$("room").onchange = () => { state.cursor = null; state.epoch = null; state.ws && state.ws.close(); };
connect();
