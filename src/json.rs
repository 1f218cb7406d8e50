//! Request-body JSON parsing shared by the HTTP layer and the WebSocket
//! session: one refusal vocabulary (`malformed_json`, `invalid_body`).

use serde::de::{DeserializeOwned, IgnoredAny};

use crate::error::ApiError;

/// Parses a JSON object: syntax errors → `malformed_json`, shape errors →
/// `invalid_body`. serde would also take a struct as the array of its fields
/// (`[[[]]]` as a batch, found by fuzzing): every body here is an object.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') && serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request("invalid_body", e.to_string()),
            _ => ApiError::bad_request("malformed_json", e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Batch {
        events: Vec<serde_json::Value>,
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(parse_json::<Batch>(br#" {"events": [{}]}"#).is_ok());
        // serde alone would take `[[{}]]` as `{"events": [{}]}`.
        let e = parse_json::<Batch>(b"[[{}]]").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            ("invalid_body", "the body must be a JSON object")
        );
        assert_eq!(
            parse_json::<Batch>(b"[[{}]").unwrap_err().code,
            "malformed_json"
        );
        assert_eq!(parse_json::<Batch>(b"").unwrap_err().code, "malformed_json");
        assert_eq!(parse_json::<Batch>(b"{}").unwrap_err().code, "invalid_body");
    }
}
