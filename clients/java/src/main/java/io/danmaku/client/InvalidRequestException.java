package io.danmaku.client;

/**
 * A 4xx that means the request itself is wrong (400 {@code invalid_body}, {@code bad_room},
 * {@code bad_id}, {@code missing_gift}, …; 404; 413 {@code body_too_large}, {@code
 * too_many_events}): sending it again cannot succeed, so it is never retried.
 */
public class InvalidRequestException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    public InvalidRequestException(int status, String code, String serverMessage) {
        super(status, code, serverMessage, null);
    }
}
