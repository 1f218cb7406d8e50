package io.danmaku.client;

import java.time.Duration;
import java.util.Objects;
import java.util.Optional;
import java.util.function.DoubleSupplier;

/**
 * When to send a refused request again: only {@linkplain DanmakuException#isRetryable()
 * retryable} failures (no answer, 5xx, 408, 409 {@code in_progress}, 429), at most {@code
 * maxAttempts} requests in all, waiting a jittered exponential backoff — or the server's {@code
 * Retry-After} when that is longer. A {@code Retry-After} longer than {@code maxRetryAfter} ends
 * the retries: the caller gets the error (with its retry-after) instead of a blocked thread.
 *
 * @param maxAttempts requests in all, at least 1 (1 = no retry)
 * @param baseDelay the backoff before the first retry; it doubles for each further one
 * @param maxDelay the backoff never exceeds this
 * @param maxRetryAfter the longest {@code Retry-After} waited for
 */
public record RetryPolicy(
        int maxAttempts, Duration baseDelay, Duration maxDelay, Duration maxRetryAfter) {

    public RetryPolicy {
        if (maxAttempts < 1) {
            throw new IllegalArgumentException("maxAttempts must be at least 1");
        }
        Objects.requireNonNull(baseDelay, "baseDelay");
        Objects.requireNonNull(maxDelay, "maxDelay");
        Objects.requireNonNull(maxRetryAfter, "maxRetryAfter");
        if (baseDelay.isNegative() || maxDelay.compareTo(baseDelay) < 0) {
            throw new IllegalArgumentException("need 0 <= baseDelay <= maxDelay");
        }
    }

    /** 4 attempts, 200 ms doubling up to 5 s, Retry-After honoured up to 30 s. */
    public static RetryPolicy defaults() {
        return new RetryPolicy(4, Duration.ofMillis(200), Duration.ofSeconds(5), Duration.ofSeconds(30));
    }

    /** One attempt: every failure goes straight to the caller. */
    public static RetryPolicy none() {
        return new RetryPolicy(1, Duration.ZERO, Duration.ZERO, Duration.ZERO);
    }

    /**
     * The backoff before retry number {@code retry} (1 = the second request): {@code
     * min(maxDelay, baseDelay · 2^(retry-1))}, of which the upper half is jittered ("equal
     * jitter"), so clients that failed together do not come back together, yet each waits at
     * least half the step.
     *
     * @param random uniform in [0, 1)
     */
    public Duration backoff(int retry, DoubleSupplier random) {
        if (retry < 1) {
            throw new IllegalArgumentException("retry counts from 1");
        }
        long base = baseDelay.toNanos();
        long cap = maxDelay.toNanos();
        // Doubling stops at the cap (and before a long overflows).
        long step = base;
        for (int i = 1; i < retry && step < cap; i++) {
            step = step > cap / 2 ? cap : step * 2;
        }
        step = Math.min(step, cap);
        long half = step / 2;
        return Duration.ofNanos(half + (long) (random.getAsDouble() * (step - half)));
    }

    /**
     * How long to wait before the next request, after {@code attemptsMade} requests of which the
     * last failed with {@code failure}; empty when it must not be retried.
     */
    public Optional<Duration> delayBeforeRetry(
            int attemptsMade, DanmakuException failure, DoubleSupplier random) {
        if (!failure.isRetryable() || attemptsMade >= maxAttempts) {
            return Optional.empty();
        }
        Duration backoff = backoff(attemptsMade, random);
        Optional<Duration> asked = failure.retryAfter();
        if (asked.isEmpty()) {
            return Optional.of(backoff);
        }
        if (asked.get().compareTo(maxRetryAfter) > 0) {
            return Optional.empty();
        }
        return Optional.of(asked.get().compareTo(backoff) > 0 ? asked.get() : backoff);
    }
}
