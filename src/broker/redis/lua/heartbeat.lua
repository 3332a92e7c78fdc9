#!lua
-- One incarnation of a node says it is alive, and learns whether the cluster
-- declared it dead meanwhile (it was paused or cut off past its heartbeat TTL and a
-- survivor evicted its sessions). One slot: the node's own keys.
-- KEYS[1] heartbeat hash `node:{N}`, KEYS[2] this run's dead marker,
-- KEYS[3] this run's sessions hash
-- ARGV: 1 run id, 2 node info (JSON), 3 heartbeat TTL ms, 4 sessions TTL seconds
-- Returns 1 when this run had been declared dead (the marker is consumed and no
-- heartbeat is written: the run is over), else 0.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('HSET', KEYS[1], 'run', ARGV[1], 'info', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 0
