package io.danmaku.client;

/**
 * The server's 202 for an event.
 *
 * @param id the stored message's id (the same on every retry)
 * @param replayed true when the server had this key already: nothing new was stored
 * @param idempotencyKey the key the event was sent with (persist it to re-send safely later)
 * @param attempts how many requests it took (1 without retries)
 */
public record Accepted(String id, boolean replayed, String idempotencyKey, int attempts) {}
