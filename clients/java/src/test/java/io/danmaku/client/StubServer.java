package io.danmaku.client;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.Map;

/**
 * A loopback HTTP server that answers canned responses in order and records what it got: for
 * the retry tests, which need answers (503, 409, a partial 207) a healthy real server does not
 * give on demand. What the real server does is tested in {@link ServerIntegrationTest}.
 */
final class StubServer implements AutoCloseable {
    /** A canned answer. */
    record Reply(int status, Map<String, String> headers, String body) {
        static Reply json(int status, String body) {
            return new Reply(status, Map.of(), body);
        }

        static Reply error(int status, String code, Map<String, String> headers) {
            return new Reply(status, headers, "{\"error\":{\"code\":\"" + code + "\",\"message\":\"stub " + code + "\"}}");
        }
    }

    /** A request as received. */
    record Received(String method, String rawPath, Map<String, List<String>> headers, byte[] body) {
        String header(String name) {
            List<String> v = headers.get(name);
            return v == null ? null : v.get(0);
        }

        String bodyText() {
            return new String(body, StandardCharsets.UTF_8);
        }
    }

    private final HttpServer server;
    private final Deque<Reply> replies = new ArrayDeque<>();
    private final List<Received> received = new ArrayList<>();

    StubServer(Reply... script) throws IOException {
        replies.addAll(List.of(script));
        server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        server.createContext("/", exchange -> {
            byte[] body = exchange.getRequestBody().readAllBytes();
            Reply reply;
            synchronized (this) {
                // HttpServer's Headers keys are normalised to "First-letter-upper" form.
                received.add(new Received(exchange.getRequestMethod(), exchange.getRequestURI().getRawPath(),
                        Map.copyOf(exchange.getRequestHeaders()), body));
                reply = replies.isEmpty() ? Reply.error(500, "stub_script_exhausted", Map.of()) : replies.poll();
            }
            reply.headers().forEach((k, v) -> exchange.getResponseHeaders().add(k, v));
            exchange.getResponseHeaders().add("Content-Type", "application/json");
            byte[] out = reply.body().getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(reply.status(), out.length);
            try (OutputStream os = exchange.getResponseBody()) {
                os.write(out);
            }
        });
        server.start();
    }

    URI url() {
        return URI.create("http://127.0.0.1:" + server.getAddress().getPort());
    }

    synchronized List<Received> received() {
        return List.copyOf(received);
    }

    @Override
    public void close() {
        server.stop(0);
    }
}
