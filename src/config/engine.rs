//! Engine choices (`bus.engine`, `store.engine`) as enums, spelled in TOML
//! and the environment as their lowercase names.

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
