package io.danmaku.client;

import java.time.Duration;

/**
 * 5xx: the server could not take the request now (503 {@code bus_full}, {@code
 * bus_unavailable}, {@code store_unavailable}, {@code shutting_down}, usually with {@code
 * Retry-After}; a 500/502/504 from the server or a proxy; or 408 {@code body_timeout}: the body
 * did not arrive in time). Retried.
 */
public class ServerUnavailableException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    public ServerUnavailableException(
            int status, String code, String serverMessage, Duration retryAfter) {
        super(status, code, serverMessage, retryAfter);
    }

    @Override
    public boolean isRetryable() {
        return true;
    }
}
