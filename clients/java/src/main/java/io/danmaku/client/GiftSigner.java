package io.danmaku.client;

import java.nio.charset.StandardCharsets;
import java.security.InvalidKeyException;
import java.security.NoSuchAlgorithmException;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The gift backend's request signature, v2: {@code X-Signature: v2=<hex HMAC-SHA256>} over
 * {@code "<X-Timestamp>\n<METHOD>\n<path>\n<Idempotency-Key>\n<raw body>"}.
 *
 * <p>{@code path} is the request path exactly as sent, without the query string (for example
 * {@code /v1/rooms/r1/events}); for {@code events:batch} the key line is empty. Binding the
 * method, path and key means a captured request cannot be replayed into another room or under
 * another key.
 */
public final class GiftSigner {
    /** The header that carries the signature. */
    public static final String SIGNATURE_HEADER = "X-Signature";
    /** The header that carries the signing time, unix seconds. */
    public static final String TIMESTAMP_HEADER = "X-Timestamp";

    private GiftSigner() {}

    /** The bytes v2 signs (exposed for tests and debugging a mismatch). */
    public static byte[] canonical(
            String timestamp, String method, String path, String idempotencyKey, byte[] body) {
        // The server refuses a newline in these (HTTP cannot carry one); refusing it here
        // keeps the canonical string unambiguous.
        for (String part : new String[] {timestamp, method, path, idempotencyKey}) {
            if (part.indexOf('\n') >= 0) {
                throw new IllegalArgumentException("signed header values cannot hold a newline");
            }
        }
        byte[] head =
                String.join("\n", timestamp, method, path, idempotencyKey, "")
                        .getBytes(StandardCharsets.UTF_8);
        byte[] all = new byte[head.length + body.length];
        System.arraycopy(head, 0, all, 0, head.length);
        System.arraycopy(body, 0, all, head.length, body.length);
        return all;
    }

    /** The {@code X-Signature} value: {@code v2=} and 64 lower-case hex digits. */
    public static String sign(
            String secret,
            String timestamp,
            String method,
            String path,
            String idempotencyKey,
            byte[] body) {
        if (secret == null || secret.isEmpty()) {
            throw new IllegalArgumentException("the gift secret is empty");
        }
        byte[] mac = hmacSha256(secret.getBytes(StandardCharsets.UTF_8),
                canonical(timestamp, method, path, idempotencyKey, body));
        return "v2=" + hex(mac);
    }

    private static byte[] hmacSha256(byte[] key, byte[] data) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            return mac.doFinal(data);
        } catch (NoSuchAlgorithmException | InvalidKeyException e) {
            // Every Java platform ships HmacSHA256, and any non-empty key is valid for it.
            throw new IllegalStateException("HmacSHA256 is unavailable", e);
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            out.append(Character.forDigit((b >> 4) & 0xf, 16)).append(Character.forDigit(b & 0xf, 16));
        }
        return out.toString();
    }
}
