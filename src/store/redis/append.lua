-- Appends a batch to one room, atomically. See docs/redis-keys.md.
--
-- KEYS: 1 seq, 2 epoch, 3 b:whitelist, 4 b:high, 5 b:low, 6 ids, 7 trimmed,
--       8 primary (run_id of the server that last wrote the room).
-- ARGV: 1 epoch (used if the room has none, or after a failover), 2 max_per_bucket,
--       3 min_ts (ms; older messages are trimmed), 4 dedup_window, 5 ttl_s
--       (0 = no expiry), then 4 per message: id, bucket (1..3), json head,
--       json tail (the member is head .. seq .. tail).
-- Returns one integer per message: seq if stored, -seq if a duplicate; then
-- the stream's epoch (what a notice carrying the batch names).
local names = {'whitelist', 'high', 'low'}
-- A new epoch when a promoted replica (a failover: INFO replication names a
-- former replication id) first writes a room another server wrote last:
-- the promoted replica may lack the old primary's last writes (the seq
-- counter included), so seqs viewers already saw would be handed out again;
-- under a new epoch their cursors reset instead (docs/architecture.md,
-- "Failover"). A restart of the same primary keeps the epoch (its writes
-- survive only with appendfsync always). A room written before the primary
-- key existed keeps its epoch.
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local writer = redis.call('GET', KEYS[8])
local promoted = false
if writer and writer ~= run_id then
  local second = string.match(redis.call('INFO', 'replication'), 'second_repl_offset:(-?%d+)')
  promoted = second ~= nil and second ~= '-1'
end
if promoted then
  redis.call('SET', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[1], 'NX')
end
if writer ~= run_id then redis.call('SET', KEYS[8], run_id) end
local max = tonumber(ARGV[2])
local min_ts = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV, 4 do
  local id = ARGV[i]
  local old = redis.call('ZSCORE', KEYS[6], id)
  if old then
    out[#out + 1] = -tonumber(old)
  else
    local seq = redis.call('INCR', KEYS[1])
    local b = tonumber(ARGV[i + 1])
    redis.call('ZADD', KEYS[2 + b], seq, ARGV[i + 2] .. string.format('%d', seq) .. ARGV[i + 3])
    redis.call('ZADD', KEYS[6], seq, id)
    redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -(window + 1))
    out[#out + 1] = seq
  end
end
for b = 1, 3 do
  local key = KEYS[2 + b]
  local last = false
  local card = redis.call('ZCARD', key)
  if card > max then
    local cut = redis.call('ZRANGE', key, card - max - 1, card - max - 1, 'WITHSCORES')
    last = cut[2]
    redis.call('ZREMRANGEBYRANK', key, 0, card - max - 1)
  end
  while true do
    local front = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #front == 0 then break end
    local ok, m = pcall(cjson.decode, front[1])
    if not ok or type(m) ~= 'table' or type(m.ts) ~= 'number' or m.ts >= min_ts then break end
    redis.call('ZREMRANGEBYRANK', key, 0, 0)
    last = front[2]
  end
  if last then redis.call('HSET', KEYS[7], names[b], last) end
end
if ttl > 0 then
  for k = 1, 8 do redis.call('EXPIRE', KEYS[k], ttl) end
end
out[#out + 1] = redis.call('GET', KEYS[2])
return out
