package io.danmaku.client;

/**
 * 401 {@code bad_signature}: no secret the server lists signs this request the way it was
 * received. Usually the secret is not (or no longer) configured on the server; otherwise
 * something between client and server changed the method, path, key or body.
 */
public class BadSignatureException extends UnauthorizedException {
    private static final long serialVersionUID = 1L;

    public BadSignatureException(String serverMessage) {
        super("bad_signature", serverMessage);
    }
}
