//! Claims: idempotency / dedup keys with a TTL, in their own `claim:`
//! namespace (`docs/redis-keys.md`, "Claims").

use std::time::Duration;

use super::{ttl_ms, unavailable, RedisStore};
use crate::store::{Claim, StoreError};

/// Claims live in their own namespace so that a caller's key can never be
/// mistaken for (or clobber) a room key.
const CLAIM_PREFIX: &str = "claim:";

/// The claim script. KEYS and ARGV: the comment at its top.
pub(super) const CLAIM_LUA: &str = include_str!("claim.lua");

fn claim_key(key: &str) -> String {
    format!("{CLAIM_PREFIX}{key}")
}

impl RedisStore {
    pub(super) async fn claim_nx(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let (won, held): (i64, Option<String>) = self
            .scripts
            .claim
            .key(claim_key(key))
            .arg(value)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if won == 1 {
            Ok(Claim::Won)
        } else {
            // Held, or expired between SET and GET (impossible inside one script).
            Ok(Claim::Held(held.unwrap_or_default()))
        }
    }

    pub(super) async fn claim_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        ::redis::cmd("GET")
            .arg(claim_key(key))
            .query_async::<Option<String>>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub(super) async fn claim_set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        ::redis::cmd("SET")
            .arg(claim_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    pub(super) async fn claim_release(&self, key: &str) -> Result<(), StoreError> {
        ::redis::cmd("DEL")
            .arg(claim_key(key))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}
