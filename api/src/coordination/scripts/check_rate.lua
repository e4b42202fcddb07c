-- check_rate: the generic cell rate algorithm. KEYS[1] holds the key's theoretical arrival time
-- (TAT) in microseconds on the Redis clock; ARGV[1] is the emission interval (period / limit) and
-- ARGV[2] the period, both in microseconds.
-- Returns 0 when the request is allowed, else the microseconds until one would be.
--
-- Redis's own clock is the one every node shares, so nodes with skewed clocks still enforce one
-- limit. A key expires when its TAT has passed, which is the same as a key never seen: a full
-- burst. A limited request writes nothing, so it does not use up the next one's slot.

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval, period = tonumber(ARGV[1]), tonumber(ARGV[2])

local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
-- How far this request would put the key ahead of schedule; at most one period is allowed.
local ahead = tat - now + interval
if ahead > period then
  return ahead - period
end
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', math.ceil(ahead / 1000))
return 0
