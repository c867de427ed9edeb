-- Hand back every chunk this worker holds, for another worker to take over at once.
--
-- KEYS[1]: the job's stream. ARGV: consumer group, worker id, lease (ms), counted ('1': the
-- worker failed, so this delivery counts against the chunk; '0': it was stopped, so it does
-- not). A chunk's lease is its idle time in the pending list: setting it to the lease makes
-- the chunk claimable now (XAUTOCLAIM with the lease as minimum idle time). The next claim
-- adds one to the delivery count, so an uncounted hand-back takes one off here.
-- Returns the number of chunks handed back.
local group, me, lease, counted = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local released, start = 0, '-'
while true do
  local pending = redis.call('XPENDING', KEYS[1], group, start, '+', 100, me)
  if #pending == 0 then
    return released
  end
  for _, entry in ipairs(pending) do
    local deliveries = tonumber(entry[4])
    if not counted and deliveries > 0 then
      deliveries = deliveries - 1
    end
    redis.call('XCLAIM', KEYS[1], group, me, 0, entry[1], 'IDLE', lease,
      'RETRYCOUNT', deliveries, 'JUSTID')
    released = released + 1
    start = '(' .. entry[1]
  end
end
