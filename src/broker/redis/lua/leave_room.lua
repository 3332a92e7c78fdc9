#!lua
-- A leave's step in the room's slot, guarded by the session: removes the member
-- only if its record here is still this session's, and tells the others.
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room metadata hash
-- ARGV: 1 user_id, 2 session_id, 3 the room's channel prefix, 4 `L` envelope
-- Returns { removed 0/1, members left, metadata exists 0/1 }.
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record or string.match(record, '^(%S+)') ~= ARGV[2] then
  return { 0, redis.call('SCARD', KEYS[1]), redis.call('EXISTS', KEYS[3]) }
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('PUBLISH', ARGV[3] .. m, ARGV[4])
end
local left = redis.call('SCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[2])
end
return { 1, left, redis.call('EXISTS', KEYS[3]) }
