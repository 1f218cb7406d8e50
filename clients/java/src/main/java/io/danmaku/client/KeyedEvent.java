package io.danmaku.client;

import java.util.Objects;

/**
 * An event with its Idempotency-Key, for {@code events:batch}. Use a key that names the
 * business fact (your order id): the server stores one event per key and room, however often
 * it is sent, so a batch can be re-sent as a whole after any failure.
 */
public record KeyedEvent(String idempotencyKey, Event event) {
    public KeyedEvent {
        Objects.requireNonNull(idempotencyKey, "idempotencyKey");
        Objects.requireNonNull(event, "event");
    }
}
