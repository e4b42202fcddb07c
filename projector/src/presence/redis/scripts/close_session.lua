-- close_session: ARGV[2] user, ARGV[3] session id.
-- Returns 1 when the user just went offline, else 0.

local user, session = ARGV[2], ARGV[3]

local before = live_sessions(user)
-- Whatever is left after live_sessions is on a live node.
local node = redis.call('HGET', user_key(user), session)
if not node then
  return 0
end
forget(user, session, node)
if before == 1 then
  return 1
end
return 0
