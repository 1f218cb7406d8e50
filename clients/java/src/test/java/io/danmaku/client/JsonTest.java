package io.danmaku.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {
    @Test
    void parsesWhatTheServerSends() {
        Object v = Json.parse(" {\"a\": [1, -2.5, true, false, null], \"s\": \"q\\\"\\u6b22\\n\", \"o\": {}} ");
        Map<?, ?> m = (Map<?, ?>) v;
        List<?> a = (List<?>) m.get("a");
        assertEquals(1L, a.get(0));
        assertEquals("-2.5", a.get(1).toString());
        assertEquals(true, a.get(2));
        assertEquals(null, a.get(4));
        assertEquals("q\"欢\n", m.get("s"));
        assertEquals(Map.of(), m.get("o"));
    }

    @Test
    void writesEscapedBodiesThatParseBack() {
        String text = "欢迎 \"quoted\" \\ back\nline\u0001";
        String json = Json.write(Map.of("t", text));
        assertEquals("{\"t\":\"欢迎 \\\"quoted\\\" \\\\ back\\nline\\u0001\"}", json);
        assertEquals(text, ((Map<?, ?>) Json.parse(json)).get("t"));
    }

    @Test
    void refusesBrokenJson() {
        for (String bad : new String[] {"", "{", "{\"a\" 1}", "[1,]", "\"open", "{} x", "tru"}) {
            assertThrows(IllegalArgumentException.class, () -> Json.parse(bad), bad);
        }
    }
}
