package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/** The server's error bodies (src/error.rs: {"error": {"code", "message"}}) become typed errors. */
class ErrorResponsesTest {
    private static final Clock CLOCK = Clock.fixed(Instant.parse("2026-12-07T00:00:00Z"), ZoneOffset.UTC);

    private static DanmakuException map(int status, String code, Optional<String> retryAfter) {
        String body = "{\"error\":{\"code\":\"" + code + "\",\"message\":\"why " + code + "\"}}";
        return ErrorResponses.toException(status, body, retryAfter, CLOCK);
    }

    @Test
    void eachStatusAndCodeHasItsType() {
        assertInstanceOf(BadSignatureException.class, map(401, "bad_signature", Optional.empty()));
        DanmakuException stale = map(401, "stale_timestamp", Optional.empty());
        assertEquals(UnauthorizedException.class, stale.getClass());
        assertInstanceOf(InvalidRequestException.class, map(400, "invalid_body", Optional.empty()));
        assertInstanceOf(InvalidRequestException.class, map(413, "too_many_events", Optional.empty()));
        assertInstanceOf(InvalidRequestException.class, map(404, "not_found", Optional.empty()));
        assertInstanceOf(IdempotencyKeyReusedException.class, map(422, "idempotency_key_reused", Optional.empty()));
        assertInstanceOf(InProgressException.class, map(409, "in_progress", Optional.empty()));
        assertInstanceOf(RateLimitedException.class, map(429, "overloaded", Optional.of("2")));
        assertInstanceOf(ServerUnavailableException.class, map(503, "bus_full", Optional.of("1")));
        assertInstanceOf(ServerUnavailableException.class, map(408, "body_timeout", Optional.empty()));
        assertInstanceOf(ServerUnavailableException.class, map(502, "bad_gateway", Optional.empty()));
    }

    @Test
    void statusCodeMessageAndRetryAfterAreCarried() {
        DanmakuException e = map(503, "bus_full", Optional.of("7"));
        assertEquals(503, e.status());
        assertEquals("bus_full", e.code());
        assertEquals("why bus_full", e.serverMessage());
        assertEquals(Optional.of(Duration.ofSeconds(7)), e.retryAfter());
        assertTrue(e.isRetryable());
        assertTrue(e.getMessage().contains("503") && e.getMessage().contains("bus_full"), e.getMessage());
        DanmakuException bad = map(401, "bad_signature", Optional.empty());
        assertEquals(401, bad.status());
        assertEquals("bad_signature", bad.code());
        assertFalse(bad.isRetryable());
    }

    @Test
    void retryAfterMayBeAnHttpDate() {
        DanmakuException e = map(429, "rate_limited", Optional.of("Mon, 07 Dec 2026 00:00:05 GMT"));
        assertEquals(Optional.of(Duration.ofSeconds(5)), e.retryAfter());
        assertEquals(Optional.empty(), map(429, "rate_limited", Optional.of("soon")).retryAfter());
    }

    @Test
    void aBodyThatIsNotTheServersStillGivesATypedError() {
        DanmakuException e = ErrorResponses.toException(502, "<html>Bad Gateway</html>", Optional.empty(), CLOCK);
        assertInstanceOf(ServerUnavailableException.class, e);
        assertEquals("http_502", e.code());
        assertEquals("<html>Bad Gateway</html>", e.serverMessage());
        DanmakuException flat = ErrorResponses.toException(
                400, "{\"error\":\"invalid_body\",\"message\":\"m\"}", Optional.empty(), CLOCK);
        assertEquals("invalid_body", flat.code());
        assertEquals("m", flat.serverMessage());
    }
}
