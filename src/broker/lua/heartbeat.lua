-- A node says it is alive, and learns whether the cluster declared it dead meanwhile
-- (it was paused or cut off past its heartbeat TTL and a survivor evicted its users).
-- KEYS[1] node key, KEYS[2] node set, KEYS[3] node sessions hash, KEYS[4] dead marker
-- ARGV: 1 node_id, 2 node info (JSON), 3 heartbeat TTL ms, 4 sessions TTL seconds
-- Returns 1 when the node had been declared dead (the marker is consumed), else 0.
local dead = redis.call('GET', KEYS[4])
if dead then
  redis.call('DEL', KEYS[4])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if dead then
  return 1
end
return 0
