package io.danmaku.client;

import java.time.Duration;
import java.util.Optional;

/**
 * A request the server refused, or could not be asked. The server answers errors as {@code
 * {"error": {"code", "message"}}}: {@link #status()}, {@link #code()} and {@link
 * #serverMessage()} carry them as sent. Subclasses say what to do about it; {@link
 * #isRetryable()} says whether sending the same request again (same Idempotency-Key) may succeed.
 */
public class DanmakuException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The HTTP status; 0 when no answer came (see {@link TransportException}). */
    private final int status;
    /** The server's machine-readable code, e.g. {@code bad_signature}. */
    private final String code;
    /** The server's human-readable message. */
    private final String serverMessage;
    /** The server's {@code Retry-After}, when it sent one. */
    private final Duration retryAfter;

    public DanmakuException(int status, String code, String serverMessage, Duration retryAfter) {
        this(status, code, serverMessage, retryAfter, null);
    }

    protected DanmakuException(
            int status, String code, String serverMessage, Duration retryAfter, Throwable cause) {
        super(describe(status, code, serverMessage), cause);
        this.status = status;
        this.code = code;
        this.serverMessage = serverMessage;
        this.retryAfter = retryAfter;
    }

    private static String describe(int status, String code, String message) {
        return (status == 0 ? "no answer" : "HTTP " + status) + " " + code + ": " + message;
    }

    public int status() {
        return status;
    }

    public String code() {
        return code;
    }

    public String serverMessage() {
        return serverMessage;
    }

    /** How long the server asked to wait before trying again. */
    public Optional<Duration> retryAfter() {
        return Optional.ofNullable(retryAfter);
    }

    /** Whether the same request (same key, freshly signed) may succeed later. */
    public boolean isRetryable() {
        return false;
    }
}
