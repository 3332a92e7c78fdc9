#!lua
-- Writes a live local session's membership back after Redis lost its state,
-- unless the room holds another session of the user. No announcement.
-- KEYS[1] room set, KEYS[2] room members hash
-- ARGV: 1 user_id, 2 member record, 3 session_id, 4 ttl seconds
-- Returns 1 when restored (or already in place), 0 when another session is there.
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record and string.match(record, '^(%S+)') ~= ARGV[3] then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
