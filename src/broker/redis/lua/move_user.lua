#!lua
-- The user's hash and claim move from one session to another in the user's slot,
-- unless a newer join of the user claimed it meanwhile; a missing hash (expired,
-- or Redis lost it) is written anew. A resume's user step moves them from the
-- resumed session to the new one; writing a live session back after Redis lost
-- its state is the same step with the session moving onto itself.
-- KEYS[1] user hash, KEYS[2] the user's claim hash
-- ARGV: 1 the session it moves from, 2 the session it moves to, 3 room_id, 4 joined_at, 5 role,
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
