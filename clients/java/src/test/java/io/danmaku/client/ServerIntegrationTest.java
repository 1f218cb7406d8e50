package io.danmaku.client;

import static io.danmaku.client.LiveServer.count;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Against a real danmaku server (clients/java/test.sh starts one): what a gift backend would
 * notice — accepted gifts show up in the room once, retries store nothing twice, batches store
 * every event, rotated secrets work, wrong ones and tampered requests are refused with the
 * server's codes as typed errors.
 */
@Timeout(60)
class ServerIntegrationTest {
    private static LiveServer server;
    private static String oldSecret;
    private static String newSecret;

    @BeforeAll
    static void server() {
        server = LiveServer.fromEnvironment();
        oldSecret = server.secrets.get(0);
        newSecret = server.secrets.get(1);
    }

    private static List<Map<?, ?>> gifts(List<Map<?, ?>> messages) {
        return messages.stream().filter(m -> "gift".equals(m.get("kind"))).toList();
    }

    /** Sends a last gift and waits for it: everything accepted before it is then in the room. */
    private static List<Map<?, ?>> settled(String room) throws IOException, InterruptedException {
        Accepted sentinel = server.client(newSecret).send(room, Event.gift("sentinel", "Sentinel", "bell", 1, 0));
        return server.awaitIds(room, List.of(sentinel.id()));
    }

    @Test
    void aSignedGiftIsAcceptedAndShowsInTheRoom() throws Exception {
        String room = LiveServer.newRoom();
        Accepted a = server.client(oldSecret).send(room, "order-1001", Event.gift("u9", "Bob", "rocket", 3, 100));
        assertFalse(a.id().isEmpty());
        assertFalse(a.replayed());
        assertEquals("order-1001", a.idempotencyKey());
        assertEquals(1, a.attempts());

        List<Map<?, ?>> messages = server.awaitIds(room, List.of(a.id()));
        Map<?, ?> stored = messages.stream().filter(m -> a.id().equals(m.get("id"))).findFirst().orElseThrow();
        assertEquals("gift", stored.get("kind"));
        assertEquals("high", stored.get("priority"), "a gift's default bucket");
        assertEquals(room, stored.get("room"));
        assertEquals(Map.of("id", "u9", "name", "Bob"), stored.get("user"));
        assertEquals(Map.of("gift_id", "rocket", "count", 3L, "value", 100L), stored.get("gift"));
    }

    @Test
    void aSystemNoticeWithNonAsciiTextIsSignedOverItsUtf8Bytes() throws Exception {
        String room = LiveServer.newRoom();
        Accepted a = server.client(oldSecret).send(room, Event.system("ops", "运营", "欢迎 welcome \"quoted\""));
        Map<?, ?> stored = server.awaitIds(room, List.of(a.id())).stream()
                .filter(m -> a.id().equals(m.get("id"))).findFirst().orElseThrow();
        assertEquals("system", stored.get("kind"));
        assertEquals("whitelist", stored.get("priority"));
        assertEquals("欢迎 welcome \"quoted\"", stored.get("text"));
    }

    @Test
    void aRetryWithTheSameKeyStoresOneGift() throws Exception {
        String room = LiveServer.newRoom();
        Event gift = Event.gift("u1", "Ann", "rocket", 1, 100);
        Accepted first = server.client(oldSecret).send(room, "order-7", gift);
        Accepted again = server.client(oldSecret).send(room, "order-7", gift);
        // A restarted backend, signing with the newer secret, re-sending its unconfirmed order.
        Accepted restarted = server.client(newSecret).send(room, "order-7", gift);
        assertFalse(first.replayed());
        assertTrue(again.replayed());
        assertTrue(restarted.replayed());
        assertEquals(first.id(), again.id());
        assertEquals(first.id(), restarted.id());

        List<Map<?, ?>> messages = settled(room);
        assertEquals(1, count(messages, first.id()), "the gift is stored once");
        assertEquals(2, gifts(messages).size(), "the gift and the sentinel, nothing else: " + messages);
    }

    @Test
    void aKeyReusedForAnotherEventIsRefusedAndTheFirstStands() throws Exception {
        String room = LiveServer.newRoom();
        GiftClient client = server.client(oldSecret);
        Accepted first = client.send(room, "order-8", Event.gift("u1", "Ann", "rocket", 1, 100));
        IdempotencyKeyReusedException e = assertThrows(IdempotencyKeyReusedException.class,
                () -> client.send(room, "order-8", Event.gift("u1", "Ann", "rocket", 2, 200)));
        assertEquals(422, e.status());
        assertEquals("idempotency_key_reused", e.code());

        List<Map<?, ?>> messages = settled(room);
        assertEquals(1, count(messages, first.id()));
        assertEquals(2, gifts(messages).size(), messages.toString());
    }

    @Test
    void aBatchStoresEveryEventOnceEvenWhenSentTwice() throws Exception {
        String room = LiveServer.newRoom();
        List<KeyedEvent> events = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            events.add(new KeyedEvent("batch-" + i, Event.gift("u" + i, "User " + i, "heart", i + 1, 10)));
        }
        GiftClient client = server.client(oldSecret);
        BatchResult result = client.sendBatch(room, events);
        assertTrue(result.allAccepted(), result.failures().toString());
        assertEquals(1, result.attempts());
        List<String> ids = result.results().stream().map(BatchEventResult::id).toList();
        assertEquals(5, ids.stream().distinct().count());
        for (int i = 0; i < 5; i++) {
            BatchEventResult r = result.results().get(i);
            assertEquals(i, r.index());
            assertEquals("batch-" + i, r.idempotencyKey());
            assertEquals(202, r.status());
            assertFalse(r.replayed());
        }

        BatchResult again = client.sendBatch(room, events);
        assertTrue(again.results().stream().allMatch(BatchEventResult::replayed), again.toString());
        assertEquals(ids, again.results().stream().map(BatchEventResult::id).toList());

        List<Map<?, ?>> messages = settled(room);
        for (String id : ids) {
            assertEquals(1, count(messages, id), "stored once: " + id);
        }
        assertEquals(6, gifts(messages).size(), "five gifts and the sentinel: " + messages);
    }

    @Test
    void aBatchReportsEachRefusedEventBesideTheAcceptedOnes() throws Exception {
        String room = LiveServer.newRoom();
        BatchResult result = server.client(oldSecret).sendEvents(room, List.of(
                Event.gift("u1", "Ann", "heart", 1, 1),
                Event.gift("u2", "Bob", "heart", 0, 1), // count 0: refused alone
                Event.gift("u3", "Cid", "heart", 2, 1)));
        assertTrue(result.results().get(0).accepted());
        assertTrue(result.results().get(2).accepted());
        BatchEventResult refused = result.results().get(1);
        assertEquals(400, refused.status());
        assertInstanceOf(InvalidRequestException.class, refused.error());
        assertEquals("bad_gift_count", refused.error().code());
        assertEquals(1, result.attempts(), "a wrong event is not re-sent");

        List<Map<?, ?>> messages = settled(room);
        assertEquals(3, gifts(messages).size(), "two gifts and the sentinel: " + messages);
    }

    @Test
    void aRotatedSecretIsAcceptedWhileTheServerListsBothAndAnUnlistedOneIsRefused() throws Exception {
        String room = LiveServer.newRoom();
        GiftClient client = server.client(oldSecret);
        Accepted withOld = client.send(room, Event.gift("u1", "Ann", "rocket", 1, 1));
        client.setSecret(newSecret);
        Accepted withNew = client.send(room, Event.gift("u2", "Bob", "rocket", 1, 1));
        // A supplier is read on every send: rotation without rebuilding the client.
        String[] current = {oldSecret};
        client.setSecret(() -> current[0]);
        Accepted viaSupplier = client.send(room, Event.gift("u3", "Cid", "rocket", 1, 1));
        current[0] = "java-test-secret-the-server-never-listed";
        BadSignatureException refused = assertThrows(BadSignatureException.class,
                () -> client.send(room, Event.gift("u4", "Dee", "rocket", 1, 1)));
        assertEquals(401, refused.status());
        assertEquals("bad_signature", refused.code());
        assertFalse(refused.serverMessage().isEmpty());
        assertFalse(refused.isRetryable());

        List<Map<?, ?>> messages = settled(room);
        for (Accepted a : List.of(withOld, withNew, viaSupplier)) {
            assertEquals(1, count(messages, a.id()));
        }
        assertEquals(4, gifts(messages).size(), "three gifts and the sentinel, not the refused one: " + messages);
    }

    @Test
    void aWrongSecretGetsTheTypedErrorWithTheServersCodeForSinglesAndBatches() {
        String room = LiveServer.newRoom();
        GiftClient wrong = server.client("java-test-wrong-secret");
        BadSignatureException single = assertThrows(BadSignatureException.class,
                () -> wrong.send(room, Event.gift("u1", "Ann", "rocket", 1, 1)));
        assertEquals(401, single.status());
        assertEquals("bad_signature", single.code());
        BadSignatureException batch = assertThrows(BadSignatureException.class,
                () -> wrong.sendEvents(room, List.of(Event.gift("u1", "Ann", "rocket", 1, 1))));
        assertEquals("bad_signature", batch.code());
    }

    @Test
    void aClockFarOffGivesStaleTimestamp() {
        Clock hourBehind = Clock.offset(Clock.systemUTC(), Duration.ofHours(-1));
        GiftClient client = GiftClient.builder(server.url).secret(oldSecret).clock(hourBehind).build();
        UnauthorizedException e = assertThrows(UnauthorizedException.class,
                () -> client.send(LiveServer.newRoom(), Event.gift("u1", "Ann", "rocket", 1, 1)));
        assertEquals(401, e.status());
        assertEquals("stale_timestamp", e.code());
    }

    @Test
    void anInvalidEventIsRefusedAtOnceWithItsCode() {
        GiftClient client = server.client(oldSecret);
        String room = LiveServer.newRoom();
        InvalidRequestException count = assertThrows(InvalidRequestException.class,
                () -> client.send(room, Event.gift("u1", "Ann", "rocket", 0, 1)));
        assertEquals(400, count.status());
        assertEquals("bad_gift_count", count.code());
        InvalidRequestException badRoom = assertThrows(InvalidRequestException.class,
                () -> client.send("no spaces allowed", Event.gift("u1", "Ann", "rocket", 1, 1)));
        assertEquals("bad_room", badRoom.code());
        InvalidRequestException noGift = assertThrows(InvalidRequestException.class,
                () -> client.send(room, new Event(Event.Kind.GIFT, "u1", "Ann", null, null, null)));
        assertEquals("missing_gift", noGift.code());
    }

    /** Signs {@code signedBody} for {@code signedPath} but sends {@code sentBody} to {@code sentPath}. */
    private static HttpResponse<String> forged(String signedPath, String signedBody, String sentPath, String sentBody)
            throws IOException {
        String ts = Long.toString(Instant.now().getEpochSecond());
        String sig = GiftSigner.sign(oldSecret, ts, "POST", signedPath, "forged-1",
                signedBody.getBytes(StandardCharsets.UTF_8));
        return server.post(sentPath, Map.of(
                "Content-Type", "application/json",
                "X-Timestamp", ts,
                "X-Signature", sig,
                "Idempotency-Key", "forged-1"), sentBody);
    }

    private static DanmakuException refusal(HttpResponse<String> res) {
        assertTrue(res.statusCode() >= 400, "refused: " + res.statusCode() + " " + res.body());
        return ErrorResponses.toException(res.statusCode(), res.body(), res.headers().firstValue("retry-after"),
                Clock.systemUTC());
    }

    @Test
    void aTamperedBodyOrAnotherRoomIsRefusedAndNothingIsStored() throws Exception {
        String room = LiveServer.newRoom();
        String path = "/v1/rooms/" + room + "/events";
        String body = Event.gift("u1", "Ann", "rocket", 1, 1).toJson();
        String tampered = Event.gift("u1", "Ann", "rocket", 99, 1).toJson();
        assertNotEquals(body, tampered);

        DanmakuException e = refusal(forged(path, body, path, tampered));
        assertInstanceOf(BadSignatureException.class, e);
        assertEquals(401, e.status());
        assertEquals("bad_signature", e.code());

        String otherRoom = LiveServer.newRoom();
        DanmakuException replayed = refusal(forged(path, body, "/v1/rooms/" + otherRoom + "/events", body));
        assertInstanceOf(BadSignatureException.class, replayed);

        // The untampered request is accepted (the forging helper signs correctly).
        HttpResponse<String> control = forged(path, body, path, body);
        assertEquals(202, control.statusCode(), "control: " + control.body());

        List<Map<?, ?>> messages = settled(room);
        assertEquals(2, gifts(messages).size(), "the control gift and the sentinel only: " + messages);
        assertTrue(gifts(messages).stream().noneMatch(m -> Long.valueOf(99).equals(((Map<?, ?>) m.get("gift")).get("count"))));
        assertEquals(Optional.empty(), server.messages(otherRoom).stream().findAny());
    }
}
