// Wire shapes of the viewer protocol (src/http/openapi.json, docs/protocol.md)
// and the SDK's public option and event types.

export type TransportKind = "ws" | "sse" | "poll";
export type Priority = "whitelist" | "high" | "low";
export type MessageKind = "danmaku" | "gift" | "system";

export interface UserRef {
  id: string;
  name: string;
}

export interface Style {
  /** `#rrggbb` */
  color?: string;
  mode?: "scroll" | "top" | "bottom";
}

/** One message of a room's stream (danmaku, gift or system notice). */
export interface Message {
  id: string;
  /** Position in the room's stream: grows by one per message within an epoch. */
  seq: number;
  room: string;
  kind: MessageKind;
  priority: Priority;
  user: UserRef;
  text: string;
  /** Unix milliseconds when the server accepted it. */
  ts: number;
  style?: Style;
  gift?: { gift_id: string; count: number; value?: number };
  /** Gift combos: several events of one user's gift shown as one message. */
  combo?: { events: number };
  [field: string]: unknown;
}

/** The first frame of every stream (and again when the stream was replaced). */
export interface Hello {
  type: "hello";
  room: string;
  epoch: string;
  /** The cursor the stream starts from (before any catch-up frame). */
  cursor: number;
  online: number | null;
  tick_ms?: number;
  /** The client's epoch is not the room's: its cursor meant nothing, the stream starts over. */
  reset?: boolean;
  /** Messages between the client's cursor and the stream were already trimmed. */
  gap?: boolean;
  /** Protocol version (absent on older servers). */
  protocol?: number;
}

/** `{"type":"batch"}`: a WebSocket frame, an SSE `batch` event, a long-poll answer. */
export interface Batch {
  type: "batch";
  room: string;
  epoch: string;
  /** The cursor after these messages. */
  cursor: number;
  messages: Message[];
  reset?: boolean;
  /** Long-poll only: viewers in the room (cluster-wide). */
  online?: number;
  /** Long-poll only: ids retracted lately (repeated for about a minute). */
  retracted?: string[];
}

/** The room's snapshot (`GET /v1/rooms/{room}/snapshot`): the history on join. */
export interface Snapshot {
  room: string;
  epoch: string;
  cursor: number;
  online: number;
  generated_at: number;
  buckets: Record<Priority, Message[]>;
}

/** A viewer token, or a function that returns one (`renew`: the last one was refused or expired). */
export type TokenSource = string | ((opts: { renew: boolean }) => string | Promise<string>);

/** The parts of the WHATWG WebSocket the SDK uses (browsers, Node ≥ 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface DanmakuClientOptions {
  /** The server, e.g. `https://danmaku.example` (the page itself: `location.origin`). */
  baseUrl: string;
  room: string;
  /** Viewer token for `send()` (and the socket's `auth`). Not needed to watch. */
  token?: TokenSource;
  /** Transports to try, in order (default `["ws", "sse", "poll"]`). */
  transports?: TransportKind[];
  /** Fetch the room's recent messages on join and emit them first (default true). */
  history?: boolean;
  /** Resume a stream from a saved position (both from an earlier client's `position`). */
  cursor?: number;
  epoch?: string;
  /** Override a transport's URL (a proxy, or a test refusing one). Query parameters are appended. */
  urls?: Partial<Record<TransportKind, string>>;
  /** A WebSocket implementation (default: the global one; in Node 20 pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** A fetch implementation (default: the global one). */
  fetch?: FetchLike;
  /** Reconnect delay: uniformly within [½, 1] of min(capMs, baseMs·2^attempt). */
  backoff?: { baseMs?: number; capMs?: number };
  /** Failures before a hello, in a row, after which the next transport is tried (default 2). */
  downgradeAfter?: number;
  /** A connection without a hello this long counts as failed (default 8000). */
  helloTimeoutMs?: number;
  /** Long-poll hold (default 25000; the server caps it at 30000). */
  pollWaitMs?: number;
  /** On a fallback transport, try the first one again after this, doubling (default 30000, cap 600000). */
  upgradeProbeMs?: number;
  upgradeProbeMaxMs?: number;
  /** WebSocket keep-alive ping (default 20000). */
  pingIntervalMs?: number;
  /**
   * A connection that hears nothing this long (the server's SSE keep-alive
   * comes every 25 s, the WebSocket ping's pong at once) is taken for dead
   * and reconnected (default 60000); a long-poll answer may be this ¼ late.
   */
  silentAfterMs?: number;
  /** How long `send()` waits for the socket's ack before trying HTTP (default 5000). */
  ackTimeoutMs?: number;
  /** Refresh the online count from the snapshot this often when the server does not announce it (an older server; default 10000; 0: never). */
  onlineRefreshMs?: number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  transport: TransportKind;
  state: ConnectionState;
  /** Why, for people: "ws failed (…); falling back to sse", "retrying in 1.2 s". */
  detail: string;
  /** Reconnect delay when `state` is "reconnecting". */
  delayMs?: number;
}

export interface MessagesInfo {
  /** "history": recent messages fetched on join; "live": from the stream. */
  source: "history" | "live";
}

/** Events of a `DanmakuClient` and their arguments. */
export interface DanmakuEvents {
  /** New messages, in stream order, each once (deduplicated by seq within an epoch). */
  messages: [messages: Message[], info: MessagesInfo];
  /** Messages a moderator retracted: take them off the screen. Each id once. */
  retract: [ids: string[]];
  /** The room's stream was replaced (or the given epoch is unknown): positions start over. */
  reset: [info: { epoch: string; previousEpoch: string | null }];
  /** Some messages expired before this client could get them. */
  gap: [info: { cursor: number }];
  /** Each hello as received. */
  hello: [hello: Hello];
  /** Viewers in the room (cluster-wide): from the hello, then each change the server announces. */
  online: [count: number];
  /** The connection's transport and state. */
  state: [change: StateChange];
}

export interface SendOptions {
  style?: Style;
  /** Idempotency: the same id is stored once (default: a random UUID). */
  clientMsgId?: string;
  /** This send's token (default: the client's). */
  token?: TokenSource;
}

export interface SendResult {
  /** The message's id (it arrives on the stream with this id). */
  id: string;
  clientMsgId: string;
  /** How it went: over the open WebSocket or `POST …/danmaku`. */
  via: "ws" | "http";
}
