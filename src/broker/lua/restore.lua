-- Re-registers a live local session after Redis lost its state (restart, failover),
-- without announcing anything: views are reconciled separately.
-- KEYS[1] room set, KEYS[2] user hash, KEYS[3] the sessions hash of this node's run
-- ARGV: 1 user_id, 2 room_id, 3 session_id, 4 node_id, 5 joined_at, 6 role, 7 ttl seconds
-- Returns 1 when restored (or already in place), 0 when another session owns the user.
local current = redis.call('HGET', KEYS[2], 'session_id')
if current and current ~= ARGV[3] then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'room_id', ARGV[2], 'joined_at', ARGV[5], 'role', ARGV[6],
  'node_id', ARGV[4], 'session_id', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return 1
