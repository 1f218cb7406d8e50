//! Retractions (`retract.lua`): a message taken out of its bucket by id, in
//! one script on the room's hash tag. Key layout: `docs/redis-keys.md`,
//! "Retractions".

use bytes::Bytes;

use super::stream::{decode_member, RoomKeys};
use super::{unavailable, RedisStore};
use crate::store::{Retraction, StoreError, RETRACTIONS_KEPT};

/// The retract script. KEYS and ARGV: the comment at its top.
pub(super) const RETRACT_LUA: &str = include_str!("retract.lua");

impl RedisStore {
    pub(super) async fn stream_retract(
        &self,
        room: &str,
        id: &str,
    ) -> Result<Option<Retraction>, StoreError> {
        let keys = RoomKeys::new(room);
        let out: Option<(u64, Option<Bytes>)> = self
            .scripts
            .retract
            .key(&keys.ids)
            .key(&keys.buckets[0])
            .key(&keys.buckets[1])
            .key(&keys.buckets[2])
            .key(&keys.retracted)
            .arg(id)
            .arg(RETRACTIONS_KEPT)
            .arg(self.config.room_ttl_s)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(out.map(|(seq, member)| Retraction {
            seq,
            message: member.and_then(decode_member),
        }))
    }
}
