-- End the phase this worker leads: finishing -> done (the stream is dropped), or
-- planning -> refused with the reason, so that the other workers stop with it.
--
-- KEYS[1]: the job's hash; KEYS[2]: the job's stream. ARGV: worker id, phase left, phase
-- entered, reason ('' for none). Returns 1, or 0 when this worker no longer leads the phase.
local me, from, to, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = redis.call('HMGET', KEYS[1], 'phase', 'owner')
if state[1] ~= from or state[2] ~= me then
  return 0
end
redis.call('HSET', KEYS[1], 'phase', to, 'reason', reason)
redis.call('HDEL', KEYS[1], 'owner', 'until')
redis.call('DEL', KEYS[2])
return 1
