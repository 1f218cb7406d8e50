-- Retracts one message of a room, atomically. See docs/redis-keys.md.
--
-- KEYS: 1 ids, 2 b:whitelist, 3 b:high, 4 b:low, 5 retracted.
-- ARGV: 1 message id, 2 retractions kept, 3 ttl_s (0 = no expiry).
-- Returns nil if the id is not among the room's recent ids (nothing
-- changed), else {seq, member}: member = the message JSON taken out of its
-- bucket, or nil if it had left already (trimmed, or retracted before).
-- `trimmed` is not touched: a removed message is not a gap.
local seq = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seq then return nil end
local member = false
for b = 2, 4 do
  local found = redis.call('ZRANGEBYSCORE', KEYS[b], seq, seq)
  if #found > 0 then
    member = found[1]
    redis.call('ZREMRANGEBYSCORE', KEYS[b], seq, seq)
    break
  end
end
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(tonumber(ARGV[2]) + 1))
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[5], ttl) end
return {tonumber(seq), member}
