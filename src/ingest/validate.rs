//! Input checks of ingest: text, blocked words, ids, names, style and gift
//! bounds. Each refusal is a 400 with its own code (the API contract).

use crate::config::IngestConfig;
use crate::error::ApiError;
use crate::message::{Gift, Style};

/// Largest `gift.count` of one event.
pub const MAX_GIFT_COUNT: u32 = 1_000_000;
/// Largest `gift.value` (per gift): count × value stays exact for JSON
/// readers that use doubles (2^53).
pub const MAX_GIFT_VALUE: u64 = (1 << 53) / MAX_GIFT_COUNT as u64;

/// The text rules of the configuration: length and the global blocked words.
pub struct TextRules {
    max_chars: usize,
    /// Lowercase, non-empty.
    blocked_lower: Vec<String>,
}

impl TextRules {
    pub fn new(config: &IngestConfig) -> Self {
        TextRules {
            max_chars: config.max_text_chars,
            blocked_lower: config
                .blocked_words
                .iter()
                .map(|w| w.to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// Not blank, at most `max_text_chars` characters, no control
    /// characters, no globally blocked word.
    pub fn check(&self, text: &str) -> Result<(), ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::bad_request(
                "empty_text",
                "text must not be empty",
            ));
        }
        if text.chars().count() > self.max_chars {
            return Err(ApiError::bad_request(
                "text_too_long",
                format!("text is longer than {} characters", self.max_chars),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "control_characters",
                "text must not contain control characters",
            ));
        }
        check_blocked(text, &self.blocked_lower)
    }
}

/// `blocked_lower` holds lowercase words; matching is case-insensitive.
pub fn check_blocked(text: &str, blocked_lower: &[String]) -> Result<(), ApiError> {
    if blocked_lower.is_empty() {
        return Ok(());
    }
    let lower = text.to_lowercase();
    if blocked_lower.iter().any(|w| lower.contains(w.as_str())) {
        return Err(ApiError::bad_request(
            "blocked_content",
            "text contains a blocked word",
        ));
    }
    Ok(())
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
/// blank, without control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
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

    #[test]
    fn names_and_blocked_words() {
        assert!(check_name("name", "Ann").is_ok());
        let e = check_name("user.name", " ").unwrap_err();
        assert_eq!(e.code, "bad_name");
        assert!(e.message.starts_with("user.name must be"));
        assert!(check_name("name", &"x".repeat(33)).is_err());
        let blocked = vec!["spam".to_string()];
        assert_eq!(
            check_blocked("buy SPAM", &blocked).unwrap_err().code,
            "blocked_content"
        );
        assert!(check_blocked("hello", &blocked).is_ok());
    }
}
