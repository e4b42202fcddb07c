-- head: where the feed stands, creating it (and fixing its epoch) if it does not exist yet.
-- Returns its epoch, its newest number, when that was appended and its oldest number kept.

open_feed()
return redis.call('HMGET', head_key, 'epoch', 'seq', 'at', 'first')
