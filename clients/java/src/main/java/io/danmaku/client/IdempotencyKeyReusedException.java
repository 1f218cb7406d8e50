package io.danmaku.client;

/**
 * 422 {@code idempotency_key_reused}: this Idempotency-Key was already used in this room for a
 * different event. The first event stands; use a new key for a new event.
 */
public class IdempotencyKeyReusedException extends InvalidRequestException {
    private static final long serialVersionUID = 1L;

    public IdempotencyKeyReusedException(String serverMessage) {
        super(422, "idempotency_key_reused", serverMessage);
    }
}
