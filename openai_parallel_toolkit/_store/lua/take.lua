-- Take slices of several limit groups' shared budgets, give unused budget back, or just look,
-- in one call.
--
-- Each group's budget is two token buckets (requests, tokens) that refill continuously at
-- limit / 60 per second and hold `burst` seconds of refill; Redis's own TIME is the one clock
-- of every worker.
-- KEYS[1]: the sorted set of live workers (score: last seen, ms); KEYS[2..]: one hash per group.
-- ARGV[1]: worker id; ARGV[2]: worker lease (ms); then per group, 6 values: requests wanted
--   (negative: given back), tokens wanted (likewise), requests and tokens per minute known to
--   the caller (0: unknown), burst seconds, cool-down to publish (ms, 0: none).
-- Returns the live workers, then per group 6 strings: requests granted, tokens granted, ms
--   until the bucket holds half of what was still wanted, ms of cool-down left, requests and
--   tokens per minute (as stored: another worker may have learned them).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])

redis.call('ZADD', KEYS[1], now, worker)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease_ms)
redis.call('PEXPIRE', KEYS[1], lease_ms * 10)
local answer = {tostring(redis.call('ZCARD', KEYS[1]))}

for g = 2, #KEYS do
  local base = 2 + (g - 2) * 6
  local want_r, want_t = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local rpm, tpm = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local burst_ms = tonumber(ARGV[base + 5]) * 1000
  local cool_ms = tonumber(ARGV[base + 6])

  local saved = redis.call('HMGET', KEYS[g], 'r', 't', 'at', 'cool', 'rpm', 'tpm')
  -- A limit the caller does not know yet may have been learned by another worker.
  if rpm <= 0 then rpm = tonumber(saved[5]) or 0 end
  if tpm <= 0 then tpm = tonumber(saved[6]) or 0 end
  local at = tonumber(saved[3]) or now
  local cool = tonumber(saved[4]) or 0
  if cool_ms > 0 then cool = math.max(cool, now + cool_ms) end
  local cooling = cool > now
  local wait = 0

  -- One bucket: its level now, and what it grants of `want` (whole units if `whole`).
  local function bucket(level, per_min, want, whole)
    if per_min <= 0 then return 0, 0 end
    local rate = per_min / 60000
    local cap = math.max(1, rate * burst_ms)
    level = tonumber(level) or cap
    level = math.min(cap, level + rate * math.max(0, now - at))
    if want < 0 then return math.min(cap, level - want), 0 end
    if cooling or want == 0 then return level, 0 end
    local granted = math.min(want, math.max(0, level))
    if whole then granted = math.floor(granted) end
    level = level - granted
    if granted < want then
      -- Wait for half of what is missing (a whole request at least), so that the next
      -- call brings several sends, not one.
      local needed = math.min(want - granted, cap) / 2
      if whole then needed = math.max(1, math.floor(needed)) end
      wait = math.max(wait, (needed - level) / rate)
    end
    return level, granted
  end

  local r, granted_r = bucket(saved[1], rpm, want_r, true)
  local t, granted_t = bucket(saved[2], tpm, want_t, false)
  if cooling then wait = cool - now end

  redis.call('HSET', KEYS[g], 'r', tostring(r), 't', tostring(t), 'at', tostring(now),
    'cool', tostring(cool), 'rpm', tostring(rpm), 'tpm', tostring(tpm))
  redis.call('PEXPIRE', KEYS[g], 600000)
  for _, value in ipairs({granted_r, granted_t, math.ceil(wait), math.max(0, cool - now),
                          rpm, tpm}) do
    answer[#answer + 1] = tostring(value)
  end
end
return answer
