#!lua
-- Writes a live local session's user hash back after Redis lost its state, unless
-- another session owns the user now. No announcement: views are reconciled apart.
-- KEYS[1] user hash, KEYS[2] the user's claim hash
-- ARGV: 1 session_id, 2 room_id, 3 joined_at, 4 role, 5 node_id, 6 ttl seconds
-- Returns 1 when restored (or already in place), 0 when another session owns the user.
local current = redis.call('HGET', KEYS[1], 'session_id')
if current and current ~= ARGV[1] then
  return 0
end
local owner = redis.call('HGET', KEYS[2], 'session')
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'room_id', ARGV[2], 'joined_at', ARGV[3], 'role', ARGV[4],
  'node_id', ARGV[5], 'session_id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
if not owner then
  redis.call('HSET', KEYS[2], 'ticket', '0', 'session', ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 1
