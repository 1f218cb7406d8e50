-- Publishes one node's counts and sums every live node's counts of the same
-- rooms. See docs/redis-keys.md, "Presence".
--
-- KEYS: 1 the nodes sorted set, 2 this node's hash.
-- ARGV: 1 node, 2 ttl (ms), 3 node hash prefix, 4 "1" when the counts are
--       the ones this node sent last time, then room, count pairs.
-- Returns one integer per pair: the room's count summed over live nodes.
--
-- An idle cluster runs this once per node per second, so it is kept to what
-- must happen: unchanged counts only refresh the hash's TTL, expired nodes
-- are pruned only when one is seen, and this node's own counts are taken
-- from ARGV rather than read back.
-- Redis < 5 must be told to replicate effects before TIME; a no-op since 7.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
local unchanged = ARGV[4] == '1'
-- unpack() is bounded by the Lua stack: commands take at most CHUNK args.
local CHUNK = 1000
local fields = {}
local sums = {}
local counts = {}
for i = 5, #ARGV, 2 do
  local count = tonumber(ARGV[i + 1])
  fields[#fields + 1] = ARGV[i]
  sums[#sums + 1] = count
  if count > 0 then
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i + 1]
  end
end
-- This node's hash: rewritten when the counts changed or the hash is gone
-- (expired, or a Redis that lost it); else its TTL is refreshed.
local refreshed = unchanged and (#counts == 0 or redis.call('PEXPIRE', KEYS[2], ttl) == 1)
if not refreshed then
  redis.call('DEL', KEYS[2])
  for i = 1, #counts, CHUNK do
    redis.call('HSET', KEYS[2], unpack(counts, i, math.min(i + CHUNK - 1, #counts)))
  end
  if #counts > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
redis.call('ZADD', KEYS[1], now + ttl, node)
redis.call('PEXPIRE', KEYS[1], ttl)
local expired = false
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for m = 1, #members, 2 do
  local other = members[m]
  if tonumber(members[m + 1]) <= now then
    expired = true
  elseif other ~= node and #fields > 0 then
    local key = prefix .. other
    for i = 1, #fields, CHUNK do
      local vals = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
      for j = 1, #vals do
        local v = tonumber(vals[j])
        if v then sums[i + j - 1] = sums[i + j - 1] + v end
      end
    end
  end
end
if expired then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
return sums
