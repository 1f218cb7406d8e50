package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.danmaku.client.StubServer.Received;
import io.danmaku.client.StubServer.Reply;
import java.io.IOException;
import java.net.ServerSocket;
import java.net.URI;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The client's retry behaviour against scripted answers (no real waiting: the sleeper records). */
@Timeout(30)
class GiftClientRetryTest {
    private static final String SECRET = "stub-secret";
    private static final RetryPolicy POLICY =
            new RetryPolicy(4, Duration.ofMillis(100), Duration.ofSeconds(2), Duration.ofSeconds(30));
    private static final Event GIFT = Event.gift("u9", "Bob", "rocket", 3, 100);

    /** Waits the client asked for, in order. */
    private final List<Duration> slept = new ArrayList<>();
    /** A clock that moves one second per reading, so each attempt has its own timestamp. */
    private final AtomicLong seconds = new AtomicLong(1_767_225_600L);
    private final Clock ticking = new Clock() {
        @Override
        public ZoneOffset getZone() {
            return ZoneOffset.UTC;
        }

        @Override
        public Clock withZone(java.time.ZoneId zone) {
            return this;
        }

        @Override
        public Instant instant() {
            return Instant.ofEpochSecond(seconds.getAndIncrement());
        }
    };

    private GiftClient.Builder client(URI url) {
        return GiftClient.builder(url)
                .secret(SECRET)
                .retryPolicy(POLICY)
                .clock(ticking)
                .jitter(() -> 0.0)
                .sleeper(slept::add)
                .requestTimeout(Duration.ofSeconds(5));
    }

    /** The request carries a valid v2 signature by {@code secret} over what was received. */
    private static void assertSignedBy(String secret, Received r) {
        String key = r.header("Idempotency-key") == null ? "" : r.header("Idempotency-key");
        String expected = GiftSigner.sign(secret, r.header("X-timestamp"), r.method(), r.rawPath(), key, r.body());
        assertEquals(expected, r.header("X-signature"), "signature of " + r.rawPath());
    }

    @Test
    void a503IsRetriedUnderTheSameKeyFreshlySignedAfterItsRetryAfter() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.error(503, "bus_full", Map.of("Retry-After", "2")),
                Reply.json(202, "{\"id\":\"m1\"}"))) {
            Accepted a = client(stub.url()).build().send("r1", "order-1001", GIFT);
            assertEquals(new Accepted("m1", false, "order-1001", 2), a);
            List<Received> got = stub.received();
            assertEquals(2, got.size());
            for (Received r : got) {
                assertEquals("/v1/rooms/r1/events", r.rawPath());
                assertEquals("order-1001", r.header("Idempotency-key"));
                assertEquals(GIFT.toJson(), r.bodyText());
                assertSignedBy(SECRET, r);
            }
            assertFalse(got.get(0).header("X-timestamp").equals(got.get(1).header("X-timestamp")),
                    "each attempt is signed at its own time");
            assertEquals(List.of(Duration.ofSeconds(2)), slept, "Retry-After honoured");
        }
    }

    @Test
    void aGeneratedKeyIsMadeOncePerSendAndReusedOnEveryRetry() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.error(500, "internal", Map.of()),
                Reply.error(409, "in_progress", Map.of()),
                Reply.json(202, "{\"id\":\"m2\"}"))) {
            AtomicLong made = new AtomicLong();
            GiftClient c = client(stub.url()).idempotencyKeys(() -> "gen-" + made.incrementAndGet()).build();
            Accepted a = c.send("r1", GIFT);
            assertEquals("gen-1", a.idempotencyKey());
            assertEquals(3, a.attempts());
            assertEquals(1, made.get());
            assertTrue(stub.received().stream().allMatch(r -> "gen-1".equals(r.header("Idempotency-key"))));
            assertEquals(List.of(Duration.ofMillis(50), Duration.ofMillis(100)), slept, "backoff, jitter at 0");
        }
    }

    @Test
    void requestsThatAreWrongAreNeverRetried() throws IOException {
        for (Reply wrong : new Reply[] {
            Reply.error(400, "invalid_body", Map.of()),
            Reply.error(401, "bad_signature", Map.of()),
            Reply.error(401, "stale_timestamp", Map.of()),
            Reply.error(413, "body_too_large", Map.of()),
            Reply.error(422, "idempotency_key_reused", Map.of()),
        }) {
            try (StubServer stub = new StubServer(wrong, Reply.json(202, "{\"id\":\"never\"}"))) {
                DanmakuException e = assertThrows(DanmakuException.class,
                        () -> client(stub.url()).build().send("r1", "k1", GIFT));
                assertEquals(wrong.status(), e.status());
                assertTrue(wrong.body().contains(e.code()), e.code());
                assertEquals(1, stub.received().size(), "not retried: " + e.code());
            }
        }
        assertEquals(List.of(), slept);
    }

    @Test
    void retriesAreBoundedAndTheLastErrorIsThrown() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.error(503, "store_unavailable", Map.of()),
                Reply.error(503, "store_unavailable", Map.of()),
                Reply.error(503, "store_unavailable", Map.of()),
                Reply.error(503, "bus_unavailable", Map.of()),
                Reply.json(202, "{\"id\":\"too-late\"}"))) {
            ServerUnavailableException e = assertThrows(ServerUnavailableException.class,
                    () -> client(stub.url()).build().send("r1", "k1", GIFT));
            assertEquals("bus_unavailable", e.code());
            assertEquals(4, stub.received().size());
            assertEquals(List.of(Duration.ofMillis(50), Duration.ofMillis(100), Duration.ofMillis(200)), slept);
        }
    }

    @Test
    void aRetryAfterPastThePolicysLimitIsHandedBackNotWaited() throws IOException {
        try (StubServer stub = new StubServer(Reply.error(429, "overloaded", Map.of("Retry-After", "120")))) {
            RateLimitedException e = assertThrows(RateLimitedException.class,
                    () -> client(stub.url()).build().send("r1", "k1", GIFT));
            assertEquals(Duration.ofSeconds(120), e.retryAfter().orElseThrow());
            assertEquals(1, stub.received().size());
            assertEquals(List.of(), slept);
        }
    }

    @Test
    void noAnswerIsRetriedThenATransportError() throws IOException {
        int closedPort;
        try (ServerSocket s = new ServerSocket(0)) {
            closedPort = s.getLocalPort();
        }
        GiftClient c = client(URI.create("http://127.0.0.1:" + closedPort)).build();
        TransportException e = assertThrows(TransportException.class, () -> c.send("r1", "k1", GIFT));
        assertEquals(0, e.status());
        assertEquals("transport", e.code());
        assertEquals(3, slept.size(), "4 attempts, 3 waits");
    }

    @Test
    void aSecretRotatedDuringRetriesSignsTheNextAttempt() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.error(503, "bus_full", Map.of("Retry-After", "1")),
                Reply.json(202, "{\"id\":\"m3\"}"))) {
            GiftClient[] holder = new GiftClient[1];
            holder[0] = client(stub.url()).sleeper(d -> holder[0].setSecret("rotated")).build();
            holder[0].send("r1", "k1", GIFT);
            List<Received> got = stub.received();
            assertSignedBy(SECRET, got.get(0));
            assertSignedBy("rotated", got.get(1));
        }
    }

    @Test
    void aBatchReSendsOnlyItsRetryableEventsUnderTheirOwnKeys() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.json(207, "{\"results\":["
                        + "{\"index\":0,\"status\":202,\"id\":\"a\"},"
                        + "{\"index\":1,\"status\":503,\"error\":{\"code\":\"bus_full\",\"message\":\"m\"},\"retry_after_s\":1},"
                        + "{\"index\":2,\"status\":400,\"error\":{\"code\":\"bad_gift_count\",\"message\":\"m\"}}]}"),
                Reply.json(207, "{\"results\":[{\"index\":0,\"status\":202,\"id\":\"b\",\"replayed\":true}]}"))) {
            List<KeyedEvent> events = List.of(
                    new KeyedEvent("e0", GIFT),
                    new KeyedEvent("e1", Event.gift("u2", "Ann", "heart", 1, 1)),
                    new KeyedEvent("e2", Event.gift("u3", "Cid", "heart", 0, 1)));
            BatchResult result = client(stub.url()).build().sendBatch("r1", events);
            assertEquals(2, result.attempts());
            List<BatchEventResult> r = result.results();
            assertEquals("a", r.get(0).id());
            assertEquals("b", r.get(1).id());
            assertTrue(r.get(1).replayed());
            assertEquals("e1", r.get(1).idempotencyKey());
            assertFalse(r.get(2).accepted());
            assertInstanceOf(InvalidRequestException.class, r.get(2).error());
            assertEquals("bad_gift_count", r.get(2).error().code());
            assertNull(r.get(2).id());
            assertEquals(List.of(r.get(2)), result.failures());
            assertEquals(List.of(Duration.ofSeconds(1)), slept);

            List<Received> got = stub.received();
            assertEquals(2, got.size());
            for (Received req : got) {
                assertEquals("/v1/rooms/r1/events:batch", req.rawPath());
                assertNull(req.header("Idempotency-key"), "a batch signs an empty key line");
                assertSignedBy(SECRET, req);
            }
            Map<?, ?> second = (Map<?, ?>) Json.parse(got.get(1).bodyText());
            List<?> resent = (List<?>) second.get("events");
            assertEquals(1, resent.size());
            assertEquals("e1", ((Map<?, ?>) resent.get(0)).get("idempotency_key"));
        }
    }

    @Test
    void aSuccessStatusWithoutTheServersAnswerIsAnErrorNotAnAcceptance() throws IOException {
        try (StubServer stub = new StubServer(
                Reply.json(202, "<html>proxy</html>"),
                Reply.json(207, "{\"results\":[]}"))) {
            GiftClient c = client(stub.url()).build();
            DanmakuException single = assertThrows(DanmakuException.class, () -> c.send("r1", "k1", GIFT));
            assertEquals("unexpected_answer", single.code());
            DanmakuException batch = assertThrows(DanmakuException.class,
                    () -> c.sendBatch("r1", List.of(new KeyedEvent("k2", GIFT))));
            assertEquals("unexpected_answer", batch.code());
            assertEquals(2, stub.received().size(), "neither is retried");
        }
    }

    @Test
    void theRoomIsPercentEncodedAndSignedAsSentUnderTheBasePath() throws IOException {
        try (StubServer stub = new StubServer(Reply.error(400, "bad_room", Map.of()))) {
            GiftClient c = client(URI.create(stub.url() + "/danmaku/")).build();
            assertThrows(InvalidRequestException.class, () -> c.send("a b/c", "k1", GIFT));
            Received r = stub.received().get(0);
            assertEquals("/danmaku/v1/rooms/a%20b%2Fc/events", r.rawPath());
            assertSignedBy(SECRET, r);
        }
    }
}
