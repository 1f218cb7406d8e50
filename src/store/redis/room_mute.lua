-- Sets (ARGV[2] > 0) or lifts (ARGV[2] = 0) a room mute, dropping mutes that
-- have run out so the hash stays the size of the mutes in force.
-- KEYS[1] dm:{room}:mutes  hash: user -> until (unix ms)
-- ARGV[1] user   ARGV[2] until ms (0 = unmute)
-- Returns 1 if the user was muted before (and the mute was in force), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if before > now then
  return 1
end
return 0
