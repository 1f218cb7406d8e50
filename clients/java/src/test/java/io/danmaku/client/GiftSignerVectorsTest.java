package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The v2 signature against the vectors the server and the other clients share
 * (tests/vectors/gift_signature_v2.json): byte-for-byte the same canonical string and MAC.
 */
class GiftSignerVectorsTest {
    /** The vectors file; the pom points {@code danmaku.vectors} at ../../tests/vectors. */
    static Path vectorsFile() {
        String dir = System.getProperty("danmaku.vectors", "../../tests/vectors");
        return Path.of(dir, "gift_signature_v2.json");
    }

    static List<?> cases() throws IOException {
        Path file = vectorsFile();
        assertTrue(Files.isRegularFile(file), "shared vectors not found at " + file.toAbsolutePath());
        Map<?, ?> doc = (Map<?, ?>) Json.parse(Files.readString(file, StandardCharsets.UTF_8));
        List<?> cases = (List<?>) doc.get("cases");
        assertFalse(cases.isEmpty(), "the vectors file holds no case");
        return cases;
    }

    private static String str(Map<?, ?> c, String field) {
        return (String) c.get(field);
    }

    @Test
    void canonicalStringAndSignatureMatchEverySharedVector() throws IOException {
        List<?> cases = cases();
        for (Object o : cases) {
            Map<?, ?> c = (Map<?, ?>) o;
            byte[] body = str(c, "body").getBytes(StandardCharsets.UTF_8);
            byte[] canonical = GiftSigner.canonical(
                    str(c, "timestamp"), str(c, "method"), str(c, "path"), str(c, "idempotency_key"), body);
            assertArrayEquals(str(c, "canonical").getBytes(StandardCharsets.UTF_8), canonical,
                    "canonical of " + c.get("name"));
            String signature = GiftSigner.sign(str(c, "secret"), str(c, "timestamp"), str(c, "method"),
                    str(c, "path"), str(c, "idempotency_key"), body);
            assertEquals(str(c, "signature"), signature, "signature of " + c.get("name"));
        }
        // The file covers the shapes the client sends: a batch (empty key line) and an empty body.
        assertTrue(cases.stream().anyMatch(o -> "".equals(((Map<?, ?>) o).get("idempotency_key"))));
        assertTrue(cases.stream().anyMatch(o -> "".equals(((Map<?, ?>) o).get("body"))));
    }

    @Test
    void everySignedPartChangesTheSignature() throws IOException {
        Map<?, ?> c = (Map<?, ?>) cases().get(0);
        String ts = str(c, "timestamp");
        String path = str(c, "path");
        String key = str(c, "idempotency_key");
        byte[] body = str(c, "body").getBytes(StandardCharsets.UTF_8);
        String secret = str(c, "secret");
        String good = GiftSigner.sign(secret, ts, "POST", path, key, body);
        assertEquals(str(c, "signature"), good);
        assertNotEquals(good, GiftSigner.sign(secret + "x", ts, "POST", path, key, body));
        assertNotEquals(good, GiftSigner.sign(secret, ts + "1", "POST", path, key, body));
        assertNotEquals(good, GiftSigner.sign(secret, ts, "PUT", path, key, body));
        assertNotEquals(good, GiftSigner.sign(secret, ts, "POST", path + "x", key, body));
        assertNotEquals(good, GiftSigner.sign(secret, ts, "POST", path, key + "x", body));
        byte[] tampered = body.clone();
        tampered[tampered.length - 2]++;
        assertNotEquals(good, GiftSigner.sign(secret, ts, "POST", path, key, tampered));
    }

    @Test
    void newlinesInSignedHeadersAndEmptySecretsAreRefused() {
        byte[] body = new byte[0];
        assertThrows(IllegalArgumentException.class, () -> GiftSigner.sign("s", "0", "POST", "/p", "a\nb", body));
        assertThrows(IllegalArgumentException.class, () -> GiftSigner.sign("", "0", "POST", "/p", "k", body));
    }
}
