package io.danmaku.client;

import java.time.Duration;

/**
 * 429 ({@code rate_limited}, or {@code overloaded}: the room is behind and sheds this priority
 * for now). Retried after {@link #retryAfter()}.
 */
public class RateLimitedException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    public RateLimitedException(String code, String serverMessage, Duration retryAfter) {
        super(429, code, serverMessage, retryAfter);
    }

    @Override
    public boolean isRetryable() {
        return true;
    }
}
