//! Request-body JSON parsing shared by the HTTP layer and the WebSocket
//! session: one refusal vocabulary (`malformed_json`, `invalid_body`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::ApiError;

/// Parses a JSON object: syntax errors → `malformed_json`, shape errors →
/// `invalid_body`. serde would also take a struct as the array of its fields
/// (`[[[]]]` as a batch, found by fuzzing): every body here is an object.
/// An object with the same key twice, at any depth, is `invalid_body`
/// (`serde_json::Value` keeps the last one, so `{"kind":"gift","kind":
/// "system"}` would read as a system event; keys compare unescaped).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice::<UniqueKeys>(body) {
        Ok(UniqueKeys { object: false }) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body must be a JSON object",
            ))
        }
        // A syntax error further on is told first (as it always was).
        Err(e) if e.is_data() && serde_json::from_slice::<IgnoredAny>(body).is_ok() => {
            return Err(ApiError::bad_request("invalid_body", e.to_string()))
        }
        // Syntax errors are told by the typed parse below.
        Ok(_) | Err(_) => {}
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request("invalid_body", e.to_string()),
            _ => ApiError::bad_request("malformed_json", e.to_string()),
        }
    })
}

/// Any JSON value whose objects have no repeated key; `object`: the value
/// is an object.
struct UniqueKeys {
    object: bool,
}

impl<'de> de::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

macro_rules! scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<UniqueKeys, E> {
            Ok(UniqueKeys { object: false })
        })*
    };
}

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys { object: false })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys { object: false })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        // Objects are small: a linear scan beats hashing.
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
            keys.push(key);
        }
        Ok(UniqueKeys { object: true })
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
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

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        type V = serde_json::Value;
        for body in [
            r#"{"kind":"gift","kind":"system"}"#,
            r#"{"a":{"b":1,"b":2}}"#,
            r#"{"events":[{"x":1},{"k":1,"k":1}]}"#,
            r#"{"kind":1,"\u006bind":2}"#,
            r#"{"a":[[{"z":{"y":1,"y":null}}]]}"#,
        ] {
            let e = parse_json::<V>(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_body", "{body}");
            assert!(
                e.message.starts_with("duplicate key \""),
                "{body}: {}",
                e.message
            );
        }
        let e = parse_json::<V>(br#"{"kind":"gift","kind":"system"}"#).unwrap_err();
        assert!(e.message.contains(r#""kind""#), "{}", e.message);
        for body in [
            r#"{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}"#,
            r#"{"k\"":1,"k":2}"#,
            "{}",
        ] {
            assert!(parse_json::<V>(body.as_bytes()).is_ok(), "{body}");
        }
        // Syntax errors stay `malformed_json`, even after a repeated key.
        assert_eq!(
            parse_json::<V>(br#"{"a":1,"a":"#).unwrap_err().code,
            "malformed_json"
        );
    }
}
