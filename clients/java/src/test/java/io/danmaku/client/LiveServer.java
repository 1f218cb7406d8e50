package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.function.Predicate;

/**
 * The real server the integration tests talk to, started by clients/java/test.sh: {@code
 * DANMAKU_URL} and {@code DANMAKU_TEST_GIFT_SECRETS} (the secrets it lists, comma-separated).
 * Without them, or without an answer, the tests fail: they never pass by skipping.
 */
final class LiveServer {
    final URI url;
    /** The gift secrets the server lists, in rotation order (old, new). */
    final List<String> secrets;
    final HttpClient http = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();

    private LiveServer(URI url, List<String> secrets) {
        this.url = url;
        this.secrets = secrets;
    }

    /** The server from the environment, checked to answer {@code /healthz}. */
    static LiveServer fromEnvironment() {
        String url = setting("DANMAKU_URL");
        List<String> secrets = List.of(setting("DANMAKU_TEST_GIFT_SECRETS").split(","));
        if (secrets.size() < 2) {
            fail("DANMAKU_TEST_GIFT_SECRETS must list two secrets (old,new) the server accepts");
        }
        LiveServer server = new LiveServer(URI.create(url), secrets);
        try {
            HttpResponse<String> res = server.get("/healthz");
            assertEquals(200, res.statusCode(), "GET /healthz on " + url + ": " + res.body());
        } catch (IOException e) {
            fail("the danmaku server at " + url + " does not answer: " + e);
        }
        return server;
    }

    private static String setting(String name) {
        String value = System.getenv(name);
        if (value == null || value.isBlank()) {
            value = System.getProperty(name);
        }
        if (value == null || value.isBlank()) {
            fail(name + " is not set: run clients/java/test.sh, which starts a server for these tests");
        }
        return value;
    }

    /** A client signing with {@code secret}, retrying quickly (a healthy server rarely needs it). */
    GiftClient client(String secret) {
        return GiftClient.builder(url)
                .secret(secret)
                .retryPolicy(new RetryPolicy(3, Duration.ofMillis(100), Duration.ofSeconds(1), Duration.ofSeconds(5)))
                .build();
    }

    /** A room no other test (or earlier run) used. */
    static String newRoom() {
        return "java-" + UUID.randomUUID().toString().replace("-", "").substring(0, 16);
    }

    HttpResponse<String> get(String path) throws IOException {
        HttpRequest req = HttpRequest.newBuilder(url.resolve(path)).timeout(Duration.ofSeconds(10)).GET().build();
        try {
            return http.send(req, HttpResponse.BodyHandlers.ofString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        }
    }

    HttpResponse<String> post(String path, Map<String, String> headers, String body) throws IOException {
        HttpRequest.Builder req = HttpRequest.newBuilder(url.resolve(path))
                .timeout(Duration.ofSeconds(10))
                .POST(HttpRequest.BodyPublishers.ofString(body));
        headers.forEach(req::header);
        try {
            return http.send(req.build(), HttpResponse.BodyHandlers.ofString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        }
    }

    /** Every message of the room's snapshot (all buckets): what a viewer opening the room sees. */
    List<Map<?, ?>> messages(String room) throws IOException {
        HttpResponse<String> res = get("/v1/rooms/" + room + "/snapshot");
        assertEquals(200, res.statusCode(), "snapshot of " + room + ": " + res.body());
        Map<?, ?> buckets = (Map<?, ?>) ((Map<?, ?>) Json.parse(res.body())).get("buckets");
        List<Map<?, ?>> all = new ArrayList<>();
        for (String bucket : List.of("whitelist", "high", "low")) {
            for (Object m : (List<?>) buckets.get(bucket)) {
                all.add((Map<?, ?>) m);
            }
        }
        return all;
    }

    /**
     * The room's messages once {@code done} holds for them (the store is written asynchronously
     * after the 202); fails after 15 s with what the room held.
     */
    List<Map<?, ?>> awaitMessages(String room, Predicate<List<Map<?, ?>>> done, String what)
            throws IOException, InterruptedException {
        long deadline = System.nanoTime() + Duration.ofSeconds(15).toNanos();
        List<Map<?, ?>> seen = messages(room);
        while (!done.test(seen)) {
            if (System.nanoTime() > deadline) {
                fail("room " + room + " never showed " + what + "; it holds " + seen);
            }
            Thread.sleep(200);
            seen = messages(room);
        }
        return seen;
    }

    /** Waits until every id is in the room and returns the room's messages then. */
    List<Map<?, ?>> awaitIds(String room, List<String> ids) throws IOException, InterruptedException {
        return awaitMessages(room, ms -> ids.stream().allMatch(id -> count(ms, id) > 0), "the messages " + ids);
    }

    static long count(List<Map<?, ?>> messages, String id) {
        return messages.stream().filter(m -> id.equals(m.get("id"))).count();
    }
}
