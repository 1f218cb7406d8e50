package io.danmaku.client;

/**
 * 401: the signature headers were refused ({@code missing_signature}, {@code bad_timestamp},
 * {@code stale_timestamp} — check the clock — or {@code bad_signature}). Not retried.
 */
public class UnauthorizedException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    public UnauthorizedException(String code, String serverMessage) {
        super(401, code, serverMessage, null);
    }
}
