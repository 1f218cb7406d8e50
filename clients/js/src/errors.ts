// A refusal or failure the SDK reports to its caller.

/** Where an error came from: the server said no, the network failed, or the SDK refused before asking. */
export type ErrorSource = "server" | "transport" | "client";

/**
 * `code` is the server's error code (`blocked_content`, `rate_limited`,
 * `empty_text`, `invalid_token`, …: src/http/openapi.json) when `source` is
 * "server"; `network`, `timeout`, `closed` or `not_connected` otherwise.
 */
export class DanmakuError extends Error {
  readonly code: string;
  /** HTTP status of the refusal (0 when it came over the WebSocket or never reached the server). */
  readonly status: number;
  /** Seconds to wait before trying again, when the server said (`rate_limited`). */
  readonly retryAfter: number | null;
  readonly source: ErrorSource;

  constructor(
    code: string,
    message: string,
    opts: { status?: number; retryAfter?: number | null; source?: ErrorSource } = {},
  ) {
    super(message);
    this.name = "DanmakuError";
    this.code = code;
    this.status = opts.status ?? 0;
    this.retryAfter = opts.retryAfter ?? null;
    this.source = opts.source ?? "server";
  }
}

/** The error an HTTP answer that is not 2xx carries (`{"error":{"code","message"}}`). */
export async function errorFromResponse(res: Response): Promise<DanmakuError> {
  let code = "http_error";
  let message = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error.code === "string") {
      code = body.error.code;
      message = String(body.error.message ?? message);
    }
  } catch {
    // not JSON: keep the status
  }
  const ra = Number(res.headers.get("retry-after"));
  const retryAfter = Number.isFinite(ra) && ra > 0 ? ra : null;
  return new DanmakuError(code, message, { status: res.status, retryAfter });
}
