// What a transport is to the client: it opens one connection and reports
// through callbacks until it goes down (once) or the client closes it.

import type { Batch, FetchLike, Hello, TransportKind, WebSocketConstructor } from "../types.js";

export interface TransportCallbacks {
  hello(hello: Hello): void;
  batch(batch: Batch): void;
  retract(ids: string[]): void;
  /** The room's viewer count over every front changed (`online` frame). */
  online(count: number): void;
  /** WebSocket answers to the client's own frames: ack, error, auth_ok, pong. */
  reply(frame: Record<string, unknown>): void;
  /** The connection ended (not called after `close()`). */
  down(reason: string): void;
}

export interface Connection {
  /** Ends the connection without a `down` call. */
  close(): void;
  /** WebSocket only: writes a frame; `false` if the socket is not open. */
  send?(frame: object): boolean;
}

export interface TransportContext {
  /** The transport's URL with the client's current cursor and epoch (and `extra`) in the query. */
  url(kind: TransportKind, extra?: Record<string, string | number>): string;
  WebSocket: WebSocketConstructor | undefined;
  fetch: FetchLike;
  pingIntervalMs: number;
  pollWaitMs: number;
  /** A stream that says nothing this long (not even the server's keep-alive) is dead. */
  silentAfterMs: number;
}

export type Transport = (ctx: TransportContext, cb: TransportCallbacks) => Connection;

/** Parses a frame's JSON; `null` for anything else (never throws). */
export function parseFrame(text: string): Record<string, any> | null {
  try {
    const v = JSON.parse(text);
    return v && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}
