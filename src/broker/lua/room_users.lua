-- Lists a room's live members with their USER fields and session (read only).
-- KEYS[1] room set; ARGV: 1 key prefix, 2 room_id
-- Returns { member, joined_at, role, session_id, ... }; members whose hash is gone
-- or elsewhere are skipped.
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('HMGET', ARGV[1] .. 'user:{' .. m .. '}', 'room_id', 'joined_at', 'role', 'session_id')
  if info[1] == ARGV[2] and info[4] then
    out[#out + 1] = m
    out[#out + 1] = info[2] or ''
    out[#out + 1] = info[3] or 'peer'
    out[#out + 1] = info[4]
  end
end
return out
