package io.danmaku.client;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Clock;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.DoubleSupplier;
import java.util.function.Supplier;

/**
 * Sends signed gift and system events to a danmaku server: {@code POST /v1/rooms/{room}/events}
 * and {@code POST /v1/rooms/{room}/events:batch}, signed with v2 (see {@link GiftSigner}),
 * retried where that is safe (see {@link RetryPolicy}) with the same Idempotency-Key on every
 * attempt, so a retried event is stored once. Refusals are typed ({@link DanmakuException} and
 * its subclasses). Thread-safe; build one per server and share it.
 *
 * <pre>{@code
 * GiftClient client = GiftClient.builder(URI.create("https://danmaku.example.com"))
 *         .secret(() -> vault.read("danmaku/gift-secret"))
 *         .build();
 * Accepted a = client.send("room42", "order-1001", Event.gift("u9", "Bob", "rocket", 3, 100));
 * }</pre>
 */
public final class GiftClient {
    private final URI baseUrl;
    /** The base URL's path without a trailing slash ("" for a bare host): prefixes every path. */
    private final String basePath;
    /** Read on every attempt, so a rotated secret takes effect at once, mid-retry included. */
    private volatile Supplier<String> secret;
    private final HttpClient http;
    private final RetryPolicy retryPolicy;
    private final Duration requestTimeout;
    /** X-Timestamp source (and the reference for a date-form Retry-After). */
    private final Clock clock;
    /** Makes the Idempotency-Key of a send that was not given one. */
    private final Supplier<String> keyGenerator;
    /** Backoff jitter, uniform in [0, 1). */
    private final DoubleSupplier jitter;
    private final Sleeper sleeper;

    /** How the client waits between attempts (tests replace it). */
    @FunctionalInterface
    interface Sleeper {
        void sleep(Duration d) throws InterruptedException;
    }

    private GiftClient(Builder b) {
        this.baseUrl = b.baseUrl;
        String path = b.baseUrl.getRawPath() == null ? "" : b.baseUrl.getRawPath();
        this.basePath = path.endsWith("/") ? path.substring(0, path.length() - 1) : path;
        this.secret = b.secret;
        this.http = b.http != null ? b.http : defaultHttpClient();
        this.retryPolicy = b.retryPolicy;
        this.requestTimeout = b.requestTimeout;
        this.clock = b.clock;
        this.keyGenerator = b.keyGenerator;
        this.jitter = b.jitter;
        this.sleeper = b.sleeper;
    }

    public static Builder builder(URI baseUrl) {
        return new Builder(baseUrl);
    }

    private static HttpClient defaultHttpClient() {
        // HTTP/1.1: over plain http the JDK's HTTP/2 default tries an h2c upgrade first.
        return HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(5))
                .build();
    }

    /** Signs with this secret from the next attempt on (rotation: list it on the server first). */
    public void setSecret(String newSecret) {
        Objects.requireNonNull(newSecret, "newSecret");
        this.secret = () -> newSecret;
    }

    /** Signs with whatever {@code source} returns, read on every attempt. */
    public void setSecret(Supplier<String> source) {
        this.secret = Objects.requireNonNull(source, "source");
    }

    /**
     * Sends one event under a new Idempotency-Key (the client's generator, UUIDs by default).
     * Retries inside this call are stored once; to re-send after this call gave up, use {@link
     * #send(String, String, Event)} with {@link Accepted#idempotencyKey()} or an id of your own.
     */
    public Accepted send(String room, Event event) {
        return send(room, keyGenerator.get(), event);
    }

    /**
     * Sends one event under {@code idempotencyKey}: the server stores it once per room and key,
     * however often it is sent (a repeat answers {@link Accepted#replayed()}).
     *
     * @throws DanmakuException the typed refusal once retries are spent or not allowed
     */
    public Accepted send(String room, String idempotencyKey, Event event) {
        Objects.requireNonNull(idempotencyKey, "idempotencyKey");
        byte[] body = event.toJson().getBytes(StandardCharsets.UTF_8);
        String path = roomPath(room, "events");
        for (int attempt = 1; ; attempt++) {
            DanmakuException failure;
            try {
                HttpResponse<String> res = post(path, idempotencyKey, body);
                if (res.statusCode() / 100 == 2) {
                    boolean replayed =
                            res.headers().firstValue("idempotent-replayed").map("true"::equalsIgnoreCase).orElse(false);
                    return new Accepted(acceptedId(res), replayed, idempotencyKey, attempt);
                }
                failure = refusal(res);
            } catch (TransportException e) {
                failure = e;
            }
            waitBeforeRetry(attempt, failure);
        }
    }

    /** Sends events as one batch, each under a new Idempotency-Key. See {@link #sendBatch}. */
    public BatchResult sendEvents(String room, List<Event> events) {
        List<KeyedEvent> keyed = new ArrayList<>(events.size());
        for (Event e : events) {
            keyed.add(new KeyedEvent(keyGenerator.get(), e));
        }
        return sendBatch(room, keyed);
    }

    /**
     * Sends events in one signed {@code events:batch} request (at most the server's {@code
     * max_batch_events}, 100 by default). The server answers per event; events refused with a
     * retryable error are re-sent (alone, same keys) within the retry policy, the others keep
     * their refusal in the result.
     *
     * @throws DanmakuException when the batch as a whole was refused (bad signature, malformed
     *     body, too many events) or could not be delivered within the retry policy; every event
     *     has its own key, so re-sending the same list later is safe
     */
    public BatchResult sendBatch(String room, List<KeyedEvent> events) {
        if (events.isEmpty()) {
            throw new IllegalArgumentException("a batch holds at least one event");
        }
        String path = roomPath(room, "events:batch");
        BatchEventResult[] results = new BatchEventResult[events.size()];
        List<Integer> pending = new ArrayList<>();
        for (int i = 0; i < events.size(); i++) {
            pending.add(i);
        }
        for (int attempt = 1; ; attempt++) {
            DanmakuException failure;
            try {
                HttpResponse<String> res = post(path, "", batchBody(events, pending));
                if (res.statusCode() == 207) {
                    pending = settle(events, pending, res, results);
                    if (pending.isEmpty()) {
                        return new BatchResult(List.of(results), attempt);
                    }
                    failure = mostPatientFailure(pending, results);
                    Optional<Duration> delay = retryPolicy.delayBeforeRetry(attempt, failure, jitter);
                    if (delay.isEmpty()) {
                        return new BatchResult(List.of(results), attempt);
                    }
                    sleep(delay.get());
                    continue;
                }
                failure = refusal(res);
            } catch (TransportException e) {
                failure = e;
            }
            waitBeforeRetry(attempt, failure);
        }
    }

    /** The {@code id} of a 2xx {@code {"id"}} answer. */
    private static String acceptedId(HttpResponse<String> res) {
        try {
            if (Json.parse(res.body()) instanceof Map<?, ?> answer && answer.get("id") instanceof String id) {
                return id;
            }
        } catch (IllegalArgumentException notJson) {
            // Reported below.
        }
        throw unexpectedAnswer(res, "no {\"id\"} in the acceptance");
    }

    /**
     * Records the per-event answers of a 207 into {@code results} and returns the indexes of the
     * events to send again (refused with a retryable error).
     */
    private List<Integer> settle(
            List<KeyedEvent> events, List<Integer> sent, HttpResponse<String> res, BatchEventResult[] results) {
        List<?> answers;
        try {
            answers = Json.parse(res.body()) instanceof Map<?, ?> m && m.get("results") instanceof List<?> l ? l : null;
        } catch (IllegalArgumentException notJson) {
            answers = null;
        }
        if (answers == null || answers.size() != sent.size()) {
            throw unexpectedAnswer(res, "not one result per event sent (" + sent.size() + ")");
        }
        List<Integer> again = new ArrayList<>();
        for (Object o : answers) {
            if (!(o instanceof Map<?, ?> item && item.get("index") instanceof Number i
                    && i.intValue() >= 0 && i.intValue() < sent.size() && item.get("status") instanceof Number s)) {
                throw unexpectedAnswer(res, "a result without a valid index and status");
            }
            int index = sent.get(i.intValue());
            String key = events.get(index).idempotencyKey();
            int status = s.intValue();
            if (status / 100 == 2) {
                results[index] = new BatchEventResult(
                        index, key, status, (String) item.get("id"), Boolean.TRUE.equals(item.get("replayed")), null);
                continue;
            }
            DanmakuException error = ErrorResponses.fromBatchItem(item, clock);
            results[index] = new BatchEventResult(index, key, status, null, false, error);
            if (error.isRetryable()) {
                again.add(index);
            }
        }
        return again;
    }

    /**
     * A success status whose body is not what the server sends (a misconfigured proxy?). Not
     * retried: re-sending under the same key is safe, but would likely meet the same thing.
     */
    private static DanmakuException unexpectedAnswer(HttpResponse<String> res, String why) {
        String body = res.body().length() > 200 ? res.body().substring(0, 200) + "…" : res.body();
        return new DanmakuException(res.statusCode(), "unexpected_answer", why + ": " + body, null);
    }

    /** Of the events still refused, the one that asked to wait longest decides the next delay. */
    private static DanmakuException mostPatientFailure(List<Integer> pending, BatchEventResult[] results) {
        DanmakuException chosen = results[pending.get(0)].error();
        for (int i : pending) {
            DanmakuException e = results[i].error();
            if (e.retryAfter().orElse(Duration.ZERO).compareTo(chosen.retryAfter().orElse(Duration.ZERO)) > 0) {
                chosen = e;
            }
        }
        return chosen;
    }

    private static byte[] batchBody(List<KeyedEvent> events, List<Integer> indexes) {
        List<Object> list = new ArrayList<>(indexes.size());
        for (int i : indexes) {
            KeyedEvent e = events.get(i);
            Map<String, Object> fields = new LinkedHashMap<>();
            fields.put("idempotency_key", e.idempotencyKey());
            fields.putAll(e.event().toJsonFields());
            list.add(fields);
        }
        return Json.write(Map.of("events", list)).getBytes(StandardCharsets.UTF_8);
    }

    /** Throws {@code failure} unless the policy allows another attempt; else waits for it. */
    private void waitBeforeRetry(int attemptsMade, DanmakuException failure) {
        Optional<Duration> delay = retryPolicy.delayBeforeRetry(attemptsMade, failure, jitter);
        if (delay.isEmpty()) {
            throw failure;
        }
        sleep(delay.get());
    }

    private void sleep(Duration d) {
        try {
            sleeper.sleep(d);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new TransportException("interrupted while waiting to retry", e, false);
        }
    }

    /**
     * One signed POST: a fresh X-Timestamp and the current secret on every attempt (a retry
     * after a long Retry-After must not be stale); {@code key} is "" for a batch.
     */
    private HttpResponse<String> post(String path, String key, byte[] body) {
        String timestamp = Long.toString(clock.instant().getEpochSecond());
        String signature = GiftSigner.sign(secret.get(), timestamp, "POST", path, key, body);
        HttpRequest.Builder req = HttpRequest.newBuilder(baseUrl.resolve(path))
                .timeout(requestTimeout)
                .header("Content-Type", "application/json")
                .header(GiftSigner.TIMESTAMP_HEADER, timestamp)
                .header(GiftSigner.SIGNATURE_HEADER, signature)
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        if (!key.isEmpty()) {
            req.header("Idempotency-Key", key);
        }
        try {
            return http.send(req.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new TransportException(e.getClass().getSimpleName() + ": " + e.getMessage(), e, true);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new TransportException("interrupted", e, false);
        }
    }

    private DanmakuException refusal(HttpResponse<String> res) {
        return ErrorResponses.toException(
                res.statusCode(), res.body(), res.headers().firstValue("retry-after"), clock);
    }

    /**
     * {@code <base path>/v1/rooms/<room>/<action>}, the room percent-encoded: this exact string
     * is both sent and signed (the server checks the path as received).
     */
    private String roomPath(String room, String action) {
        return basePath + "/v1/rooms/" + PathSegments.encode(room) + "/" + action;
    }

    /** Configures a {@link GiftClient}; only the base URL and the secret are required. */
    public static final class Builder {
        private final URI baseUrl;
        private Supplier<String> secret;
        private HttpClient http;
        private RetryPolicy retryPolicy = RetryPolicy.defaults();
        private Duration requestTimeout = Duration.ofSeconds(10);
        private Clock clock = Clock.systemUTC();
        private Supplier<String> keyGenerator = () -> UUID.randomUUID().toString();
        private DoubleSupplier jitter = () -> ThreadLocalRandom.current().nextDouble();
        private Sleeper sleeper = d -> Thread.sleep(d.toMillis(), d.toNanosPart() % 1_000_000);

        private Builder(URI baseUrl) {
            this.baseUrl = Objects.requireNonNull(baseUrl, "baseUrl");
            if (baseUrl.getScheme() == null || baseUrl.getHost() == null) {
                throw new IllegalArgumentException("the base URL needs a scheme and a host: " + baseUrl);
            }
        }

        public Builder secret(String value) {
            Objects.requireNonNull(value, "secret");
            this.secret = () -> value;
            return this;
        }

        /** A secret read on every attempt (a vault, a file that rotation rewrites, …). */
        public Builder secret(Supplier<String> source) {
            this.secret = Objects.requireNonNull(source, "secret");
            return this;
        }

        /** Your own HttpClient (proxy, TLS, executor); by default HTTP/1.1, 5 s connect timeout. */
        public Builder httpClient(HttpClient client) {
            this.http = Objects.requireNonNull(client, "client");
            return this;
        }

        public Builder retryPolicy(RetryPolicy policy) {
            this.retryPolicy = Objects.requireNonNull(policy, "policy");
            return this;
        }

        /** The most one attempt may take, answer included (default 10 s). */
        public Builder requestTimeout(Duration timeout) {
            this.requestTimeout = Objects.requireNonNull(timeout, "timeout");
            return this;
        }

        public Builder clock(Clock value) {
            this.clock = Objects.requireNonNull(value, "clock");
            return this;
        }

        /** Makes keys for sends that were not given one (1-64 visible ASCII, no {@code |{}}). */
        public Builder idempotencyKeys(Supplier<String> generator) {
            this.keyGenerator = Objects.requireNonNull(generator, "generator");
            return this;
        }

        Builder jitter(DoubleSupplier value) {
            this.jitter = value;
            return this;
        }

        Builder sleeper(Sleeper value) {
            this.sleeper = value;
            return this;
        }

        public GiftClient build() {
            if (secret == null) {
                throw new IllegalStateException("a gift secret is required");
            }
            return new GiftClient(this);
        }
    }
}
