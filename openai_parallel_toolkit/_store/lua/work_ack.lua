-- Acknowledge a chunk written, if this worker still holds it; the last one starts finishing.
--
-- KEYS[1]: the job's stream; KEYS[2]: the job's hash. ARGV: consumer group, entry id,
-- worker id, lease (ms).
-- Returns 0 when the chunk is no longer this worker's (taken over after its lease: nothing
-- changed), 1 when acknowledged, 2 when it was the job's last: this worker finishes the round.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local group, id, me, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #pending == 0 or pending[1][2] ~= me then
  return 0
end
redis.call('XACK', KEYS[1], group, id)
local acked = redis.call('HINCRBY', KEYS[2], 'acked', 1)
local state = redis.call('HMGET', KEYS[2], 'total', 'phase')
if acked >= (tonumber(state[1]) or 0) and state[2] == 'running' then
  redis.call('HSET', KEYS[2], 'phase', 'finishing', 'owner', me, 'until', now + lease)
  return 2
end
return 1
