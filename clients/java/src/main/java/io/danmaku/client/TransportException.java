package io.danmaku.client;

/**
 * No answer: the connection was refused, reset or timed out ({@code status() == 0}, {@code
 * code() == "transport"}). The event may or may not have been stored; retrying with the same
 * Idempotency-Key is safe either way. An interrupted send is not retried.
 */
public class TransportException extends DanmakuException {
    private static final long serialVersionUID = 1L;

    /** False when the calling thread was interrupted: it wants to stop, not to wait and retry. */
    private final boolean retryable;

    public TransportException(String what, Throwable cause, boolean retryable) {
        super(0, "transport", what, null, cause);
        this.retryable = retryable;
    }

    @Override
    public boolean isRetryable() {
        return retryable;
    }
}
