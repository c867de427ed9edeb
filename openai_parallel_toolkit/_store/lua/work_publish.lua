-- Publish a round's plan: the chunks staged by the planner become the job's stream, at once.
--
-- KEYS[1]: the job's hash; KEYS[2]: the planner's staging stream; KEYS[3]: the job's stream.
-- ARGV: worker id, consumer group, lease (ms), chunk count, then field/value pairs to record.
-- Returns 1 when published (with no chunks the round goes straight to finishing, this worker
-- holding the lease), 0 when this worker no longer holds the planning lease (nothing changed).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local me, group, lease, total = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'phase', 'owner')
if state[1] ~= 'planning' or state[2] ~= me then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('DEL', KEYS[3])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'total', total, 'acked', 0)
if total == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'phase', 'finishing', 'until', now + lease)
  return 1
end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('XGROUP', 'CREATE', KEYS[3], group, '0')
redis.call('HSET', KEYS[1], 'phase', 'running')
redis.call('HDEL', KEYS[1], 'owner', 'until')
return 1
