-- open_session: ARGV[2] user, ARGV[3] session id, ARGV[4] node, ARGV[5] a lease in milliseconds
-- that the node takes if it holds none, or 0. The caller passes a lease only for its own node: a
-- node opening a session is evidently running, and this restores its lease at once after Redis
-- lost it (a restart) or never had it (the node started while Redis was down).
-- Returns 1 when the user just came online, else 0.

local user, session, node, own_lease = ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if own_lease ~= '0' then
  redis.call('SET', lease_key(node), '1', 'PX', own_lease, 'NX')
end
local before = live_sessions(user)

-- Reopening a session id on another node moves it there.
local previous = redis.call('HGET', user_key(user), session)
if previous and previous ~= node then
  redis.call('SREM', registry_key(previous), member(user, session))
end
redis.call('HSET', user_key(user), session, node)
redis.call('SADD', registry_key(node), member(user, session))
-- Known nodes are where renew_lease looks for lapsed ones to sweep.
redis.call('SADD', nodes_key, node)

if before == 0 and is_live(node) then
  return 1
end
return 0
