//! Layering of the configuration: a file merged over the defaults, then the
//! environment (fixed names and `DANMAKU_<SECTION>__<KEY>`).

use anyhow::{bail, Context};

/// Fixed environment names of the run contract → config path.
const FIXED_ENV: &[(&str, &str)] = &[
    ("DANMAKU_LISTEN", "server.listen"),
    ("DANMAKU_INTERNAL_LISTEN", "server.internal_listen"),
    ("DANMAKU_JWT_SECRET", "auth.jwt_secret"),
    ("DANMAKU_GIFT_SECRETS", "auth.gift_secrets"),
    ("DANMAKU_ADMIN_TOKEN", "auth.admin_token"),
    ("DANMAKU_REDIS_URL", "store.redis_url"),
    ("DANMAKU_REPLAY_REDIS_URL", "store.replay_redis_url"),
    ("DANMAKU_ARCHIVE_URL", "archive.url"),
    // The old name of `archive.run_archiver` (see `RENAMED_KEYS`).
    ("DANMAKU_ARCHIVE__COPIER", "archive.run_archiver"),
    ("DANMAKU_KAFKA_BROKERS", "bus.kafka_brokers"),
    ("DANMAKU_TICK_MS", "fanout.tick_ms"),
    ("DANMAKU_LOG_FORMAT", "log.format"),
];

/// Keys renamed since a release, as (section, old, new): a config file that
/// still uses the old name keeps working (the value moves to the new key).
const RENAMED_KEYS: &[(&str, &str, &str)] = &[
    // It runs the whole archiver role now, not a copier of ended lives.
    ("archive", "copier", "run_archiver"),
];

/// Moves values under old key names (`RENAMED_KEYS`) to their new names.
pub(super) fn rename_legacy_keys(over: &mut toml::Table) {
    for (section, old, new) in RENAMED_KEYS {
        if let Some(toml::Value::Table(sec)) = over.get_mut(*section) {
            if let Some(value) = sec.remove(*old) {
                sec.entry(new.to_string()).or_insert(value);
            }
        }
    }
}

pub(super) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Applies one environment variable; returns the `section.key` it set (None:
/// not a config variable).
pub(super) fn apply_env(
    table: &mut toml::Table,
    name: &str,
    value: &str,
) -> anyhow::Result<Option<String>> {
    let path = if let Some((_, path)) = FIXED_ENV.iter().find(|(n, _)| *n == name) {
        path.to_string()
    } else if let Some(rest) = name.strip_prefix("DANMAKU_") {
        if !rest.contains("__") {
            return Ok(None); // a fixed name of a later engine, or not ours
        }
        rest.to_ascii_lowercase().replace("__", ".")
    } else {
        return Ok(None);
    };
    let (section, key) = path
        .split_once('.')
        .with_context(|| format!("{name}: expected DANMAKU_<SECTION>__<KEY>"))?;
    let Some(toml::Value::Table(sec)) = table.get_mut(section) else {
        bail!("{name}: unknown config section {section:?}");
    };
    let Some(current) = sec.get(key) else {
        bail!("{name}: unknown config key {section}.{key}");
    };
    let parsed =
        parse_like(current, value).with_context(|| format!("{name}: bad value for {path}"))?;
    sec.insert(key.to_string(), parsed);
    Ok(Some(path))
}

/// Parses an environment string as the type the default already has. A list
/// is comma-separated, its items typed like the default's first item (strings
/// when the default is empty); a list of pairs (`ration.budget_tiers`) takes
/// `a:b` items: `0:200,1000:100`.
fn parse_like(current: &toml::Value, value: &str) -> anyhow::Result<toml::Value> {
    Ok(match current {
        toml::Value::String(_) => toml::Value::String(value.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            value
                .trim()
                .parse()
                .with_context(|| format!("{value:?} is not an integer"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            value
                .trim()
                .parse()
                .with_context(|| format!("{value:?} is not a number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value
                .trim()
                .parse()
                .with_context(|| format!("{value:?} is not true or false"))?,
        ),
        toml::Value::Array(items) => {
            let item = items
                .first()
                .cloned()
                .unwrap_or_else(|| toml::Value::String(String::new()));
            toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| parse_item(&item, s))
                    .collect::<anyhow::Result<_>>()?,
            )
        }
        other => bail!(
            "cannot override a {} from the environment",
            other.type_str()
        ),
    })
}

/// One list item; an item of a list of lists is `a:b[:…]`.
fn parse_item(like: &toml::Value, s: &str) -> anyhow::Result<toml::Value> {
    match like {
        toml::Value::Array(inner) => {
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() != inner.len() {
                bail!(
                    "{s:?}: each item takes {} values joined by ':' (e.g. 0:200)",
                    inner.len()
                );
            }
            Ok(toml::Value::Array(
                inner
                    .iter()
                    .zip(parts)
                    .map(|(like, part)| parse_like(like, part))
                    .collect::<anyhow::Result<_>>()?,
            ))
        }
        other => parse_like(other, s),
    }
}
