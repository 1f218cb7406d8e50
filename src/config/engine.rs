//! Engine choices (`bus.engine`, `store.engine`) as enums, spelled in TOML
//! and the environment as their lowercase names, and the choice an engine's
//! address makes when the engine is not named.

use serde::Deserialize;

/// `bus.engine`: which engine carries the ingest stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEngine {
    /// In-process partitioned queues (one process).
    Memory,
    /// Kafka (shared; needs `bus.kafka_brokers`).
    Kafka,
}

/// `store.engine`: which engine holds the live rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreEngine {
    /// In-memory per-room buffers (one process).
    Memory,
    /// Redis (shared; needs `store.redis_url`).
    Redis,
}

/// The spellings of an engine enum, its parsing (an unknown value names the
/// key and the engines this build has), serde and `Display`.
macro_rules! engine_choice {
    ($ty:ident, $key:literal, [$(($variant:ident, $name:literal)),+ $(,)?]) => {
        impl $ty {
            /// The spelling in TOML and the environment.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(unknown_engine($key, other, &[$($name),+])),
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

engine_choice!(
    BusEngine,
    "bus.engine",
    [(Memory, "memory"), (Kafka, "kafka")]
);
engine_choice!(
    StoreEngine,
    "store.engine",
    [(Memory, "memory"), (Redis, "redis")]
);

fn unknown_engine(key: &str, value: &str, names: &[&str]) -> String {
    format!(
        "{key} {value:?} is not available in this build ({})",
        names.join(", ")
    )
}

/// The engine keys, each with the address key that implies its shared engine.
const IMPLIED: &[(&str, &str, &str)] = &[
    ("store", "redis_url", "redis"),
    ("bus", "kafka_brokers", "kafka"),
];

/// An address given while its engine is not named selects that engine (a
/// Redis URL alone must not leave a node on its private memory store); an
/// address given with `memory` named is a contradiction and stops start-up.
/// `named(section)`: the operator named `<section>.engine` (file or env),
/// as opposed to the embedded default.
pub(super) fn select_implied(
    table: &mut toml::Table,
    named: impl Fn(&str) -> bool,
) -> Result<(), String> {
    for (section, address_key, engine) in IMPLIED {
        let Some(toml::Value::Table(sec)) = table.get_mut(*section) else {
            continue;
        };
        let address = sec.get(*address_key).and_then(|v| v.as_str()).unwrap_or("");
        if address.trim().is_empty() {
            continue;
        }
        let current = sec.get("engine").and_then(|v| v.as_str()).unwrap_or("");
        if !named(section) {
            sec.insert("engine".into(), toml::Value::String(engine.to_string()));
        } else if current == "memory" {
            return Err(format!(
                "{section}.{address_key} is set but {section}.engine is \"memory\": name \
                 {section}.engine = \"{engine}\" to use it, or remove {section}.{address_key}"
            ));
        }
    }
    Ok(())
}
