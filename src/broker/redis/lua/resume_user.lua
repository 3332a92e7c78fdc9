#!lua
-- A resume's step in the user's slot: the user's hash and claim move from the
-- resumed session to the new one, unless a newer join of the user claimed it
-- meanwhile. A missing hash (expired, or Redis lost it) is written anew.
-- KEYS[1] user hash, KEYS[2] the user's claim hash
-- ARGV: 1 resumed session_id, 2 new session_id, 3 room_id, 4 joined_at, 5 role,
--       6 node_id, 7 ttl seconds
-- Returns 1 when moved, 0 when another session owns the user.
local current = redis.call('HGET', KEYS[1], 'session_id')
if current and current ~= ARGV[1] then
  return 0
end
local owner = redis.call('HGET', KEYS[2], 'session')
if owner and owner ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'room_id', ARGV[3], 'joined_at', ARGV[4], 'role', ARGV[5],
  'node_id', ARGV[6], 'session_id', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[7])
if owner then
  redis.call('HSET', KEYS[2], 'session', ARGV[2])
else
  redis.call('HSET', KEYS[2], 'ticket', '0', 'session', ARGV[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[7])
return 1
