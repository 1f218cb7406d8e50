-- Numbers a control notice, keeps it in the change log, publishes it.
-- KEYS[1] dm:{ctl}:version  cluster-wide notice counter
-- KEYS[2] dm:{ctl}:log      sorted set: score = version, member = "<version> <json>"
-- ARGV[1] the notice JSON   ARGV[2] pub/sub channel   ARGV[3] log capacity
-- Returns the notice's version.
local version = redis.call('INCR', KEYS[1])
local wire = version .. ' ' .. ARGV[1]
redis.call('ZADD', KEYS[2], version, wire)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PUBLISH', ARGV[2], wire)
return version
