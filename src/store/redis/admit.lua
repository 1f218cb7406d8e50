-- The per-post gate (src/store/control/gcra.rs is the same arithmetic).
-- KEYS[1] dm:{u:<user>}:mute  global mute: until (unix ms), expires then
-- KEYS[2] dm:{u:<user>}:rate  the user's GCRA arrival time (ms)
-- ARGV[1] interval ms (1000 / rate)   ARGV[2] burst tolerance ms
-- Returns {0} open, {1, until_ms} muted, {2, retry_after_ms} over the rate.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local muted = tonumber(redis.call('GET', KEYS[1]) or '0')
if muted > now then
  return {1, muted}
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now then
  tat = now
end
if tat - now > tolerance then
  return {2, math.max(1, math.ceil(tat - now - tolerance))}
end
local next_tat = tat + interval
-- Kept only while it still matters: once past, the bucket is full anyway.
redis.call('SET', KEYS[2], string.format('%.0f', next_tat), 'PX', math.ceil(next_tat - now) + 1)
return {0}
