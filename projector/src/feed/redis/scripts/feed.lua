-- Prelude of every feed script: the clock, and how a user's feed is opened. A feed is two keys,
-- its head (a hash) and its stream, whose name is also the feed's pub/sub channel. Both carry the
-- user as their hash tag, so they share a Redis Cluster slot.

-- Redis's clock rather than the callers': entries appended through different nodes are stamped by
-- one clock, so the times in a feed follow its numbers and retention cuts it at one place.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- Lua numbers are doubles, which Redis would otherwise render in exponent notation when large.
local function int(number)
  return string.format('%d', number)
end

-- Creates the feed afresh, with the microsecond of its creation as its epoch: the numbers handed
-- out before mean nothing now, and a new epoch makes clients holding them start over instead of
-- reading a hole.
local function create_feed(head_key, stream_key)
  -- A stream left without its head belongs to an epoch nobody can name any more, and its newest
  -- ID would refuse the numbers the new epoch starts again from.
  redis.call('DEL', head_key, stream_key)
  local epoch = clock[1] .. string.format('%06d', tonumber(clock[2]))
  redis.call('HSET', head_key, 'epoch', epoch, 'seq', 0, 'at', 0, 'first', 1, 'first_at', 0)
end

-- Makes sure the feed exists: creates it when its head is missing, or when the head counts entries
-- its stream no longer has (Redis lost or evicted one of the two keys).
local function open_feed(head_key, stream_key)
  local fields = redis.call('HMGET', head_key, 'seq', 'first')
  local seq, first = tonumber(fields[1]), tonumber(fields[2])
  if not (seq and first and (first > seq or redis.call('EXISTS', stream_key) == 1)) then
    create_feed(head_key, stream_key)
  end
end
