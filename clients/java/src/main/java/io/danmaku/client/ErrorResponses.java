package io.danmaku.client;

import java.time.Clock;
import java.time.Duration;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.util.Map;
import java.util.Optional;

/** Turns a refused answer (status, {@code Retry-After}, JSON error body) into its typed error. */
public final class ErrorResponses {
    private ErrorResponses() {}

    /**
     * The typed error for a non-2xx answer. {@code body} is the server's {@code {"error":
     * {"code", "message"}}}; a body that is not (a proxy's HTML page) gives the code {@code
     * http_<status>} and the body's start as the message.
     */
    public static DanmakuException toException(
            int status, String body, Optional<String> retryAfterHeader, Clock clock) {
        String[] codeAndMessage = codeAndMessage(status, body);
        String code = codeAndMessage[0];
        String message = codeAndMessage[1];
        Duration retryAfter = retryAfterHeader.flatMap(h -> parseRetryAfter(h, clock)).orElse(null);
        if (status == 401) {
            return code.equals("bad_signature")
                    ? new BadSignatureException(message)
                    : new UnauthorizedException(code, message);
        }
        if (status == 409 && code.equals("in_progress")) {
            return new InProgressException(message);
        }
        if (status == 422 && code.equals("idempotency_key_reused")) {
            return new IdempotencyKeyReusedException(message);
        }
        if (status == 429) {
            return new RateLimitedException(code, message, retryAfter);
        }
        if (status >= 500 || status == 408) {
            return new ServerUnavailableException(status, code, message, retryAfter);
        }
        if (status >= 400) {
            return new InvalidRequestException(status, code, message);
        }
        // 1xx/3xx (a redirect this client does not follow): nothing to retry, nothing stored.
        return new DanmakuException(status, code, message, retryAfter);
    }

    /**
     * The error of one event in an {@code events:batch} answer: {@code {"status", "error":
     * {"code", "message"}, "retry_after_s"?}}.
     */
    static DanmakuException fromBatchItem(Map<?, ?> item, Clock clock) {
        int status = ((Number) item.get("status")).intValue();
        Object after = item.get("retry_after_s");
        Optional<String> retryAfter =
                after instanceof Number n ? Optional.of(Long.toString(n.longValue())) : Optional.empty();
        Object error = item.get("error");
        String body = error == null ? "" : Json.write(Map.of("error", error));
        return toException(status, body, retryAfter, clock);
    }

    /** {@code Retry-After}: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). */
    static Optional<Duration> parseRetryAfter(String value, Clock clock) {
        String v = value.trim();
        try {
            long seconds = Long.parseLong(v);
            return seconds >= 0 ? Optional.of(Duration.ofSeconds(seconds)) : Optional.empty();
        } catch (NumberFormatException notSeconds) {
            try {
                ZonedDateTime at = ZonedDateTime.parse(v, DateTimeFormatter.RFC_1123_DATE_TIME);
                Duration d = Duration.between(clock.instant(), at.toInstant());
                return Optional.of(d.isNegative() ? Duration.ZERO : d);
            } catch (DateTimeParseException notADate) {
                return Optional.empty();
            }
        }
    }

    private static String[] codeAndMessage(int status, String body) {
        try {
            if (Json.parse(body) instanceof Map<?, ?> map) {
                Object error = map.get("error");
                if (error instanceof Map<?, ?> detail && detail.get("code") instanceof String code) {
                    return new String[] {code, String.valueOf(detail.get("message"))};
                }
                // The flat form {"error": code, "message": ...} some proxies and older servers use.
                if (error instanceof String code) {
                    return new String[] {code, String.valueOf(map.get("message"))};
                }
            }
        } catch (IllegalArgumentException notJson) {
            // Fall through: not the server's error body.
        }
        String start = body.length() > 200 ? body.substring(0, 200) + "…" : body;
        return new String[] {"http_" + status, start};
    }
}
