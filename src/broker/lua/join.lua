-- Registers a session and announces it, atomically.
-- KEYS[1] room set, KEYS[2] user hash, KEYS[3] the sessions hash of this node's run,
-- KEYS[4] room index (sorted set), KEYS[5] room metadata hash
-- ARGV: 1 user_id, 2 room_id, 3 session_id, 4 node_id, 5 joined_at, 6 role,
--       7 ttl seconds, 8 key prefix, 9 `J` envelope (user_joined) for the members,
--       10 max_users (0: unlimited)
-- Returns { replaced session id or "", member, joined_at, role, session_id, ... },
-- or { "!full" } (nothing written) when the room is at max_users.
local user, room, prefix = ARGV[1], ARGV[2], ARGV[8]
local max_users = tonumber(ARGV[10])
if max_users > 0 then
  -- A user replacing its own session takes no extra place.
  local others = redis.call('SCARD', KEYS[1]) - redis.call('SISMEMBER', KEYS[1], user)
  if others >= max_users then
    return { '!full' }
  end
end
-- The replaced session's entry in its node's run hash stays: that node drops it when
-- the session leaves, and evicting it is session-guarded, so it can remove nothing.
local old = redis.call('HMGET', KEYS[2], 'room_id', 'session_id')
local old_room, old_sid = old[1], old[2]

-- One session per user cluster-wide: the old one is told to close (envelope.rs `K`).
if old_sid then
  redis.call('PUBLISH', prefix .. 'user:{' .. user .. '}:ch', 'K ' .. old_sid .. ' replaced\n')
end
-- Moving rooms: the old room hears `replaced`. Same room: members only see a new user_joined.
if old_sid and old_room and old_room ~= room then
  local old_key = prefix .. 'room:{' .. old_room .. '}'
  if redis.call('SREM', old_key, user) == 1 then
    local left = 'L ' .. user .. ' ' .. old_sid .. '\n{"type":"user_left","payload":{"user_id":"' ..
      user .. '","room_id":"' .. old_room .. '","reason":"replaced"}}'
    for _, m in ipairs(redis.call('SMEMBERS', old_key)) do
      redis.call('PUBLISH', prefix .. 'user:{' .. m .. '}:ch', left)
    end
  end
end

redis.call('SADD', KEYS[1], user)
redis.call('HSET', KEYS[2], 'room_id', room, 'joined_at', ARGV[5], 'role', ARGV[6],
  'node_id', ARGV[4], 'session_id', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[3], user, ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], 0, room)
redis.call('EXPIRE', KEYS[5], ARGV[7])

local out = { old_sid or '' }
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= user then
    local info = redis.call('HMGET', prefix .. 'user:{' .. m .. '}', 'room_id', 'joined_at', 'role', 'session_id')
    if info[1] == room and info[4] then
      out[#out + 1] = m
      out[#out + 1] = info[2] or ''
      out[#out + 1] = info[3] or 'peer'
      out[#out + 1] = info[4]
      redis.call('PUBLISH', prefix .. 'user:{' .. m .. '}:ch', ARGV[9])
    else
      -- A member whose hash expired or moved elsewhere is a ghost: drop it.
      redis.call('SREM', KEYS[1], m)
    end
  end
end
return out
