-- Removes a session, only if the user hash still belongs to it, and tells the
-- remaining members of its room. Used for ordinary leaves and for evicting the
-- sessions of a dead node. An emptied room set disappears by itself.
-- KEYS[1] user hash
-- ARGV: 1 user_id, 2 session_id, 3 key prefix, 4 reason (left, timeout, kicked, shutdown)
-- Returns 1 when removed, 0 when the hash belongs to another session (or is gone).
local user, sid, prefix = ARGV[1], ARGV[2], ARGV[3]
-- The node's run hash entry is dropped by the leaving node itself (forget_session.lua).
local info = redis.call('HMGET', KEYS[1], 'session_id', 'room_id')
if info[1] ~= sid then
  return 0
end
redis.call('DEL', KEYS[1])
if not info[2] then
  return 1
end
local room_key = prefix .. 'room:{' .. info[2] .. '}'
redis.call('SREM', room_key, user)
local left = 'L ' .. user .. ' ' .. sid .. '\n{"type":"user_left","payload":{"user_id":"' ..
  user .. '","room_id":"' .. info[2] .. '","reason":"' .. ARGV[4] .. '"}}'
for _, m in ipairs(redis.call('SMEMBERS', room_key)) do
  redis.call('PUBLISH', prefix .. 'user:{' .. m .. '}:ch', left)
end
-- An emptied room leaves the index unless it was created (its metadata expires later).
if redis.call('EXISTS', room_key) == 0 and redis.call('EXISTS', prefix .. 'room:{' .. info[2] .. '}:meta') == 0 then
  redis.call('ZREM', prefix .. 'cluster:{rooms}', info[2])
end
return 1
