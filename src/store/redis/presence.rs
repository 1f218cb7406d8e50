//! Presence (see `docs/architecture.md`, "Presence"): one Lua script
//! (`presence.lua`) per exchange over the `{presence}`-tagged keys
//! (`docs/redis-keys.md`, "Presence").

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ttl_ms, unavailable, RedisStore};
use crate::store::StoreError;

/// The sorted set of live nodes: member = node name, score = the time (ms,
/// Redis clock) its registration runs out.
const PRESENCE_NODES_KEY: &str = "{presence}:nodes";

/// Prefix of a node's presence hash (`{presence}:node:<node>`): field = room,
/// value = that node's viewer count.
const PRESENCE_NODE_PREFIX: &str = "{presence}:node:";

/// The exchange script. KEYS and ARGV: the comment at its top.
pub(super) const PRESENCE_LUA: &str = include_str!("presence.lua");

impl RedisStore {
    pub(super) async fn presence_exchange(
        &self,
        node: &str,
        local: &[(String, u64)],
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        // Unchanged counts only refresh the node's hash (the script checks
        // it still exists); 0 is never a fingerprint, so a fresh store and
        // a failed exchange always send the counts in full.
        let mut hasher = DefaultHasher::new();
        (node, local).hash(&mut hasher);
        let fingerprint = hasher.finish().max(1);
        let unchanged = self.presence_sent.load(Ordering::Relaxed) == fingerprint;
        let mut invocation = self.scripts.presence.prepare_invoke();
        invocation
            .key(PRESENCE_NODES_KEY)
            .key(format!("{PRESENCE_NODE_PREFIX}{node}"))
            .arg(node)
            .arg(ttl_ms(ttl))
            .arg(PRESENCE_NODE_PREFIX)
            .arg(if unchanged { "1" } else { "0" });
        for (room, count) in local {
            invocation.arg(room).arg(*count);
        }
        self.presence_sent.store(0, Ordering::Relaxed);
        let sums: Vec<u64> = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        self.presence_sent.store(fingerprint, Ordering::Relaxed);
        if sums.len() != local.len() {
            return Err(StoreError::Unavailable(format!(
                "redis presence returned {} counts for {} rooms",
                sums.len(),
                local.len()
            )));
        }
        Ok(sums)
    }
}
