// Gift-backend request signature v2 (docs/protocol.md §9.1), for Node or
// browser backends that post signed events: HMAC-SHA256 over
// "<timestamp>\n<METHOD>\n<path>\n<Idempotency-Key>\n<body>" with WebCrypto,
// so it needs no dependency. Kept out of the viewer bundle (its own entry,
// `danmaku-client/gift-signature`): viewers never hold a gift secret.

/** What one signed request binds. */
export interface GiftRequest {
  /** Unix seconds, as sent in `X-Timestamp`. */
  timestamp: string | number;
  /** `POST`. */
  method: string;
  /** The request path as the server receives it, without the query string. */
  path: string;
  /** The request's `Idempotency-Key`; empty for `events:batch`. */
  idempotencyKey: string;
  /** The exact body bytes sent. */
  body: string | Uint8Array;
}

/** The string the signature covers (see the shared test vectors in tests/vectors/). */
export function canonicalGiftRequest(r: GiftRequest): Uint8Array<ArrayBuffer> {
  const enc = new TextEncoder();
  const head = enc.encode(`${r.timestamp}\n${r.method.toUpperCase()}\n${r.path}\n${r.idempotencyKey}\n`);
  const body = typeof r.body === "string" ? enc.encode(r.body) : r.body;
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

/** The `X-Signature` header value: `v2=<hex HMAC-SHA256>`. */
export async function signGiftRequest(secret: string, r: GiftRequest): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new Error("signGiftRequest needs WebCrypto (globalThis.crypto.subtle)");
  const key = await subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(await subtle.sign("HMAC", key, canonicalGiftRequest(r)));
  return "v2=" + Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The three headers of a signed request, timestamped now unless given. */
export async function giftRequestHeaders(
  secret: string,
  r: Omit<GiftRequest, "timestamp"> & { timestamp?: string | number },
): Promise<Record<string, string>> {
  const timestamp = String(r.timestamp ?? Math.floor(Date.now() / 1000));
  const headers: Record<string, string> = {
    "X-Timestamp": timestamp,
    "X-Signature": await signGiftRequest(secret, { ...r, timestamp }),
  };
  if (r.idempotencyKey) headers["Idempotency-Key"] = r.idempotencyKey;
  return headers;
}
