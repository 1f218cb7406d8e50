//! The configuration as an operator sees it (`danmaku check`): a file's keys
//! checked against the embedded defaults' shape (so an error names the key),
//! and the effective table printed as TOML with secrets redacted.

use std::fmt::Write;

use anyhow::bail;

/// Shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Every key of `over` (a config file) must exist in `defaults` with the same
/// type (an integer may stand for a float): `fanout.tick_ms: invalid type:
/// expected integer, found string`.
pub fn check_shape(defaults: &toml::Table, over: &toml::Table) -> anyhow::Result<()> {
    for (section, value) in over {
        let Some(toml::Value::Table(known)) = defaults.get(section) else {
            bail!("[{section}]: unknown config section");
        };
        let toml::Value::Table(keys) = value else {
            bail!(
                "{section}: invalid type: expected a table, found {}",
                value.type_str()
            );
        };
        for (key, given) in keys {
            let Some(default) = known.get(key) else {
                bail!("{section}.{key}: unknown config key");
            };
            if !same_shape(default, given) {
                bail!(
                    "{section}.{key}: invalid type: expected {}, found {}",
                    shape_name(default),
                    shape_name(given)
                );
            }
        }
    }
    Ok(())
}

fn same_shape(default: &toml::Value, given: &toml::Value) -> bool {
    use toml::Value::{Array, Float, Integer};
    match (default, given) {
        (Float(_), Integer(_)) => true,
        // An empty default list takes any items; otherwise items are typed
        // like the default's first one.
        (Array(d), Array(g)) => d
            .first()
            .is_none_or(|like| g.iter().all(|item| same_shape(like, item))),
        (d, g) => d.type_str() == g.type_str(),
    }
}

fn shape_name(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(items) => match items.first() {
            Some(item) => format!("array of {}", shape_name(item)),
            None => "array".into(),
        },
        other => other.type_str().into(),
    }
}

/// A key whose value is a secret: `auth.jwt_secret`, `auth.gift_secrets`,
/// `auth.admin_token` (and any later `*_secret(s)` / `*_token` key).
fn is_secret_key(key: &str) -> bool {
    key.ends_with("_secret") || key.ends_with("_secrets") || key.ends_with("_token")
}

/// `scheme://user:password@host/…` → `scheme://user:<redacted>@host/…`
/// (`redis://:pw@host`, `mysql://user:pw@host/db`), each URL of a
/// comma-separated list (a Redis Cluster's nodes); other text unchanged.
pub fn redact_url_password(text: &str) -> String {
    text.split(',')
        .map(redact_one_url_password)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one_url_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return text.to_string();
    };
    let Some(colon) = rest[..at].find(':') else {
        return text.to_string(); // a user name alone is no secret
    };
    format!(
        "{}{}{REDACTED}{}",
        &text[..authority_start],
        &rest[..=colon],
        &rest[at..]
    )
}

fn redact(key: &str, value: &toml::Value) -> toml::Value {
    match value {
        toml::Value::String(s) if is_secret_key(key) && !s.is_empty() => {
            toml::Value::String(REDACTED.into())
        }
        toml::Value::String(s) => toml::Value::String(redact_url_password(s)),
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|item| redact(key, item)).collect())
        }
        other => other.clone(),
    }
}

/// The table as TOML (`[section]` then `key = value` lines), secrets redacted.
pub fn redacted_toml(table: &toml::Table) -> String {
    let mut out = String::new();
    for (section, value) in table {
        let toml::Value::Table(keys) = value else {
            let _ = writeln!(out, "{section} = {}", inline(&redact(section, value)));
            continue;
        };
        let _ = writeln!(out, "[{section}]");
        for (key, value) in keys {
            let _ = writeln!(out, "{key} = {}", inline(&redact(key, value)));
        }
        out.push('\n');
    }
    out
}

/// One TOML value on one line.
fn inline(value: &toml::Value) -> String {
    match value {
        // A JSON string is a valid TOML basic string.
        toml::Value::String(s) => serde_json::to_string(s).expect("strings serialize"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) if f.is_nan() => "nan".into(),
        toml::Value::Float(f) => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", serde_json::json!(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}
