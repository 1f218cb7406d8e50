-- What a node that saw notices up to ARGV[1] missed.
-- KEYS[1] dm:{ctl}:version   KEYS[2] dm:{ctl}:log
-- (The version goes back as a string so the answer is one type.)
-- Returns {version} when nothing is missed, {version, 'too_old'} when the log
-- no longer reaches back, else {version, wire...} oldest first.
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[1])
if version <= after then
  return {tostring(version)}
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #oldest == 0 or tonumber(oldest[2]) > after + 1 then
  return {tostring(version), 'too_old'}
end
local out = {tostring(version)}
for _, wire in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. after, '+inf')) do
  out[#out + 1] = wire
end
return out
