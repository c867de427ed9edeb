-- Renew this worker's leases: the phase it leads (planning, finishing) and the chunks it holds.
--
-- KEYS[1]: the job's stream; KEYS[2]: the job's hash. ARGV: consumer group, worker id,
-- lease (ms), then the entry ids this worker believes it holds.
-- A chunk's lease is its idle time in the group's pending list: XCLAIM by its owner resets it.
-- A chunk another worker took over is left alone. Returns the ids still held.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local group, me, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[2], 'phase', 'owner')
if (state[1] == 'planning' or state[1] == 'finishing') and state[2] == me then
  redis.call('HSET', KEYS[2], 'until', now + lease)
end
local held = {}
if #ARGV > 3 and redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 4, #ARGV do
    local pending = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
    if #pending == 1 and pending[1][2] == me then
      redis.call('XCLAIM', KEYS[1], group, me, 0, ARGV[i], 'JUSTID')
      held[#held + 1] = ARGV[i]
    end
  end
end
return held
