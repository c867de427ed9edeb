-- Join a shared job: say what this worker does next, taking the phase's lease when it is free.
--
-- A job goes through rounds: planning (one worker, under a lease) -> running (chunks in the
-- stream) -> finishing (one worker, under a lease) -> done; a planning refused ends as refused.
-- KEYS[1]: the job's hash. ARGV: worker id, lease (ms), the round the worker already joined
-- ('' for none: a finished or refused round then starts a new one).
-- Returns {round, action}: plan | finish (this worker holds the lease), wait (another does),
-- work (running), done | refused (the joined round is over).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local me, lease, joined = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local state = redis.call('HMGET', KEYS[1], 'round', 'phase', 'owner', 'until')
local round, phase = tonumber(state[1]) or 0, state[2]
if joined ~= '' and tonumber(joined) < round then
  return {round, 'done'}  -- a later round began: the one joined is over
end
if not phase or ((phase == 'done' or phase == 'refused') and joined == '') then
  round = round + 1
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'round', round, 'phase', 'planning', 'owner', me,
    'until', now + lease)
  return {round, 'plan'}
end
if phase == 'done' or phase == 'refused' or phase == 'running' then
  return {round, phase == 'running' and 'work' or phase}
end
-- planning or finishing: one worker at a time, taken over when its lease ran out
if state[3] == me or (tonumber(state[4]) or 0) < now then
  redis.call('HSET', KEYS[1], 'owner', me, 'until', now + lease)
  return {round, phase == 'planning' and 'plan' or 'finish'}
end
return {round, 'wait'}
