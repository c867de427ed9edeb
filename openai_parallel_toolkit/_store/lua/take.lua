-- Take a slice of one limit group's shared budget, give unused budget back, or just look.
--
-- Two token buckets (requests, tokens) refill continuously at limit / 60 per second and
-- hold `burst` seconds of refill; Redis's own TIME is the one clock of every worker.
-- KEYS[1]: the group's hash; KEYS[2]: the sorted set of live workers (score: last seen, ms).
-- ARGV: worker id, requests wanted (negative: given back), tokens wanted (likewise),
--       requests per minute and tokens per minute known to the caller (0: unknown),
--       burst seconds, cool-down to publish (ms, 0: none), worker lease (ms).
-- Returns strings: requests granted, tokens granted, ms until the wanted amount is there,
--       ms of cool-down left, live workers, requests per minute, tokens per minute.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local worker = ARGV[1]
local want_r, want_t = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local burst_ms = tonumber(ARGV[6]) * 1000
local cool_ms, lease_ms = tonumber(ARGV[7]), tonumber(ARGV[8])

redis.call('ZADD', KEYS[2], now, worker)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease_ms)
redis.call('PEXPIRE', KEYS[2], lease_ms * 10)
local workers = redis.call('ZCARD', KEYS[2])

local saved = redis.call('HMGET', KEYS[1], 'r', 't', 'at', 'cool', 'rpm', 'tpm')
-- A limit the caller does not know yet may have been learned by another worker.
if rpm <= 0 then rpm = tonumber(saved[5]) or 0 end
if tpm <= 0 then tpm = tonumber(saved[6]) or 0 end
local at = tonumber(saved[3]) or now
local cool = tonumber(saved[4]) or 0
if cool_ms > 0 then cool = math.max(cool, now + cool_ms) end
local cooling = cool > now

local wait = 0
-- One bucket: its level now, what it grants of `want` (whole units if `whole`), and when
-- (in `wait`) it will hold the rest.
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
    -- Wait for half of what is missing (a whole request at least): one round trip then
    -- brings several sends, not one.
    local needed = math.min(want - granted, cap) / 2
    if whole then needed = math.max(1, math.floor(needed)) end
    wait = math.max(wait, (needed - level) / rate)
  end
  return level, granted
end

local r, granted_r = bucket(saved[1], rpm, want_r, true)
local t, granted_t = bucket(saved[2], tpm, want_t, false)
if cooling then wait = cool - now end

redis.call('HSET', KEYS[1], 'r', tostring(r), 't', tostring(t), 'at', tostring(now),
  'cool', tostring(cool), 'rpm', tostring(rpm), 'tpm', tostring(tpm))
redis.call('PEXPIRE', KEYS[1], 600000)
return {tostring(granted_r), tostring(granted_t), tostring(math.ceil(wait)),
  tostring(math.max(0, cool - now)), tostring(workers), tostring(rpm), tostring(tpm)}
