-- Claims the cleanup of a dead node. Reading and deleting its session list is one
-- atomic step, so exactly one survivor gets the list; others get nothing to do.
-- KEYS[1] dead node's key, KEYS[2] its sessions hash, KEYS[3] its dead marker, KEYS[4] node set
-- ARGV: 1 dead node id, 2 marker TTL seconds
-- Returns { user, session, ... } to evict; empty when already claimed or alive again.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {}
end
-- Tells the node, should it come back, that its sessions are gone.
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
local sessions = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[1])
return sessions
