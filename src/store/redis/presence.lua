-- Publishes one node's counts and sums every live node's counts of the same
-- rooms. See docs/redis-keys.md.
--
-- KEYS: 1 the nodes sorted set, 2 this node's hash.
-- ARGV: 1 node, 2 ttl (ms), 3 node hash prefix, then room, count pairs.
-- Returns one integer per pair: the room's count summed over live nodes.
-- Redis < 5 must be told to replicate effects before TIME; a no-op since 7.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
-- unpack() is bounded by the Lua stack: commands take at most CHUNK args.
local CHUNK = 1000
local fields = {}
local counts = {}
for i = 4, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  if tonumber(ARGV[i + 1]) > 0 then
    counts[#counts + 1] = ARGV[i]
    counts[#counts + 1] = ARGV[i + 1]
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #counts, CHUNK do
  redis.call('HSET', KEYS[2], unpack(counts, i, math.min(i + CHUNK - 1, #counts)))
end
if #counts > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
local sums = {}
for i = 1, #fields do sums[i] = 0 end
if #fields > 0 then
  for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local key = prefix .. node
    for i = 1, #fields, CHUNK do
      local vals = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
      for j = 1, #vals do
        local v = tonumber(vals[j])
        if v then sums[i + j - 1] = sums[i + j - 1] + v end
      end
    end
  end
end
return sums
