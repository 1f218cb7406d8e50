package io.danmaku.client;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;

/**
 * A gift or system event, as {@code POST /v1/rooms/{room}/events} takes it: {@code {"kind",
 * "user": {"id","name"}, "text"?, "gift"?: {"gift_id","count","value"}, "priority"?}}. The server
 * validates it (ids 1-64 visible ASCII, names 1-32 characters, count 1-…); a refusal is an
 * {@link InvalidRequestException}.
 *
 * @param kind gift or system
 * @param userId who sent the gift (or who speaks, for a system notice)
 * @param userName the name viewers see
 * @param text optional for a gift, required for a system notice; null to leave it out
 * @param gift the gift; required for {@link Kind#GIFT}, null for {@link Kind#SYSTEM}
 * @param priority null for the server's default (high for gifts, whitelist for system)
 */
public record Event(
        Kind kind, String userId, String userName, String text, Gift gift, Priority priority) {

    public enum Kind {
        GIFT,
        SYSTEM
    }

    /** Delivery bucket: whitelist reaches every viewer; high is never dropped for low. */
    public enum Priority {
        WHITELIST,
        HIGH,
        LOW
    }

    /** {@code value} is what the gift is worth in the platform's unit (0 for free gifts). */
    public record Gift(String giftId, long count, long value) {
        public Gift {
            Objects.requireNonNull(giftId, "giftId");
        }
    }

    public Event {
        Objects.requireNonNull(kind, "kind");
        Objects.requireNonNull(userId, "userId");
        Objects.requireNonNull(userName, "userName");
    }

    /** A gift of {@code count} × {@code giftId} worth {@code value} from a user. */
    public static Event gift(String userId, String userName, String giftId, long count, long value) {
        return new Event(Kind.GIFT, userId, userName, null, new Gift(giftId, count, value), null);
    }

    /** A system notice shown to the room. */
    public static Event system(String userId, String userName, String text) {
        return new Event(Kind.SYSTEM, userId, userName, text, null, null);
    }

    public Event withText(String newText) {
        return new Event(kind, userId, userName, newText, gift, priority);
    }

    public Event withPriority(Priority newPriority) {
        return new Event(kind, userId, userName, text, gift, newPriority);
    }

    /** The JSON object fields in the order the server documents them. */
    Map<String, Object> toJsonFields() {
        Map<String, Object> fields = new LinkedHashMap<>();
        fields.put("kind", kind.name().toLowerCase(Locale.ROOT));
        Map<String, Object> user = new LinkedHashMap<>();
        user.put("id", userId);
        user.put("name", userName);
        fields.put("user", user);
        if (text != null) {
            fields.put("text", text);
        }
        if (gift != null) {
            Map<String, Object> g = new LinkedHashMap<>();
            g.put("gift_id", gift.giftId());
            g.put("count", gift.count());
            g.put("value", gift.value());
            fields.put("gift", g);
        }
        if (priority != null) {
            fields.put("priority", priority.name().toLowerCase(Locale.ROOT));
        }
        return fields;
    }

    /** The request body of a single event. */
    public String toJson() {
        return Json.write(toJsonFields());
    }
}
