-- Closes a room: every member's session is told to close as kicked (envelope.rs
-- `K`), its keys go, and so do the room's set, metadata and index entry.
-- KEYS[1] room set, KEYS[2] room metadata hash, KEYS[3] room index
-- ARGV: 1 room_id, 2 key prefix
-- Returns the number of members kicked, or -1 when the room does not exist.
local room, prefix = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], room)
  return -1
end
local kicked = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local user_key = prefix .. 'user:{' .. m .. '}'
  local info = redis.call('HMGET', user_key, 'room_id', 'session_id', 'node_id')
  if info[1] == room and info[2] then
    redis.call('DEL', user_key)
    if info[3] then
      redis.call('HDEL', prefix .. 'node:{' .. info[3] .. '}:sessions', m)
    end
    redis.call('PUBLISH', prefix .. 'user:{' .. m .. '}:ch', 'K ' .. info[2] .. ' kicked\n')
    kicked = kicked + 1
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], room)
return kicked
