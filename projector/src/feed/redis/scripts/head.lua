-- head: where the feed stands, creating it (and fixing its epoch) if it does not exist yet. KEYS[1]
-- is the feed's head, KEYS[2] its stream.
-- Returns its epoch, its newest number, when that was appended and its oldest number kept.

local head_key, stream_key = KEYS[1], KEYS[2]
open_feed(head_key, stream_key)
return redis.call('HMGET', head_key, 'epoch', 'seq', 'at', 'first')
