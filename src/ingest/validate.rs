//! Input checks of ingest: text, blocked words, ids, names, style and gift
//! bounds. Each refusal is a 400 with its own code (the API contract).

use crate::config::IngestConfig;
use crate::error::ApiError;
use crate::message::{Gift, Style};
use crate::text::{fold, is_bidi_control, is_blank, BlockedWords};

/// Largest `gift.count` of one event.
pub const MAX_GIFT_COUNT: u32 = 1_000_000;
/// Largest `gift.value` (per gift): count × value stays exact for JSON
/// readers that use doubles (2^53).
pub const MAX_GIFT_VALUE: u64 = (1 << 53) / MAX_GIFT_COUNT as u64;

/// The text rules of the configuration: length and the global blocked words.
pub struct TextRules {
    max_chars: usize,
    blocked: BlockedWords,
}

impl TextRules {
    pub fn new(config: &IngestConfig) -> Self {
        TextRules {
            max_chars: config.max_text_chars,
            blocked: BlockedWords::new(config.blocked_words.iter().map(String::as_str)),
        }
    }

    /// No control characters (`control_characters`), no bidi embedding,
    /// override or isolate (`bad_text`), not only invisible characters
    /// (`empty_text`), at most `max_text_chars` characters
    /// (`text_too_long`), no blocked word, global or of the room
    /// (`blocked_content`, matched on the folded text: `crate::text`).
    pub fn check(&self, text: &str, room_words: &BlockedWords) -> Result<(), ApiError> {
        if text.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "control_characters",
                "text must not contain control characters",
            ));
        }
        if text.chars().any(is_bidi_control) {
            return Err(ApiError::bad_request(
                "bad_text",
                "text must not contain bidi embedding, override or isolate characters (U+202A-U+202E, U+2066-U+2069)",
            ));
        }
        if text.chars().all(is_blank) {
            return Err(ApiError::bad_request(
                "empty_text",
                "text must not be empty or only invisible characters",
            ));
        }
        if text.chars().count() > self.max_chars {
            return Err(ApiError::bad_request(
                "text_too_long",
                format!("text is longer than {} characters", self.max_chars),
            ));
        }
        if self.blocked.is_empty() && room_words.is_empty() {
            return Ok(());
        }
        let folded = fold(text);
        if self.blocked.found_in(&folded) || room_words.found_in(&folded) {
            return Err(ApiError::bad_request(
                "blocked_content",
                "text contains a blocked word",
            ));
        }
        Ok(())
    }
}

/// Ids and keys: 1–64 visible ASCII characters without separators we use.
pub fn check_id(field: &'static str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'|' && b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_id",
            format!("{field} must be 1-64 visible ASCII characters"),
        ))
    }
}

/// A display name (`field` names it in the error): 1–32 characters, not
/// only invisible characters, without control or bidi control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.chars().all(crate::text::is_blank)
        || name.chars().count() > 32
        || name
            .chars()
            .any(|c| c.is_control() || crate::text::is_bidi_control(c))
    {
        return Err(ApiError::bad_request(
            "bad_name",
            format!("{field} must be 1-32 characters without control characters"),
        ));
    }
    Ok(())
}

pub fn check_style(style: &Style) -> Result<(), ApiError> {
    if let Some(color) = &style.color {
        let hex = color.strip_prefix('#').unwrap_or("");
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "bad_style",
                "style.color must look like #rrggbb",
            ));
        }
    }
    Ok(())
}

/// A gift's id, count (1..=[`MAX_GIFT_COUNT`]) and value (≤ [`MAX_GIFT_VALUE`]).
pub fn check_gift(gift: &Gift) -> Result<(), ApiError> {
    check_id("gift.gift_id", &gift.gift_id)?;
    if gift.count == 0 || gift.count > MAX_GIFT_COUNT {
        return Err(ApiError::bad_request(
            "bad_gift_count",
            format!("gift.count must be within 1..={MAX_GIFT_COUNT}"),
        ));
    }
    if gift.value > MAX_GIFT_VALUE {
        return Err(ApiError::bad_request(
            "bad_gift_value",
            format!("gift.value must be within 0..={MAX_GIFT_VALUE}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules(words: &[&str]) -> TextRules {
        let mut c = Config::embedded().ingest;
        c.blocked_words = words.iter().map(|w| w.to_string()).collect();
        TextRules::new(&c)
    }

    #[test]
    fn names() {
        assert!(check_name("name", "Ann").is_ok());
        assert!(check_name("name", "安娜 🌸").is_ok());
        let e = check_name("user.name", " ").unwrap_err();
        assert_eq!(e.code, "bad_name");
        assert!(e.message.starts_with("user.name must be"));
        assert!(check_name("name", &"x".repeat(33)).is_err());
        for bad in ["\u{3164}", "\u{200b}", "a\u{202e}b", "a\u{7}"] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dodges_of_a_blocked_word_are_refused() {
        let r = rules(&["spam"]);
        let room = BlockedWords::new(["Spoiler"]);
        for text in [
            "buy SPAM",
            "s\u{200b}pam",
            "s\u{ad}pam",
            "ｓｐａｍ",
            "ѕраm",
            "𝐬𝐩𝐚𝐦",
            "s\u{301}pam",
            "SPOILER: he dies",
            "ѕроilеr", // Cyrillic in the room's word
        ] {
            assert_eq!(
                r.check(text, &room).unwrap_err().code,
                "blocked_content",
                "{text:?}"
            );
        }
        let r = rules(&["istanbul"]);
        assert_eq!(
            r.check("İstanbul", &BlockedWords::default())
                .unwrap_err()
                .code,
            "blocked_content"
        );
    }

    #[test]
    fn invisible_and_bidi_text_is_refused() {
        let r = rules(&[]);
        let none = BlockedWords::default();
        for (text, code) in [
            ("", "empty_text"),
            ("   ", "empty_text"),
            ("\u{200b}", "empty_text"),
            ("\u{200b}\u{200c}\u{200d}\u{2060}\u{feff}", "empty_text"),
            ("\u{3164}", "empty_text"),
            ("\u{2800}\u{2800}", "empty_text"),
            ("\u{115f}\u{1160}\u{ffa0}", "empty_text"),
            ("\u{3000} \u{200b}\u{ad}", "empty_text"),
            ("\u{200f}", "empty_text"), // a lone RLM shows nothing
            ("\u{202e}olleh", "bad_text"),
            ("abc\u{202a}def\u{202c}", "bad_text"),
            ("a\u{2066}b\u{2069}", "bad_text"),
            ("\u{202e}", "bad_text"),
            ("line\nbreak", "control_characters"),
        ] {
            assert_eq!(r.check(text, &none).unwrap_err().code, code, "{text:?}");
        }
    }

    #[test]
    fn ordinary_text_passes() {
        let r = rules(&["spam", "scam", "广告"]);
        let none = BlockedWords::default();
        for text in [
            "hello world",
            "弹幕 来了 666",
            "日本語のコメント、ありがとう！",
            "한국어 채팅",
            "🎉🎉🎉",
            "👨\u{200d}👩\u{200d}👧 ❤\u{fe0f}",
            "Straße café naïve",
            "שלום \u{200f}123", // RLM beside digits is allowed
            "مرحبا\u{61c} 1",
            "Привет",
            "x\u{200b}y", // invisible characters inside visible text are kept
        ] {
            assert!(r.check(text, &none).is_ok(), "{text:?}");
        }
    }
}
