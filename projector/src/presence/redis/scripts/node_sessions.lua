-- node_sessions: ARGV[2] node.
-- Returns the node's registry as { {user, session id}, ... }, in no particular order.

local sessions = {}
for i, entry in ipairs(redis.call('SMEMBERS', registry_key(ARGV[2]))) do
  local user, session = split_member(entry)
  sessions[i] = { user, session }
end
return sessions
