package io.danmaku.client;

import java.util.Optional;

/**
 * One event's outcome in an {@code events:batch}.
 *
 * @param index the event's position in the list given to the client
 * @param idempotencyKey its key
 * @param status 202 when accepted, else the status of its refusal
 * @param id the stored message's id when accepted, else null
 * @param replayed accepted earlier under this key: nothing new was stored
 * @param error the typed refusal when not accepted, else null
 */
public record BatchEventResult(
        int index,
        String idempotencyKey,
        int status,
        String id,
        boolean replayed,
        DanmakuException error) {

    public boolean accepted() {
        return error == null;
    }

    public Optional<DanmakuException> failure() {
        return Optional.ofNullable(error);
    }
}
