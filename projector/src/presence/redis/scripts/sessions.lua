-- Prelude of every session script: the key layout of sessions, leases and the session registry,
-- and the lazy clean-up of sessions held by nodes whose lease lapsed. ARGV[1] is the key prefix,
-- a hash tag that puts every key below in the slot of KEYS[1], the set of known nodes; each
-- script's own arguments start at ARGV[2].
--
-- Invariant kept by every script: member 'USER:SESSION' is in a node's registry exactly when
-- USER's session hash maps SESSION to that node. None of these keys has a TTL (only the lease
-- keys do), so expiry cannot break it.

local prefix = ARGV[1]
local nodes_key = KEYS[1]

local function lease_key(node)
  return prefix .. 'lease:' .. node
end

local function registry_key(node)
  return prefix .. 'node:' .. node .. ':sessions'
end

local function user_key(user)
  return prefix .. 'user:' .. user .. ':sessions'
end

local function member(user, session)
  return user .. ':' .. session
end

-- User ids are decimal integers, so the first ':' ends the user; the session id may hold more.
local function split_member(entry)
  return string.match(entry, '^([^:]*):(.*)$')
end

-- Leases cannot change while a script runs, so each node is looked up once per call.
local live_nodes = {}
local function is_live(node)
  if live_nodes[node] == nil then
    live_nodes[node] = redis.call('EXISTS', lease_key(node)) == 1
  end
  return live_nodes[node]
end

local function forget(user, session, node)
  local key = user_key(user)
  if redis.call('HGET', key, session) == node then
    redis.call('HDEL', key, session)
  end
  redis.call('SREM', registry_key(node), member(user, session))
end

-- Counts USER's sessions on live nodes. Sessions on lapsed nodes are forgotten on the way: their
-- user has already been reported offline, and keeping them would bring the user back online
-- unannounced should that node renew its lease late.
local function live_sessions(user)
  local entries = redis.call('HGETALL', user_key(user))
  local count = 0
  for i = 1, #entries, 2 do
    local session, node = entries[i], entries[i + 1]
    if is_live(node) then
      count = count + 1
    else
      forget(user, session, node)
    end
  end
  return count
end

