-- renew_lease: ARGV[2] node, ARGV[3] lease in milliseconds, ARGV[4] how many known nodes to
-- look at, ARGV[5] how many sessions of a lapsed node to sweep at most.
-- Returns nothing.
--
-- Every live node renews every few seconds, so the renewals double as the sweeper of nodes that
-- died: each looks at a few random known nodes and forgets a bounded batch of the sessions of
-- any whose lease lapsed. A lapsed node leaves the known set once its registry is empty, so a
-- dead node's keys are all gone after a few renewals, even for users nobody asks about.

local node, lease_ms = ARGV[2], ARGV[3]
local sample, batch = tonumber(ARGV[4]), tonumber(ARGV[5])

redis.call('SET', lease_key(node), '1', 'PX', lease_ms)
redis.call('SADD', nodes_key, node)

for _, other in ipairs(redis.call('SRANDMEMBER', nodes_key, sample)) do
  if not is_live(other) then
    local registry = registry_key(other)
    for _, entry in ipairs(redis.call('SRANDMEMBER', registry, batch)) do
      local user, session = split_member(entry)
      forget(user, session, other)
    end
    if redis.call('EXISTS', registry) == 0 then
      redis.call('SREM', nodes_key, other)
    end
  end
end
