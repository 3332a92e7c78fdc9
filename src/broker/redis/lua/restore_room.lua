#!lua
-- Writes a live local session's membership back after Redis lost its state,
-- unless the room holds another session of the user. No announcement.
-- The member's counter comes back from what the node delivered last, so its
-- numbering goes on without a gap or a repeat.
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room seq hash
-- ARGV: 1 user_id, 2 member record, 3 session_id, 4 ttl seconds, 5 last seq delivered
-- Returns 1 when restored (or already in place), 0 when another session is there.
local record = redis.call('HGET', KEYS[2], ARGV[1])
if record and string.match(record, '^(%S+)') ~= ARGV[3] then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local seq = tonumber(redis.call('HGET', KEYS[3], ARGV[1])) or 0
if seq < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
end
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
