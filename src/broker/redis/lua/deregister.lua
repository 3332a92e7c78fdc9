#!lua
-- A run ends cleanly (SIGTERM). One slot: the node's own keys.
-- KEYS[1] heartbeat hash `node:{N}`, KEYS[2] this run's sessions hash
-- ARGV: 1 run id
-- Drops the heartbeat if it is this run's (a newer run of the node id keeps its
-- own). Returns how many sessions are still recorded: when none, the hash is gone
-- and the run may leave the node set; otherwise it stays registered, without a
-- heartbeat, so the next sweep of any node evicts the leftovers.
if redis.call('HGET', KEYS[1], 'run') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
local left = redis.call('HLEN', KEYS[2])
if left == 0 then
  redis.call('DEL', KEYS[2])
end
return left
