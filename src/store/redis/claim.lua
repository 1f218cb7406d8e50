-- SET key value NX PX ttl, returning the held value when the key is taken.
--
-- KEYS: 1 the claim key. ARGV: 1 value, 2 ttl (ms).
-- Returns {1, nil} when claimed, {0, value} when held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, false}
end
return {0, redis.call('GET', KEYS[1])}
