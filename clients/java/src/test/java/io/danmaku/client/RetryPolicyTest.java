package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.time.Duration;
import java.util.HashSet;
import java.util.Optional;
import java.util.Random;
import java.util.Set;
import org.junit.jupiter.api.Test;

class RetryPolicyTest {
    private static final RetryPolicy POLICY =
            new RetryPolicy(5, Duration.ofMillis(100), Duration.ofMillis(1000), Duration.ofSeconds(30));

    private static final DanmakuException UNAVAILABLE =
            new ServerUnavailableException(503, "bus_full", "full", null);

    @Test
    void backoffDoublesWithinEqualJitterBoundsAndStopsAtTheCap() {
        long[] steps = {100, 200, 400, 800, 1000, 1000, 1000};
        for (int retry = 1; retry <= steps.length; retry++) {
            long step = steps[retry - 1];
            assertEquals(Duration.ofMillis(step / 2), POLICY.backoff(retry, () -> 0.0), "floor of retry " + retry);
            Duration top = POLICY.backoff(retry, () -> 0.999999);
            assertTrue(top.compareTo(Duration.ofMillis(step)) <= 0 && top.compareTo(Duration.ofMillis(step - 1)) >= 0,
                    "top of retry " + retry + ": " + top);
        }
        // Far past the cap the doubling neither overflows nor leaves [cap/2, cap].
        Duration far = POLICY.backoff(10_000, () -> 0.999999999);
        assertTrue(far.compareTo(Duration.ofMillis(500)) >= 0 && far.compareTo(Duration.ofMillis(1000)) <= 0, far.toString());
    }

    @Test
    void jitterSpreadsClientsThatFailedTogether() {
        Random random = new Random(42);
        Set<Duration> seen = new HashSet<>();
        for (int i = 0; i < 50; i++) {
            Duration d = POLICY.backoff(3, random::nextDouble);
            assertTrue(d.compareTo(Duration.ofMillis(200)) >= 0 && d.compareTo(Duration.ofMillis(400)) <= 0, d.toString());
            seen.add(d);
        }
        assertTrue(seen.size() > 40, "jitter gives distinct delays, got " + seen.size());
    }

    @Test
    void onlyRetryableFailuresAreRetriedAndAttemptsAreBounded() {
        assertTrue(POLICY.delayBeforeRetry(1, UNAVAILABLE, () -> 0.5).isPresent());
        assertTrue(POLICY.delayBeforeRetry(4, UNAVAILABLE, () -> 0.5).isPresent());
        assertEquals(Optional.empty(), POLICY.delayBeforeRetry(5, UNAVAILABLE, () -> 0.5), "5 attempts in all");
        assertTrue(POLICY.delayBeforeRetry(1, new TransportException("reset", new IOException(), true), () -> 0.5).isPresent());
        assertTrue(POLICY.delayBeforeRetry(1, new RateLimitedException("overloaded", "behind", null), () -> 0.5).isPresent());
        assertTrue(POLICY.delayBeforeRetry(1, new InProgressException("busy"), () -> 0.5).isPresent());
        for (DanmakuException wrong : new DanmakuException[] {
            new BadSignatureException("no"),
            new UnauthorizedException("stale_timestamp", "clock"),
            new InvalidRequestException(400, "invalid_body", "bad"),
            new IdempotencyKeyReusedException("other event"),
            new TransportException("interrupted", new InterruptedException(), false),
        }) {
            assertEquals(Optional.empty(), POLICY.delayBeforeRetry(1, wrong, () -> 0.5), wrong.getMessage());
        }
        assertEquals(Optional.empty(), RetryPolicy.none().delayBeforeRetry(1, UNAVAILABLE, () -> 0.5));
    }

    @Test
    void retryAfterIsHonouredWhenLongerThanTheBackoffAndEndsRetriesPastTheLimit() {
        DanmakuException wait3 = new ServerUnavailableException(503, "bus_full", "full", Duration.ofSeconds(3));
        assertEquals(Optional.of(Duration.ofSeconds(3)), POLICY.delayBeforeRetry(1, wait3, () -> 0.5));
        DanmakuException wait0 = new RateLimitedException("rate_limited", "slow", Duration.ZERO);
        assertEquals(Optional.of(POLICY.backoff(2, () -> 0.5)), POLICY.delayBeforeRetry(2, wait0, () -> 0.5));
        DanmakuException wait60 = new RateLimitedException("overloaded", "behind", Duration.ofSeconds(60));
        assertEquals(Optional.empty(), POLICY.delayBeforeRetry(1, wait60, () -> 0.5));
    }

    @Test
    void nonsensePoliciesAreRefused() {
        assertThrows(IllegalArgumentException.class,
                () -> new RetryPolicy(0, Duration.ZERO, Duration.ZERO, Duration.ZERO));
        assertThrows(IllegalArgumentException.class,
                () -> new RetryPolicy(3, Duration.ofSeconds(2), Duration.ofSeconds(1), Duration.ZERO));
        assertThrows(IllegalArgumentException.class, () -> POLICY.backoff(0, () -> 0.5));
        assertNotEquals(RetryPolicy.defaults(), RetryPolicy.none());
    }
}
