package io.danmaku.client;

/**
 * 409 {@code in_progress}: an earlier request with the same key is still being handled (for
 * example a retry that overtook a slow first attempt). Retried: it then gets the first answer.
 */
public class InProgressException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    public InProgressException(String serverMessage) {
        super(409, "in_progress", serverMessage, null);
    }

    @Override
    public boolean isRetryable() {
        return true;
    }
}
