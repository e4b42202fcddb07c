-- append: entries into users' feeds, in order. Entry i goes into the feed whose head and stream
-- are KEYS[2i-1] and KEYS[2i]; ARGV[3i+1] is its event's source partition (`messages.3`),
-- ARGV[3i+2] the offset after the event's, i.e. the next one the feed takes from that partition,
-- and ARGV[3i+3] its frame. ARGV[1] is the retention window in ms, ARGV[2] how many newest entries
-- are kept whatever their age, ARGV[3] how many old entries one entry's append removes at most.
-- A feed that took an entry's offset already skips it.
--
-- Taking the offset, numbering, storing, trimming and publishing happen in one script, so every
-- node sees a feed's numbers handed out once and in order, and a follower hears an entry only
-- once it is stored, under the number a read returns it with. One call takes many entries:
-- starting a script costs Redis about a third of what appending an entry does. An entry takes
-- four calls in all (each about 1.3 µs of Redis's time): the read of its feed's head, which also
-- tells whether the feed exists, and its XADD, HSET and PUBLISH. A stream Redis lost is found by
-- the XADD, which NOMKSTREAM keeps from creating it, rather than by an EXISTS of its own.

local window, min_events, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

-- Offsets are compared as decimal strings without leading zeros, exact where doubles are not.
local function below(a, b)
  return #a < #b or (#a == #b and a < b)
end

local function entry_time(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 't' then
      return tonumber(fields[i + 1])
    end
  end
  return 0
end

local function append(head_key, stream_key, source, next_offset, frame)
  local fields = redis.call('HMGET', head_key, source, 'seq', 'epoch', 'first', 'first_at')
  if not (fields[2] and fields[4]) then
    create_feed(head_key, stream_key)
    fields = redis.call('HMGET', head_key, source, 'seq', 'epoch', 'first', 'first_at')
  end
  local taken = fields[1]
  if taken and not below(taken, next_offset) then
    return
  end
  local seq = tonumber(fields[2]) + 1
  local epoch, first, first_at = fields[3], tonumber(fields[4]), tonumber(fields[5])
  local id = int(seq) .. '-0'
  if first == seq then
    -- The feed was empty (its stream may not exist yet): this entry is now its oldest.
    redis.call('XADD', stream_key, id, 't', int(now), 'f', frame)
    first_at = now
  elseif not redis.call('XADD', stream_key, 'NOMKSTREAM', id, 't', int(now), 'f', frame) then
    -- The feed holds entries, so its stream exists, unless Redis lost or evicted it: then the
    -- head's numbers name nothing, and the feed starts over.
    create_feed(head_key, stream_key)
    return append(head_key, stream_key, source, next_offset, frame)
  end
  redis.call('HSET', head_key, source, next_offset, 'seq', int(seq), 'at', int(now),
    'first_at', int(first_at))

  -- Retention: entries go only when older than the window and not among the newest min_events.
  -- Entries are numbered in the order of their times, so those form a prefix of the stream; one
  -- append removes a bounded part of it, which bounds how long the script holds Redis, and the
  -- feed's next appends take the rest.
  local cutoff = now - window
  local kept_from = math.max(seq - min_events, 0) + 1
  if first < kept_from and first_at < cutoff then
    local oldest = redis.call('XRANGE', stream_key, int(first) .. '-0', '+', 'COUNT', batch + 1)
    local dropped, new_first, new_first_at = 0, seq + 1, first_at
    for _, entry in ipairs(oldest) do
      local number, at = tonumber(string.match(entry[1], '^%d+')), entry_time(entry[2])
      if dropped == batch or number >= kept_from or at >= cutoff then
        new_first, new_first_at = number, at
        break
      end
      dropped = dropped + 1
    end
    redis.call('XTRIM', stream_key, 'MINID', int(new_first) .. '-0')
    redis.call('HSET', head_key, 'first', int(new_first), 'first_at', int(new_first_at))
  end

  redis.call('PUBLISH', stream_key, epoch .. ' ' .. int(seq) .. ' ' .. int(now) .. ' ' .. frame)
end

for i = 1, #KEYS / 2 do
  local arg = 3 * i
  append(KEYS[2 * i - 1], KEYS[2 * i], ARGV[arg + 1], ARGV[arg + 2], ARGV[arg + 3])
end
